"""What agentryctl prints: the API's JSON (json mode) or a table, and one-line errors."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from agentry_client import errors

# (exit code, meaning) — the contract's table, in one place.
EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_NOT_FOUND = 0, 1, 2, 3, 4
EXIT_BUDGET, EXIT_WAIT_TIMEOUT, EXIT_CONFLICT, EXIT_UNREACHABLE, EXIT_ACTION = 5, 6, 7, 8, 9
_BY_STATUS = {400: 2, 413: 2, 422: 2, 401: 3, 403: 3, 404: 4, 402: 5, 409: 7}


def exit_code(error: errors.AgentryError) -> int:
    if error.status in _BY_STATUS:
        return _BY_STATUS[error.status]
    if isinstance(error, errors.NotFound):
        return EXIT_NOT_FOUND  # a name that matched nothing: our own 404
    if isinstance(error, errors.BadRequest):
        return EXIT_USAGE
    return EXIT_UNREACHABLE  # connection failures, 5xx and 429 after the retries


def run_exit_code(status: str | None) -> int:
    """The `--wait` exit code for a run's status."""
    if status == "succeeded":
        return EXIT_OK
    if status in ("failed", "cancelled", "timed_out"):
        return EXIT_RUN_FAILED
    if status == "requires_action":
        return EXIT_ACTION
    return EXIT_WAIT_TIMEOUT


def error_line(error: errors.AgentryError) -> str:
    line = f"error: {error.code}: {error.message}"
    if error.field:
        line += f" (field: {error.field})"
    if error.request_id:
        line += f" (request_id: {error.request_id})"
    return line.replace("\n", " ")


def note(message: str) -> None:
    """Progress and confirmations: stderr, so stdout stays the API's data."""
    typer.echo(message, err=True)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 48 else text[:47] + "…"


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def emit(mode: str, data: Any, columns: list[str] | None = None) -> None:
    """Print an API answer: as JSON, exactly; or for people, a table (lists) or fields."""
    if data is None:
        return  # an answer without a body prints nothing
    if mode == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif isinstance(data, list):
        sys.stdout.write(table(data, columns or _columns(data)) + "\n")
    elif isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for key, value in data.items():
            sys.stdout.write(f"{key.ljust(width)}  {_cell(value)}\n")
    else:
        sys.stdout.write(f"{data}\n")
    sys.stdout.flush()


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(rows[0])[:6] if rows else ["id"]
