"""`agentryctl`: exit codes per CLIENT.md, errors as one line on stderr."""

from __future__ import annotations

import sys

import typer

from agentry_client import errors
from agentry_client.cli import cmd_auth, cmd_resources, cmd_runs  # noqa: F401 - registers
from agentry_client.cli.app import app
from agentry_client.cli.output import error_line, exit_code

GLOBAL_WITH_VALUE = ("--url", "--api-key", "--token", "--output", "-o")
DEFAULT_WAIT = "300"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def normalize(args: list[str]) -> list[str]:
    """Global options move to the front (they may appear anywhere), and a bare `--wait`
    gets its default seconds (click options cannot take an optional value)."""
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg in GLOBAL_WITH_VALUE and i + 1 < len(args):
            hoisted += [arg, args[i + 1]]
            i += 2
            continue
        if any(arg.startswith(flag + "=") for flag in GLOBAL_WITH_VALUE if flag.startswith("--")):
            hoisted.append(arg)
        elif arg == "--wait" and not (i + 1 < len(args) and _is_number(args[i + 1])):
            rest += [arg, DEFAULT_WAIT]
        else:
            rest.append(arg)
        i += 1
    return hoisted + rest


def main(argv: list[str] | None = None) -> None:
    args = normalize(list(sys.argv[1:] if argv is None else argv))
    try:
        # Standalone: usage errors exit 2, --help 0, typer.Exit(code) its code.
        app(args=args, prog_name="agentryctl")
    except errors.AgentryError as exc:
        typer.echo(error_line(exc), err=True)
        sys.exit(exit_code(exc))
