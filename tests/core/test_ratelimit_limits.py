"""Per-route, per-caller rate limits in Redis: headers, 429, identities, sharing, fail-open."""

from __future__ import annotations

import json
import time

from sqlalchemy import func, select

from backend.auth.models import User
from tests.conftest import make_settings
from tests.support.apps import closed_port_url, running_app

API = "/api/v1"
ME = f"{API}/users/me"


def tight(settings, limits: dict[str, str], **overrides):
    return make_settings(
        settings.DATABASE_URL, settings.REDIS_URL, RATE_LIMITS=json.dumps(limits), **overrides
    )


async def test_limited_routes_report_their_budget(client, auth):
    actor = await auth.user()
    first = await client.get(ME, headers=actor.headers)
    second = await client.get(ME, headers=actor.headers)
    assert first.headers["x-ratelimit-limit"] == "120"
    assert first.headers["x-ratelimit-remaining"] == "119"
    assert second.headers["x-ratelimit-remaining"] == "118"
    reset = int(first.headers["x-ratelimit-reset"])
    assert time.time() < reset <= time.time() + 61
    assert "retry-after" not in first.headers


async def test_429_with_retry_after_and_envelope_after_the_limit(settings, client, auth):
    actor = await auth.user()
    async with running_app(tight(settings, {"users.me": "2/minute"})) as (_, c):
        statuses = [(await c.get(ME, headers=actor.headers)).status_code for _ in range(2)]
        r = await c.get(ME, headers=actor.headers)
    assert statuses == [200, 200]
    assert r.status_code == 429
    error = r.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["request_id"] == r.headers["x-request-id"]
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["x-ratelimit-limit"] == "2"
    assert r.headers["x-ratelimit-remaining"] == "0"


async def test_limits_are_per_user_and_per_api_key(settings, client, auth):
    alice, bob = await auth.user(), await auth.user()
    alice_key = await auth.api_key(alice)
    alice_other_key = await auth.api_key(alice)
    async with running_app(tight(settings, {"users.me": "2/minute"})) as (_, c):
        for _ in range(2):
            assert (await c.get(ME, headers=alice.headers)).status_code == 200
        assert (await c.get(ME, headers=alice.headers)).status_code == 429
        # Bob's budget, and each of Alice's keys' budgets, are their own.
        assert (await c.get(ME, headers=bob.headers)).status_code == 200
        for _ in range(2):
            assert (await c.get(ME, headers=alice_key.headers)).status_code == 200
        assert (await c.get(ME, headers=alice_key.headers)).status_code == 429
        assert (await c.get(ME, headers=alice_other_key.headers)).status_code == 200


async def test_limits_are_per_route(settings, client, auth):
    actor = await auth.user()
    async with running_app(tight(settings, {"users.me": "1/minute"})) as (_, c):
        assert (await c.get(ME, headers=actor.headers)).status_code == 200
        assert (await c.get(ME, headers=actor.headers)).status_code == 429
        r = await c.get(f"{API}/projects", headers=actor.headers)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit"] == "60"


async def login(c, email: str):
    return await c.post(f"{API}/auth/login", json={"email": email, "password": "guess-guess"})


async def test_login_is_limited_per_email_and_per_ip(settings, client, auth):
    limits = {"auth.login": "4/minute", "auth.login.email": "2/minute"}
    config = tight(settings, limits)
    async with running_app(config, client_ip="10.0.0.1") as (_, c):
        assert [(await login(c, "x@example.com")).status_code for _ in range(2)] == [401, 401]
        r = await login(c, "X@Example.com")  # the same email, however spelled
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        # Another email from this IP still gets through: the email budget is spent, not the IP's.
        assert (await login(c, "y@example.com")).status_code == 401
        # Now the IP budget (4) is spent too, whatever the email.
        r = await login(c, "z@example.com")
        assert r.status_code == 429
        assert "retry-after" in r.headers
        form = await c.post(
            f"{API}/auth/token", data={"username": "w@example.com", "password": "p"}
        )
        assert form.status_code == 429  # the form login shares the IP budget
    async with running_app(config, client_ip="10.0.0.2") as (_, c):
        assert (await login(c, "z@example.com")).status_code == 401
        assert (await login(c, "x@example.com")).status_code == 429  # the email is still spent


async def test_register_is_limited_per_ip(settings, client):
    async with running_app(tight(settings, {"auth.register": "1/minute"})) as (_, c):
        r = await c.post(f"{API}/auth/register", json={"email": "a@ex.io", "password": "short"})
        assert r.status_code == 422
        r = await c.post(f"{API}/auth/register", json={"email": "b@ex.io", "password": "short"})
        assert r.status_code == 429


async def test_one_budget_shared_by_two_api_processes(settings, client, auth):
    actor = await auth.user()
    config = tight(settings, {"users.me": "3/minute"})
    async with (
        running_app(config) as (_, one),
        running_app(config) as (_, two),
    ):
        assert (await one.get(ME, headers=actor.headers)).status_code == 200
        assert (await two.get(ME, headers=actor.headers)).status_code == 200
        r = await one.get(ME, headers=actor.headers)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert (await two.get(ME, headers=actor.headers)).status_code == 429
        assert (await one.get(ME, headers=actor.headers)).status_code == 429


async def test_multiplier_scales_every_limit(settings, client, auth):
    actor = await auth.user()
    config = make_settings(settings.DATABASE_URL, settings.REDIS_URL, RATE_LIMIT_MULTIPLIER=0.5)
    async with running_app(config) as (_, c):
        r = await c.get(ME, headers=actor.headers)
    assert r.headers["x-ratelimit-limit"] == "60"


async def test_disabled_rate_limiting_sends_no_headers_and_never_429(settings, client, auth):
    actor = await auth.user()
    config = tight(settings, {"users.me": "1/minute"}, RATE_LIMIT_ENABLED=False)
    async with running_app(config) as (_, c):
        for _ in range(3):
            r = await c.get(ME, headers=actor.headers)
            assert r.status_code == 200
            assert not any(h.startswith("x-ratelimit") for h in r.headers)


async def test_redis_down_fails_open(settings, client, auth):
    actor = await auth.user()
    config = make_settings(settings.DATABASE_URL, closed_port_url())
    async with running_app(config) as (_, c):
        for _ in range(2):
            r = await c.get(ME, headers=actor.headers)
            assert r.status_code == 200
            assert "x-ratelimit-limit" not in r.headers
        r = await c.post(f"{API}/projects", json={"name": "During outage"}, headers=actor.headers)
        assert r.status_code == 201, r.text


async def assert_guessing_routes_refuse(c) -> None:
    """Login (both forms) and register answer 503 rather than run without their limits."""
    answers = [
        await login(c, "victim@example.com"),
        await c.post(f"{API}/auth/token", data={"username": "victim@ex.io", "password": "p"}),
        await c.post(f"{API}/auth/register", json={"email": "n@ex.io", "password": "long-enough"}),
    ]
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable"
        assert r.headers["retry-after"] == "5"


async def test_redis_down_login_and_register_fail_closed(settings, client, auth):
    actor = await auth.user()
    config = make_settings(settings.DATABASE_URL, closed_port_url())
    async with running_app(config) as (_, c):
        await assert_guessing_routes_refuse(c)
        assert (await c.get(ME, headers=actor.headers)).status_code == 200  # others: open
        await assert_guessing_routes_refuse(c)  # also inside the back-off window


async def test_degraded_window_login_and_register_fail_closed(settings, client, auth, db):
    actor = await auth.user()
    async with running_app(settings) as (app, c):
        # Redis answers, but this process is in its back-off after a slow or failed reply.
        app.state.limiter._down_until = time.monotonic() + 60
        await assert_guessing_routes_refuse(c)
        r = await c.get(ME, headers=actor.headers)
        assert r.status_code == 200
        assert "x-ratelimit-limit" not in r.headers
    assert await db.scalar(select(func.count()).select_from(User)) == 1  # nobody registered
