"""Cross-domain cascades, in the request's transaction. An agent's status change means
something for its runs (resume starts the oldest queued one; terminate cancels its queued and
running ones), and deleting a project ends its agents and their runs. The domains below know
nothing of the ones above them (agents know no runs, projects no agents): this module calls
each in turn, and the routers call it.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from backend.agents import service as agents_service
from backend.agents import state as agent_state
from backend.agents.models import AgentStatus
from backend.agents.schemas import AgentOut, AgentUpdate
from backend.projects import service as projects_service
from backend.projects.dependencies import ProjectContext
from backend.runs import service as runs_service


async def update_agent(
    session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID, data: AgentUpdate
) -> AgentOut:
    await agents_service.update(session, ctx, agent_id, data)
    await _runs_follow(session, agent_id, data.status)
    return await agents_service.get(session, ctx, agent_id)


async def pause_agent(session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID) -> AgentOut:
    await agents_service.pause(session, ctx, agent_id)  # its runs wait
    return await agents_service.get(session, ctx, agent_id)


async def resume_agent(session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID) -> AgentOut:
    await agents_service.resume(session, ctx, agent_id)
    await _runs_follow(session, agent_id, AgentStatus.idle)
    return await agents_service.get(session, ctx, agent_id)


async def terminate_agent(
    session: AsyncSession, ctx: ProjectContext, agent_id: uuid.UUID
) -> agent_state.Moved:
    moved = await agents_service.terminate(session, ctx, agent_id)
    await _runs_follow(session, agent_id, AgentStatus.terminated)
    return moved


async def delete_project(session: AsyncSession, ctx: ProjectContext) -> None:
    reason = "project deleted"
    await projects_service.delete(session, ctx)
    await agents_service.terminate_all(session, ctx, reason=reason)
    await runs_service.cancel_live_runs(session, reason, project_id=ctx.project.id)


async def _runs_follow(session: AsyncSession, agent_id: uuid.UUID, to: AgentStatus | None) -> None:
    """Back to idle starts the agent's oldest queued run (after commit); terminated cancels
    its queued and running runs in this transaction."""
    if to == AgentStatus.idle:
        await runs_service.on_agent_resumed(session, agent_id)
    elif to == AgentStatus.terminated:
        await runs_service.cancel_live_runs(session, "agent terminated", agent_id=agent_id)
