"""The root command: global options (anywhere on the line) and the client they configure."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import typer

from agentry_client import models
from agentry_client._core import env_url
from agentry_client.cli import credentials, output
from agentry_client.client import Client

HELP = """Drive Agentry from a terminal or a CI job.

Global options may appear anywhere on the line. Projects are named by id or slug, agent types by id or slug, agents by id or by name within their project.

Credentials: --api-key (AGENTRY_API_KEY), else --token (AGENTRY_TOKEN), else the tokens saved by `agentryctl login` (refreshed transparently). Requests that may be repeated are retried for up to AGENTRY_RETRY_SECONDS (60).

Exit codes: 0 success (with --wait: the run succeeded); 1 the run failed, was cancelled or timed out; 2 usage error or 400/422; 3 401/403; 4 404 (or a name that matches nothing); 5 402 budget spent; 6 --wait time passed; 7 409; 8 server unreachable or 5xx/429 after retries; 9 the run requires an action this invocation cannot give."""

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False)


class Output(StrEnum):
    json = "json"
    table = "table"


@dataclass
class Config:
    url: str
    api_key: str | None
    token: str | None
    output: str

    def client(self) -> Client:
        """A client with the configured credentials; saved tokens are refreshed and re-saved."""
        if self.api_key or self.token:
            return Client(self.url, api_key=self.api_key or "", token=self.token or "")
        saved = credentials.load(self.url) or {}

        def save(tokens: models.Tokens) -> None:
            pair = {"access_token": tokens.access_token, "refresh_token": tokens.refresh_token}
            credentials.save(self.url, pair)

        return Client(
            self.url,
            api_key="",
            token=saved.get("access_token") or "",
            refresh_token=saved.get("refresh_token"),
            on_tokens=save,
        )

    def emit(self, data: Any, columns: list[str] | None = None) -> None:
        output.emit(self.output, data, columns)


@app.callback()
def root(
    ctx: typer.Context,
    url: str = typer.Option(
        None, "--url", help="Server root (env AGENTRY_URL; default http://127.0.0.1:8000)"
    ),
    api_key: str = typer.Option(None, "--api-key", help="API key (env AGENTRY_API_KEY)"),
    token: str = typer.Option(None, "--token", help="Access token (env AGENTRY_TOKEN)"),
    output_mode: Output = typer.Option(
        None,
        "--output",
        "-o",
        help="json: exactly the API's JSON; table: for people (env AGENTRY_OUTPUT; "
        "default table on a terminal, json otherwise)",
    ),
) -> None:
    mode = output_mode.value if output_mode else os.environ.get("AGENTRY_OUTPUT")
    if mode not in ("json", "table"):
        mode = "table" if sys.stdout.isatty() else "json"
    ctx.obj = Config(
        url=env_url(url),
        api_key=api_key if api_key is not None else os.environ.get("AGENTRY_API_KEY"),
        token=token if token is not None else os.environ.get("AGENTRY_TOKEN"),
        output=mode,
    )


def config(ctx: typer.Context) -> Config:
    return ctx.find_root().obj
