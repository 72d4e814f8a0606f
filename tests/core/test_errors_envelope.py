"""One error envelope and an X-Request-ID on every response; JSON logs without secrets or traces."""

from __future__ import annotations

import json

import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import select

from backend.auth.models import User
from tests.conftest import make_settings
from tests.support.apps import captured_logs, running_app
from tests.support.auth import PASSWORD

API = "/api/v1"
SECRET_TEXT = "kaboom-secret-sql-SELECT-password"


def assert_envelope(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert {"code", "message", "field", "request_id"} <= set(error)
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["request_id"] == r.headers["x-request-id"]
    return error


def _boom_routes(app: FastAPI) -> None:
    router = APIRouter()

    @router.get("/boom")
    async def boom():
        raise RuntimeError(SECRET_TEXT)

    app.include_router(router)


@pytest.fixture
async def other_app(settings, client):
    tight = make_settings(
        settings.DATABASE_URL,
        settings.REDIS_URL,
        RATE_LIMITS=json.dumps({"users.me": "1/minute"}),
        LOG_LEVEL="INFO",
    )
    async with running_app(tight, setup=_boom_routes) as (_, c):
        yield c


async def test_every_kind_of_error_has_the_envelope(other_app, auth):
    actor = await auth.user()
    c = other_app
    assert_envelope(await c.get(f"{API}/users/me"), 401, "unauthorized")
    assert_envelope(await c.get("/no/such/route"), 404, "not_found")
    r = await c.delete("/health")
    assert_envelope(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET"
    error = assert_envelope(
        await c.get(f"{API}/projects/not-a-uuid", headers=actor.headers), 422, "validation_error"
    )
    assert error["field"] == "project_id"
    assert error["details"][0]["field"] == "project_id"
    error = assert_envelope(
        await c.post(
            f"{API}/auth/login", content=b'{"email": ', headers={"content-type": "application/json"}
        ),
        400,
        "bad_request",
    )
    assert (await c.get(f"{API}/users/me", headers=actor.headers)).status_code == 200
    r = await c.get(f"{API}/users/me", headers=actor.headers)
    assert_envelope(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1


async def test_unexpected_error_is_a_bare_500_with_request_id(other_app):
    r = await other_app.get("/boom", headers={"X-Request-ID": "trace-500"})
    error = assert_envelope(r, 500, "internal_error")
    assert error["request_id"] == "trace-500"
    assert r.headers["x-request-id"] == "trace-500"
    assert error["message"] == "Internal server error"
    for leak in (SECRET_TEXT, "RuntimeError", "Traceback", 'File "', ".py"):
        assert leak not in r.text


async def test_request_id_is_echoed_or_generated(client):
    r = await client.get("/health", headers={"X-Request-ID": "abc-123_x.y:z"})
    assert r.headers["x-request-id"] == "abc-123_x.y:z"
    r = await client.get("/health")
    generated = r.headers["x-request-id"]
    assert len(generated) == 36
    for bad in ("has space", "new\\nline", "x" * 129, "<script>", "", "ünï"):
        r = await client.get("/health", headers={"X-Request-ID": bad.encode("utf-8")})
        assert r.headers["x-request-id"] not in (bad, generated), bad
        assert len(r.headers["x-request-id"]) == 36
    r = await client.get("/nowhere", headers={"X-Request-ID": "bad id"})
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"] != "bad id"


async def test_validation_details_list_every_field_without_echoing_input(client, auth):
    actor = await auth.user()
    r = await client.post(
        f"{API}/auth/register", json={"email": "nope", "password": "tiny", "extra": "x"}
    )
    error = assert_envelope(r, 422, "validation_error")
    assert {d["field"] for d in error["details"]} == {"email", "password", "extra"}
    assert error["field"] == error["details"][0]["field"]
    assert "tiny" not in r.text
    r = await client.get(f"{API}/projects", params={"page": 0}, headers=actor.headers)
    assert assert_envelope(r, 422, "validation_error")["field"] == "page"


async def test_values_the_database_refuses_are_422_not_500(client, auth, db):
    actor = await auth.user()
    r = await client.post(f"{API}/projects", json={"name": "nul\u0000byte"}, headers=actor.headers)
    assert_envelope(r, 422, "validation_error")
    r = await client.post(f"{API}/auth/login", json={"email": "a\u0000@x.io", "password": "p"})
    assert_envelope(r, 422, "validation_error")
    r = await client.patch(f"{API}/users/me", json={"full_name": "\u0000"}, headers=actor.headers)
    assert_envelope(r, 422, "validation_error")
    assert await db.scalar(select(User.full_name).where(User.id == actor.user.id)) == "Test User"


async def test_error_answers_of_a_limited_route_carry_the_rate_limit_headers(client, auth):
    owner, stranger = await auth.user(), await auth.user()
    project = await auth.project(owner)
    r = await client.get(f"{API}/projects/{project.id}", headers=stranger.headers)
    assert_envelope(r, 404, "not_found")
    assert r.headers["x-ratelimit-limit"] == "60"
    assert r.headers["x-ratelimit-remaining"] == "59"


async def test_logs_are_json_with_request_id_and_no_secrets(other_app, auth, db):
    actor = await auth.user(email="logged@example.com")
    hashed = await db.scalar(select(User.hashed_password).where(User.id == actor.user.id))
    with captured_logs() as out:
        r = await other_app.post(
            f"{API}/auth/login",
            json={"email": "logged@example.com", "password": "wrong-password-xyz"},
            headers={"X-Request-ID": "login-1"},
        )
        assert r.status_code == 401
        await other_app.post(
            f"{API}/auth/login", json={"email": "logged@example.com", "password": PASSWORD}
        )
        r = await other_app.get("/boom", headers={"X-Request-ID": "boom-1"})
        assert r.status_code == 500
    text = out.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "the app logged nothing"
    by_request = {line.get("request_id"): line for line in lines if line.get("event") == "request"}
    assert by_request["login-1"]["status"] == 401
    assert by_request["login-1"]["route"] == "/api/v1/auth/login"
    assert any(
        line["event"] == "unhandled_error" and line["request_id"] == "boom-1" for line in lines
    )
    for secret in ("wrong-password-xyz", PASSWORD, hashed, "$argon2", "Traceback", SECRET_TEXT):
        assert secret not in text, secret


async def test_logged_exceptions_carry_type_and_place_but_no_trace_or_message(other_app):
    import logging

    import structlog

    with captured_logs() as out:
        try:
            raise ValueError(SECRET_TEXT)
        except ValueError:
            structlog.get_logger().warning("ours_failed", exc_info=True)
            logging.getLogger("some.library").exception("library_failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["ours_failed", "library_failed"]
    assert all(line["error_type"] == "ValueError" for line in lines)
    assert SECRET_TEXT not in out.getvalue()
    assert "Traceback" not in out.getvalue()
