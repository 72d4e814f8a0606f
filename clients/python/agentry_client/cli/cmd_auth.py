"""login, logout, whoami, api-keys."""

from __future__ import annotations

import sys

import typer

from agentry_client import errors
from agentry_client.cli import credentials
from agentry_client.cli.app import app, config
from agentry_client.cli.output import note
from agentry_client.client import Client


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.read()
        return password[:-1] if password.endswith("\n") else password
    if not sys.stdin.isatty():
        raise typer.BadParameter(
            "standard input is not a terminal: pass the password with --password-stdin",
            param_hint="password",
        )
    return typer.prompt("Password", hide_input=True, err=True)


@app.command()
def login(
    ctx: typer.Context,
    email: str = typer.Option(None, "--email", "-e", help="Prompted for when absent"),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input"
    ),
) -> None:
    """Log in with email and password; saves the token pair (0600) for this server URL."""
    cfg = config(ctx)
    if not email:
        if not sys.stdin.isatty() or password_stdin:
            raise typer.BadParameter("--email is required here", param_hint="--email")
        email = typer.prompt("Email", err=True)
    password = _read_password(password_stdin)
    with Client(cfg.url, api_key="", token="") as client:
        tokens = client.auth.login(email, password)
    credentials.save(
        cfg.url,
        {
            "email": email,
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
        },
    )
    note(f"Logged in to {cfg.url} as {email} (credentials in {credentials.path()})")


@app.command()
def logout(ctx: typer.Context) -> None:
    """Revoke the saved refresh token and forget this server's saved credentials."""
    cfg = config(ctx)
    entry = credentials.forget(cfg.url)
    if not entry:
        note(f"Not logged in to {cfg.url}")
        return
    if entry.get("refresh_token"):
        with Client(cfg.url, api_key="", token=entry.get("access_token") or "") as client:
            try:
                client.auth.logout(entry["refresh_token"])
            except errors.AgentryError as exc:  # already revoked or expired: forgotten anyway
                note(f"(the server said {exc.code}: {exc.message})")
    note(f"Logged out of {cfg.url}")


@app.command()
def whoami(ctx: typer.Context) -> None:
    """The user the credentials belong to."""
    cfg = config(ctx)
    with cfg.client() as client:
        cfg.emit(client.auth.me().raw)


keys = typer.Typer(help="API keys for CI scripts and tools (needs a login, not a key)")
app.add_typer(keys, name="api-keys")


@keys.command("list")
def keys_list(ctx: typer.Context) -> None:
    """Your API keys (without the secret)."""
    cfg = config(ctx)
    with cfg.client() as client:
        rows = [k.raw for k in client.api_keys.list()]
    cfg.emit(rows, ["id", "name", "prefix", "project_id", "expires_at", "last_used_at"])


@keys.command("create")
def keys_create(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    project: str = typer.Option(None, "--project", "-p", help="Limit the key to a project"),
    scopes: list[str] = typer.Option(None, "--scope", help="Repeatable; default: all"),
    expires_in_days: int = typer.Option(None, "--expires-in-days"),
) -> None:
    """Create a key; the answer's `key` is shown only once."""
    cfg = config(ctx)
    with cfg.client() as client:
        key = client.api_keys.create(
            name, project=project, scopes=scopes or None, expires_in_days=expires_in_days
        )
    cfg.emit(key.raw)


@keys.command("delete")
def keys_delete(ctx: typer.Context, key_id: str = typer.Argument(...)) -> None:
    """Revoke a key at once."""
    cfg = config(ctx)
    with cfg.client() as client:
        client.api_keys.delete(key_id)
    note(f"Deleted API key {key_id}")
