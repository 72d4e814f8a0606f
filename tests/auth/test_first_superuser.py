"""The first superuser: created by `agentry migrate` and at every API startup, exactly once
however many start together; published or short passwords refused outside dev mode."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from typer.testing import CliRunner

from backend.auth.models import User
from backend.cli import app as cli
from backend.config import Settings
from tests.conftest import make_settings
from tests.support.apps import cheap_password_hashing, running_app

EMAIL = "root@example.com"
PASSWORD = "a long and private passphrase"


async def superusers(db) -> list[User]:
    query = select(User).where(User.email == EMAIL).execution_options(populate_existing=True)
    return list(await db.scalars(query))


async def login(client, password: str) -> int:
    body = {"email": EMAIL, "password": password}
    return (await client.post("/api/v1/auth/login", json=body)).status_code


async def test_concurrent_api_startups_create_exactly_one_superuser(settings, db) -> None:
    config = make_settings(
        settings.DATABASE_URL,
        settings.REDIS_URL,
        FIRST_SUPERUSER_EMAIL=EMAIL,
        FIRST_SUPERUSER_PASSWORD=PASSWORD,
    )
    started = asyncio.Event()
    ready = 0

    async def start_and_hold():
        nonlocal ready
        async with running_app(config) as (_app, client):
            ready += 1
            if ready == 4:
                started.set()
            await started.wait()
            return await login(client, PASSWORD)

    with cheap_password_hashing():
        statuses = await asyncio.gather(*(start_and_hold() for _ in range(4)))
    assert statuses == [200] * 4
    [user] = await superusers(db)
    assert user.is_superuser
    assert user.is_active


async def test_startup_leaves_an_existing_user_with_that_email_alone(settings, auth, db) -> None:
    existing = await auth.user(email=EMAIL)
    config = make_settings(
        settings.DATABASE_URL,
        settings.REDIS_URL,
        FIRST_SUPERUSER_EMAIL=EMAIL,
        FIRST_SUPERUSER_PASSWORD=PASSWORD,
    )
    async with running_app(config) as (_app, client):
        assert await login(client, PASSWORD) == 401
    [user] = await superusers(db)
    assert user.id == existing.user.id
    assert not user.is_superuser


async def test_migrate_creates_the_first_superuser(settings, db, monkeypatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "test")
    monkeypatch.setenv("SECRET_KEY", settings.secret_key)
    monkeypatch.setenv("DATABASE_URL", settings.DATABASE_URL)
    monkeypatch.setenv("FIRST_SUPERUSER_EMAIL", EMAIL)
    monkeypatch.setenv("FIRST_SUPERUSER_PASSWORD", PASSWORD)
    with cheap_password_hashing():
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["migrate"])
    assert result.exit_code == 0, result.output
    assert f"Created superuser {EMAIL}" in result.output
    [user] = await superusers(db)
    assert user.is_superuser
    again = await asyncio.to_thread(CliRunner().invoke, cli, ["migrate"])
    assert again.exit_code == 0
    assert "Created superuser" not in again.output
    assert len(await superusers(db)) == 1


@pytest.mark.parametrize("environment", ["production", "test"])
@pytest.mark.parametrize(
    "password", ["agentry-admin", "changeme", "change-me", "Password", "admin", "short7!", ""]
)
def test_published_or_short_passwords_are_refused_outside_dev(environment, password) -> None:
    with pytest.raises(ValidationError, match="FIRST_SUPERUSER_PASSWORD"):
        Settings(
            ENVIRONMENT=environment,
            SECRET_KEY="k" * 40,
            FIRST_SUPERUSER_EMAIL=EMAIL,
            FIRST_SUPERUSER_PASSWORD=password,
            _env_file=None,
        )


async def test_dev_mode_still_creates_the_dev_superuser(settings, db) -> None:
    config = make_settings(
        settings.DATABASE_URL,
        settings.REDIS_URL,
        ENVIRONMENT="dev",
        FIRST_SUPERUSER_EMAIL=EMAIL,
        FIRST_SUPERUSER_PASSWORD="agentry-admin",
    )
    async with running_app(config) as (_app, client):
        assert await login(client, "agentry-admin") == 200
    assert len(await superusers(db)) == 1
