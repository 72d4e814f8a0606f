"""projects, agent-types, agents, metrics."""

from __future__ import annotations

import typer

from agentry_client.cli.app import app, config
from agentry_client.cli.output import note

PROJECT = typer.Option(..., "--project", "-p", help="Project id or slug")

projects = typer.Typer(help="Projects (tenants)", no_args_is_help=True)
agent_types = typer.Typer(help="Agent types (templates)", no_args_is_help=True)
agents = typer.Typer(help="Agent instances", no_args_is_help=True)
app.add_typer(projects, name="projects")
app.add_typer(agent_types, name="agent-types")
app.add_typer(agents, name="agents")

AGENT_COLUMNS = ["id", "name", "status", "agent_type_slug", "pending_runs", "tasks_completed"]


@projects.command("list")
def projects_list(ctx: typer.Context) -> None:
    """Your projects (superusers: all), every page."""
    cfg = config(ctx)
    with cfg.client() as client:
        rows = [p.raw for p in client.projects.list()]
    cfg.emit(rows, ["id", "slug", "name", "role", "created_at"])


@projects.command("get")
def projects_get(ctx: typer.Context, project: str = typer.Argument(..., metavar="P")) -> None:
    cfg = config(ctx)
    with cfg.client() as client:
        cfg.emit(client.projects.get(project).raw)


@projects.command("create")
def projects_create(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    slug: str = typer.Option(None, "--slug", help="Default: derived from the name"),
    description: str = typer.Option(None, "--description"),
    budget_usd: float = typer.Option(None, "--budget-usd", help="Monthly cost limit, USD"),
    budget_tokens: int = typer.Option(None, "--budget-tokens", help="Monthly token limit"),
) -> None:
    """Create a project; you become its owner."""
    cfg = config(ctx)
    budget = {}
    if budget_usd is not None:
        budget["monthly_cost_limit_usd"] = budget_usd
    if budget_tokens is not None:
        budget["monthly_token_limit"] = budget_tokens
    with cfg.client() as client:
        project = client.projects.create(
            name, slug=slug, description=description, budget=budget or None
        )
    cfg.emit(project.raw)


@projects.command("delete")
def projects_delete(ctx: typer.Context, project: str = typer.Argument(..., metavar="P")) -> None:
    """Delete a project (owner): terminates its agents and cancels its runs."""
    cfg = config(ctx)
    with cfg.client() as client:
        client.projects.delete(project)
    note(f"Deleted project {project}")


@agent_types.command("list")
def agent_types_list(ctx: typer.Context) -> None:
    cfg = config(ctx)
    with cfg.client() as client:
        rows = [t.raw for t in client.agent_types.list()]
    cfg.emit(rows, ["id", "slug", "name", "provider", "model"])


@agent_types.command("get")
def agent_types_get(ctx: typer.Context, agent_type: str = typer.Argument(..., metavar="T")) -> None:
    cfg = config(ctx)
    with cfg.client() as client:
        cfg.emit(client.agent_types.get(agent_type).raw)


@agents.command("list")
def agents_list(
    ctx: typer.Context,
    project: str = PROJECT,
    status: str = typer.Option(None, "--status", help="idle|working|waiting|paused|terminated"),
) -> None:
    cfg = config(ctx)
    with cfg.client() as client:
        rows = [a.raw for a in client.agents.list(project, status=status)]
    cfg.emit(rows, AGENT_COLUMNS)


@agents.command("get")
def agents_get(
    ctx: typer.Context, project: str = PROJECT, agent: str = typer.Argument(..., metavar="A")
) -> None:
    cfg = config(ctx)
    with cfg.client() as client:
        cfg.emit(client.agents.get(project, agent).raw)


@agents.command("spawn")
def agents_spawn(
    ctx: typer.Context,
    project: str = PROJECT,
    agent_type: str = typer.Option(..., "--type", "-t", help="Agent type id or slug"),
    name: str = typer.Option(..., "--name", "-n"),
    idempotency_key: str = typer.Option(
        None, "--idempotency-key", help="Default: a generated one (reused on retries)"
    ),
) -> None:
    """Spawn an agent (status idle). A retry with the same key returns the same agent."""
    cfg = config(ctx)
    with cfg.client() as client:
        agent = client.agents.spawn(
            project, agent_type=agent_type, name=name, idempotency_key=idempotency_key
        )
    cfg.emit(agent.raw)


def _transition(ctx: typer.Context, project: str, agent: str, action: str) -> None:
    cfg = config(ctx)
    with cfg.client() as client:
        cfg.emit(getattr(client.agents, action)(project, agent).raw)


@agents.command("pause")
def agents_pause(
    ctx: typer.Context, project: str = PROJECT, agent: str = typer.Argument(..., metavar="A")
) -> None:
    _transition(ctx, project, agent, "pause")


@agents.command("resume")
def agents_resume(
    ctx: typer.Context, project: str = PROJECT, agent: str = typer.Argument(..., metavar="A")
) -> None:
    _transition(ctx, project, agent, "resume")


@agents.command("terminate")
def agents_terminate(
    ctx: typer.Context, project: str = PROJECT, agent: str = typer.Argument(..., metavar="A")
) -> None:
    """Terminate an agent; its queued and running runs are cancelled."""
    cfg = config(ctx)
    with cfg.client() as client:
        cfg.emit(client.agents.terminate(project, agent))


@app.command()
def metrics(
    ctx: typer.Context,
    project: str = PROJECT,
    from_: str = typer.Option(None, "--from", help="ISO 8601 start"),
    to: str = typer.Option(None, "--to", help="ISO 8601 end"),
    granularity: str = typer.Option(None, "--granularity", help="hour|day"),
) -> None:
    """A project's usage: totals, by agent, by model, series, budget."""
    cfg = config(ctx)
    with cfg.client() as client:
        result = client.metrics.get(project, from_=from_, to=to, granularity=granularity)
    cfg.emit(result.raw)
