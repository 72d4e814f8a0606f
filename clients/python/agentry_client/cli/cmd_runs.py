"""runs submit|get|cancel|steps|list|follow|approve."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from agentry_client import models
from agentry_client._core import ToolError
from agentry_client.cli.app import app, config
from agentry_client.cli.output import run_exit_code

PROJECT = typer.Option(..., "--project", "-p", help="Project id or slug")
RUN = typer.Argument(..., metavar="RUN", help="Run id")
RUN_COLUMNS = ["id", "agent_id", "status", "created_at", "finished_at", "output"]

runs = typer.Typer(help="Runs: work executed by workers", no_args_is_help=True)
app.add_typer(runs, name="runs")


def _input(text: str | None, file: str | None) -> str:
    if (text is None) == (file is None):
        raise typer.BadParameter("give exactly one of --input and --input-file")
    if text is not None:
        return text
    if file == "-":
        return sys.stdin.read()
    try:
        return Path(file).read_text()  # type: ignore[arg-type]
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc.strerror}") from exc


def _metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--metadata") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--metadata")
    return value


def shell_tool(command: str) -> Callable[[Any], str]:
    """A client tool run through the shell: arguments as JSON on stdin, stdout (one trailing
    newline stripped) as the output, is_error when the command exits non-zero."""

    def run(arguments: Any) -> str:
        done = subprocess.run(
            command,
            shell=True,
            input=json.dumps(arguments),
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        out = done.stdout[:-1] if done.stdout.endswith("\n") else done.stdout
        if done.returncode != 0:
            raise ToolError(out)
        return out

    return run


def _tools(specs: list[str] | None) -> dict[str, Callable[[Any], str]]:
    tools = {}
    for spec in specs or []:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command:
            raise typer.BadParameter(f"{spec!r} is not NAME=COMMAND", param_hint="--tool")
        tools[name] = shell_tool(command)
    return tools


def _delta_printer(follow: bool) -> Callable[[models.Event], None] | None:
    if not follow:
        return None

    def show(event: models.Event) -> None:
        if event.event == "delta" and isinstance(event.data, dict):
            sys.stderr.write(str(event.data.get("text", "")))
            sys.stderr.flush()
        elif event.event == "end":
            sys.stderr.write("\n")

    return show


@runs.command("submit")
def submit(
    ctx: typer.Context,
    project: str = PROJECT,
    agent: str = typer.Option(..., "--agent", "-a", help="Agent id or name"),
    text: str = typer.Option(None, "--input", "-i", help="The run's input"),
    input_file: str = typer.Option(
        None, "--input-file", help="Read the input from a file, - for stdin"
    ),
    wait: float = typer.Option(
        None,
        "--wait",
        metavar="[SECONDS]",
        help="Wait for a final status (default 300 s), following the event stream. "
        "Exit 0 succeeded, 1 failed/cancelled/timed_out, 6 time passed, 9 an action "
        "no --tool covers; 1, 6 and 9 print the run",
    ),
    follow: bool = typer.Option(
        False, "--follow", help="Print the output's deltas to stderr as they arrive (waits)"
    ),
    metadata: str = typer.Option(None, "--metadata", help="A JSON object"),
    idempotency_key: str = typer.Option(
        None, "--idempotency-key", help="Default: a generated one (reused on retries)"
    ),
    tool: list[str] = typer.Option(
        None,
        "--tool",
        metavar="NAME=COMMAND",
        help="Execute client tool NAME with COMMAND (sh): arguments as JSON on stdin, stdout "
        "is the result, a non-zero exit an error result (so is an output the server refuses, "
        "e.g. too long: the model is told why). Repeatable; implies waiting",
    ),
) -> None:
    """Submit a run; with --wait/--follow/--tool, follow it until it ends."""
    cfg = config(ctx)
    body, meta, tools = _input(text, input_file), _metadata(metadata), _tools(tool)
    with cfg.client() as client:
        run = client.runs.submit(
            project, agent, body, metadata=meta, idempotency_key=idempotency_key
        )
        if wait is None and not follow and not tools:
            cfg.emit(run.raw)
            return
        run = client.runs.wait(
            run.project_id or project,
            run.id,
            timeout=300.0 if wait is None else wait,
            tools=tools,
            on_event=_delta_printer(follow),
        )
    cfg.emit(run.raw)
    raise typer.Exit(run_exit_code(run.status))


@runs.command("get")
def get(ctx: typer.Context, project: str = PROJECT, run_id: str = RUN) -> None:
    cfg = config(ctx)
    with cfg.client() as client:
        cfg.emit(client.runs.get(project, run_id).raw)


@runs.command("cancel")
def cancel(ctx: typer.Context, project: str = PROJECT, run_id: str = RUN) -> None:
    """Cancel a run (a finished one is returned unchanged)."""
    cfg = config(ctx)
    with cfg.client() as client:
        cfg.emit(client.runs.cancel(project, run_id).raw)


@runs.command("steps")
def steps(ctx: typer.Context, project: str = PROJECT, run_id: str = RUN) -> None:
    """A run's steps, oldest first."""
    cfg = config(ctx)
    with cfg.client() as client:
        rows = [s.raw for s in client.runs.steps(project, run_id)]
    cfg.emit(rows, ["index", "kind", "status", "name", "model", "text", "output"])


@runs.command("list")
def list_runs(
    ctx: typer.Context,
    project: str = PROJECT,
    agent: str = typer.Option(None, "--agent", "-a", help="Agent id or name"),
    status: str = typer.Option(None, "--status"),
) -> None:
    cfg = config(ctx)
    with cfg.client() as client:
        rows = [r.raw for r in client.runs.list(project, agent=agent, status=status)]
    cfg.emit(rows, RUN_COLUMNS)


@runs.command("follow")
def follow_run(ctx: typer.Context, project: str = PROJECT, run_id: str = RUN) -> None:
    """Print each event as one JSON line {"event", "id", "data"} until the run ends; exit
    as --wait does (0 succeeded, 1 failed/cancelled/timed_out)."""
    cfg = config(ctx)
    status = None
    with cfg.client() as client:
        for event in client.runs.stream(project, run_id):
            sys.stdout.write(json.dumps(event.as_json()) + "\n")
            sys.stdout.flush()
            if event.event == "end" and isinstance(event.data, dict):
                status = event.data.get("status")
    raise typer.Exit(run_exit_code(status))


@runs.command("approve")
def approve(
    ctx: typer.Context,
    project: str = PROJECT,
    run_id: str = RUN,
    calls: list[str] = typer.Option(..., "--call", help="Tool call id (repeatable)"),
    deny: bool = typer.Option(False, "--deny", help="Deny instead of approve"),
    message: str = typer.Option(None, "--message", "-m", help="Told to the model on --deny"),
) -> None:
    """Approve (or --deny) tool calls a run waits on."""
    cfg = config(ctx)
    decisions = [
        {"tool_call_id": call, "approve": not deny, **({"message": message} if message else {})}
        for call in calls
    ]
    with cfg.client() as client:
        cfg.emit(client.runs.approve(project, run_id, decisions).raw)
