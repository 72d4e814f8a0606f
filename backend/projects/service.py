from __future__ import annotations

import re
import unicodedata
import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.audit import service as audit
from backend.auth.dependencies import Principal
from backend.auth.models import User
from backend.core.db import paginate, utcnow
from backend.core.errors import Conflict, Forbidden, NotFound
from backend.core.schemas import PageParams
from backend.projects.dependencies import ProjectContext, ProjectRow
from backend.projects.models import Project, ProjectMember, Role
from backend.projects.schemas import (
    Budget,
    BudgetIn,
    MemberAdd,
    MemberOut,
    ProjectCreate,
    ProjectOut,
    ProjectUpdate,
)


def slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:100].strip("-") or "project"


def to_out(project: Project | ProjectRow, role: str | None) -> ProjectOut:
    budget = None
    if project.monthly_cost_limit_usd is not None or project.monthly_token_limit is not None:
        budget = Budget(
            monthly_cost_limit_usd=project.monthly_cost_limit_usd,
            monthly_token_limit=project.monthly_token_limit,
        )
    return ProjectOut(
        id=project.id,
        name=project.name,
        slug=project.slug,
        description=project.description,
        owner_id=project.owner_id,
        budget=budget,
        created_at=project.created_at,
        updated_at=project.updated_at,
        role=role,
    )


def _apply_budget(project: Project, budget: BudgetIn | None) -> None:
    project.monthly_cost_limit_usd = budget.monthly_cost_limit_usd if budget else None
    project.monthly_token_limit = budget.monthly_token_limit if budget else None


async def _flush_unique(session: AsyncSession, message: str, field: str) -> None:
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise Conflict(message, field=field) from None


async def create(session: AsyncSession, principal: Principal, data: ProjectCreate) -> Project:
    if principal.api_key is not None:
        raise Forbidden("API keys cannot create projects")
    project = Project(
        name=data.name,
        slug=data.slug or slugify(data.name),
        description=data.description,
        owner_id=principal.user.id,
    )
    _apply_budget(project, data.budget)
    session.add(project)
    await _flush_unique(session, f"A project with slug '{project.slug}' already exists", "slug")
    session.add(ProjectMember(project_id=project.id, user_id=principal.user.id, role=Role.owner))
    await session.flush()
    audit.record(
        session,
        principal,
        "project.create",
        project_id=project.id,
        target_type="project",
        target_id=project.id,
    )
    return project


async def list_for(
    session: AsyncSession, principal: Principal, paging: PageParams
) -> tuple[list[ProjectOut], int]:
    user, key = principal.user, principal.api_key
    if not principal.has_scope("projects:read"):
        raise Forbidden("This API key lacks the projects:read scope")
    query = (
        select(Project, ProjectMember.role)
        .outerjoin(
            ProjectMember,
            (ProjectMember.project_id == Project.id) & (ProjectMember.user_id == user.id),
        )
        .where(Project.deleted_at.is_(None))
    )
    if not user.is_superuser:
        query = query.where(ProjectMember.role.is_not(None))
    if key is not None and key.project_id is not None:
        query = query.where(Project.id == key.project_id)
    query = query.order_by(Project.created_at.desc(), Project.id)
    rows, total = await paginate(session, query, paging, scalars=False)
    return [to_out(p, role) for p, role in rows], total


async def update(session: AsyncSession, ctx: ProjectContext, data: ProjectUpdate) -> Project:
    project = await session.get_one(Project, ctx.project.id, with_for_update=True)
    if data.name is not None:
        project.name = data.name
    if "description" in data.model_fields_set:
        project.description = data.description
    if "budget" in data.model_fields_set:
        _apply_budget(project, data.budget)
    project.updated_at = utcnow()
    audit.record(
        session,
        ctx.principal,
        "project.update",
        project_id=project.id,
        target_type="project",
        target_id=project.id,
        details={"fields": sorted(data.model_fields_set)},
    )
    return project


async def delete(session: AsyncSession, ctx: ProjectContext) -> None:
    """The project leaves every listing (its agents and runs end: backend/lifecycle.py)."""
    # Waits for spawns in flight (the spawn's key-share lock) and makes later ones wait for
    # this commit.
    project = await session.get_one(Project, ctx.project.id, with_for_update=True)
    project.deleted_at = utcnow()
    audit.record(
        session,
        ctx.principal,
        "project.delete",
        project_id=ctx.project.id,
        target_type="project",
        target_id=ctx.project.id,
    )


async def list_members(
    session: AsyncSession, ctx: ProjectContext, paging: PageParams
) -> tuple[list[MemberOut], int]:
    query = (
        select(ProjectMember, User.email)
        .join(User, User.id == ProjectMember.user_id)
        .where(ProjectMember.project_id == ctx.project.id)
        .order_by(ProjectMember.created_at.desc(), ProjectMember.user_id)
    )
    rows, total = await paginate(session, query, paging, scalars=False)
    return [_member_out(m, email) for m, email in rows], total


def _member_out(member: ProjectMember, email: str) -> MemberOut:
    return MemberOut(
        user_id=member.user_id, email=email, role=Role(member.role), created_at=member.created_at
    )


def _check_can_assign(ctx: ProjectContext, *roles: str) -> None:
    """Admins manage members and viewers; granting or touching an admin is the owner's."""
    if Role.owner in roles:
        raise Conflict("Ownership cannot be granted or changed through membership", field="role")
    is_owner = ctx.role == Role.owner or ctx.principal.user.is_superuser
    if Role.admin in roles and not is_owner:
        raise Forbidden("Only the project owner can grant or change the admin role")


async def add_member(session: AsyncSession, ctx: ProjectContext, data: MemberAdd) -> MemberOut:
    _check_can_assign(ctx, data.role)
    user = await session.scalar(select(User).where(User.email == data.email.lower()))
    if user is None:
        raise NotFound(f"No user with email {data.email}")
    member = ProjectMember(project_id=ctx.project.id, user_id=user.id, role=data.role)
    session.add(member)
    await _flush_unique(session, "The user is already a member of this project", "email")
    audit.record(
        session,
        ctx.principal,
        "member.add",
        project_id=ctx.project.id,
        target_type="user",
        target_id=user.id,
        details={"role": data.role.value},
    )
    return _member_out(member, user.email)


async def _get_member(
    session: AsyncSession, ctx: ProjectContext, user_id: uuid.UUID
) -> tuple[ProjectMember, str]:
    row = (
        await session.execute(
            select(ProjectMember, User.email)
            .join(User, User.id == ProjectMember.user_id)
            .where(ProjectMember.project_id == ctx.project.id, ProjectMember.user_id == user_id)
            .with_for_update(of=ProjectMember)
        )
    ).first()
    if row is None:
        raise NotFound(f"Member {user_id} not found")
    return row[0], row[1]


async def update_member(
    session: AsyncSession, ctx: ProjectContext, user_id: uuid.UUID, role: Role
) -> MemberOut:
    member, email = await _get_member(session, ctx, user_id)
    if member.role == Role.owner:
        raise Conflict("The owner's role cannot be changed", field="role")
    _check_can_assign(ctx, role, member.role)
    old = member.role
    member.role = role
    member.updated_at = utcnow()
    audit.record(
        session,
        ctx.principal,
        "member.update",
        project_id=ctx.project.id,
        target_type="user",
        target_id=user_id,
        details={"from": old, "to": role.value},
    )
    return _member_out(member, email)


async def remove_member(session: AsyncSession, ctx: ProjectContext, user_id: uuid.UUID) -> None:
    member, _ = await _get_member(session, ctx, user_id)
    if member.role == Role.owner:
        raise Conflict("The project owner cannot be removed")
    _check_can_assign(ctx, member.role)
    await session.delete(member)
    audit.record(
        session,
        ctx.principal,
        "member.remove",
        project_id=ctx.project.id,
        target_type="user",
        target_id=user_id,
    )
