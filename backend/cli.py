"""`agentry dev|api|worker|webhooks|migrate|create-superuser`."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import typer
import uvicorn

from backend.config import Settings

app = typer.Typer(
    help="Agentry: a self-hostable control plane for AI agents.", no_args_is_help=True
)
ROOT = Path(__file__).resolve().parent.parent
DEV_SUPERUSER = ("admin@example.com", "agentry-admin")


def migrate_to_head(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["url"] = url
    command.upgrade(config, "head")


async def bootstrap(settings: Settings, *, seed: bool) -> None:
    """First superuser (the API's startup creates it too), and, in dev, the demo agent types."""
    from backend.auth import service as auth_service
    from backend.core.db import create_engine, create_sessionmaker

    engine = create_engine(settings.DATABASE_URL, pool_size=1, max_overflow=0)  # type: ignore[arg-type]
    try:
        async with create_sessionmaker(engine)() as session:
            if await auth_service.ensure_first_superuser(settings, session):
                typer.echo(f"Created superuser {settings.FIRST_SUPERUSER_EMAIL}")
            if seed:
                from backend.agent_types.seed import seed_fake_types

                await seed_fake_types(session, demo_mcp_url=settings.DEMO_MCP_URL)
                await session.commit()
    finally:
        await engine.dispose()


def _dev_secret(data_dir: Path) -> str:
    """A per-DATA_DIR secret, so tokens survive restarts of `agentry dev`."""
    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _banner(settings: Settings, embedded: bool, dev_password: str | None) -> str:
    base = f"http://{settings.HOST}:{settings.PORT}"
    email = settings.FIRST_SUPERUSER_EMAIL
    password = dev_password or "$FIRST_SUPERUSER_PASSWORD"
    where = (
        f"embedded Postgres and Redis under {settings.DATA_DIR}"
        if embedded
        else "DATABASE_URL/REDIS_URL"
    )
    demo = f"  MCP demo:  {settings.DEMO_MCP_URL}  (tools: add, word_count)\n"
    return (
        f"\nAgentry is running at {base} (data: {where})\n"
        f"  API docs:  {base}/docs  (Authorize: {email} / {password})\n"
        f"  Log in:    curl -s {base}/api/v1/auth/login -H 'Content-Type: application/json' "
        f"""-d '{{"email": "{email}", "password": "{password}"}}'\n"""
        f"{demo if settings.DEMO_MCP_URL else ''}"
        "  Stop:      Ctrl-C\n"
    )


def uvicorn_config(settings: Settings, app: object) -> uvicorn.Config:
    """Proxy headers are honoured only from FORWARDED_ALLOW_IPS (by default from nobody:
    uvicorn's own default trusts localhost, so any local client could forge its IP)."""
    trusted = settings.forwarded_allow_ips
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.HOST,
        port=settings.PORT,
        log_config=None,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted,
    )


async def _serve(
    settings: Settings, *, with_worker: bool, demo_mcp: socket.socket | None = None
) -> None:
    from backend.main import create_app

    if demo_mcp is not None:  # first up, last down: the worker's runs call its tools
        from backend.tools.demo_server import serve_demo

        async with serve_demo(sock=demo_mcp):
            return await _serve(settings, with_worker=with_worker)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(settings, app))
    worker = None
    if with_worker:
        from backend.worker import run_worker

        worker = await run_worker(settings)
        app.state.worker = worker  # /ready reports its health too
    try:
        await server.serve()
    finally:
        if worker is not None:
            await worker.close()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command()
def dev() -> None:
    """API + worker in one process; embedded Postgres/Redis under DATA_DIR unless URLs are set."""
    from backend.core.devservices import EmbeddedServices

    # uvicorn re-raises the signal that stopped it; make SIGTERM unwind like Ctrl-C so the
    # embedded servers are stopped by the `with` below instead of outliving us.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    os.environ["ENVIRONMENT"] = "dev"
    settings = Settings()
    overrides: dict[str, Any] = {"ENVIRONMENT": "dev"}
    if settings.SECRET_KEY is None:
        overrides["SECRET_KEY"] = _dev_secret(settings.DATA_DIR)
    dev_password = None
    if not settings.FIRST_SUPERUSER_EMAIL:
        overrides["FIRST_SUPERUSER_EMAIL"], dev_password = DEV_SUPERUSER
        overrides["FIRST_SUPERUSER_PASSWORD"] = dev_password
    if "WEBHOOK_ALLOW_PRIVATE_URLS" not in os.environ:
        overrides["WEBHOOK_ALLOW_PRIVATE_URLS"] = True  # receivers on this machine, by default
    embedded = not (settings.DATABASE_URL and settings.REDIS_URL)
    with ExitStack() as stack:
        from backend.tools.demo_server import bind, url_of

        # Bound now, served with the API: its URL is known to the seed and the banner.
        demo_mcp = stack.enter_context(bind())
        overrides["DEMO_MCP_URL"] = url_of(demo_mcp)
        if embedded:
            typer.echo(f"Starting embedded Postgres and Redis under {settings.DATA_DIR} …")
            services = stack.enter_context(EmbeddedServices(settings.DATA_DIR))
            overrides["DATABASE_URL"] = settings.DATABASE_URL or services.database_url
            overrides["REDIS_URL"] = settings.REDIS_URL or services.redis_url
        settings = Settings(**overrides)  # init values win over the environment
        migrate_to_head(settings.DATABASE_URL)  # type: ignore[arg-type]
        asyncio.run(bootstrap(settings, seed=True))
        typer.echo(_banner(settings, embedded, dev_password))
        try:
            asyncio.run(_serve(settings, with_worker=True, demo_mcp=demo_mcp))
        except KeyboardInterrupt:
            pass
    typer.echo("Agentry stopped.")


@app.command()
def api() -> None:
    """Serve the API only (production): DATABASE_URL, REDIS_URL and SECRET_KEY required."""
    asyncio.run(_serve(Settings(), with_worker=False))  # its startup creates the superuser


@app.command()
def worker() -> None:
    """Run a worker process: executes runs until SIGINT/SIGTERM; survives Redis and Postgres
    outages (it reconnects by itself)."""
    from backend.worker import main as worker_main

    worker_main()


@app.command()
def webhooks() -> None:
    """Deliver webhooks only (Postgres only): beside workers started with
    WEBHOOK_DELIVERY_ENABLED=false, deliveries cost the run pipeline no CPU."""
    from backend.webhooks.process import main as webhooks_main

    webhooks_main()


@app.command("worker-health")
def worker_health() -> None:
    """Exit 0 if the worker writing WORKER_HEALTH_FILE reached Redis and Postgres at its last
    heartbeat, and that heartbeat is recent (a container healthcheck); else exit 1."""
    import json
    import time

    settings = Settings()
    if not settings.WORKER_HEALTH_FILE:
        raise typer.BadParameter("WORKER_HEALTH_FILE is not set")
    path = Path(settings.WORKER_HEALTH_FILE)
    try:
        health = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        typer.echo("unhealthy: no health file yet", err=True)
        raise typer.Exit(1) from None
    if age > 3 * settings.WORKER_HEARTBEAT_SECONDS + 1:
        typer.echo(f"unhealthy: last heartbeat {age:.0f} s ago", err=True)
        raise typer.Exit(1)
    if not health.get("healthy"):
        typer.echo(f"unhealthy: redis={health.get('redis')} database={health.get('database')}")
        raise typer.Exit(1)
    typer.echo("healthy")


@app.command()
def migrate() -> None:
    """Upgrade the database to the latest migration."""
    settings = Settings()
    if not settings.DATABASE_URL:
        raise typer.BadParameter("DATABASE_URL is not set")
    migrate_to_head(settings.DATABASE_URL)
    typer.echo("Database is at head.")
    # Before any API serves (and registration opens): nobody can claim the admin's email first.
    asyncio.run(bootstrap(settings, seed=False))


@app.command("create-superuser")
def create_superuser(
    email: str = typer.Option(..., envvar="FIRST_SUPERUSER_EMAIL"),
    password: str = typer.Option(
        ..., envvar="FIRST_SUPERUSER_PASSWORD", prompt=True, hide_input=True
    ),
) -> None:
    """Create a superuser if no user has that email."""
    settings = Settings(FIRST_SUPERUSER_EMAIL=email, FIRST_SUPERUSER_PASSWORD=password)
    asyncio.run(bootstrap(settings, seed=False))


if __name__ == "__main__":
    app()
