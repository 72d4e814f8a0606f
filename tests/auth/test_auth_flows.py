"""Register, login (JSON and OAuth2 form), refresh rotation and reuse detection, logout, /users/me."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from backend.auth.models import RefreshToken, User
from tests.conftest import make_settings
from tests.support.apps import cheap_password_hashing, running_app
from tests.support.auth import PASSWORD

API = "/api/v1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client, email: str, password: str = PASSWORD) -> dict:
    r = await client.post(f"{API}/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == code
    assert body["request_id"] == r.headers["x-request-id"]
    return body


# --- register -------------------------------------------------------------------------


async def test_register_creates_user_without_leaking_the_hash(client, db):
    r = await client.post(
        f"{API}/auth/register",
        json={"email": "Ada@Example.com", "password": "s3cret-pass", "full_name": "Ada"},
    )
    assert r.status_code == 201, r.text
    user = r.json()
    assert set(user) == {
        "id",
        "email",
        "full_name",
        "is_active",
        "is_superuser",
        "created_at",
        "updated_at",
    }
    assert user["email"] == "ada@example.com"
    assert (user["is_active"], user["is_superuser"]) == (True, False)
    hashed = await db.scalar(select(User.hashed_password).where(User.email == "ada@example.com"))
    assert hashed.startswith("$argon2")
    assert "s3cret-pass" not in hashed
    assert hashed not in r.text


async def test_register_duplicate_email_is_409_whatever_the_case(client, auth):
    await auth.user(email="taken@example.com")
    r = await client.post(
        f"{API}/auth/register", json={"email": "TAKEN@example.com", "password": "password1"}
    )
    body = assert_error(r, 409, "conflict")
    assert body["field"] == "email"


async def test_register_cannot_make_a_superuser(client):
    r = await client.post(
        f"{API}/auth/register",
        json={"email": "eve@example.com", "password": "password1", "is_superuser": True},
    )
    assert_error(r, 422, "validation_error")


async def test_register_password_bounds(client):
    r = await client.post(f"{API}/auth/register", json={"email": "a@ex.io", "password": "short7!"})
    body = assert_error(r, 422, "validation_error")
    assert body["field"] == "password"
    assert "short7!" not in r.text  # rejected input is never echoed
    r = await client.post(f"{API}/auth/register", json={"email": "a@ex.io", "password": "p" * 1025})
    assert_error(r, 422, "validation_error")
    # 1 KB counts bytes, not characters: 400 three-byte characters are 1200 bytes.
    r = await client.post(f"{API}/auth/register", json={"email": "a@ex.io", "password": "€" * 400})
    assert_error(r, 422, "validation_error")
    r = await client.post(f"{API}/auth/register", json={"email": "a@ex.io", "password": "p" * 1024})
    assert r.status_code == 201, r.text


async def test_register_rejects_invalid_email(client):
    r = await client.post(f"{API}/auth/register", json={"email": "nope", "password": "password1"})
    assert assert_error(r, 422, "validation_error")["field"] == "email"


async def test_registration_can_be_disabled_by_config(settings, client, db):
    disabled = make_settings(settings.DATABASE_URL, settings.REDIS_URL, REGISTRATION_ENABLED=False)
    async with running_app(disabled) as (_, other):
        r = await other.post(
            f"{API}/auth/register", json={"email": "x@example.com", "password": "password1"}
        )
    assert_error(r, 403, "forbidden")
    assert await db.scalar(select(func.count()).select_from(User)) == 0


async def test_concurrent_registrations_of_one_email_yield_one_user(settings, client, db):
    # Rate limits are configuration: this app allows the burst.
    roomy = make_settings(settings.DATABASE_URL, settings.REDIS_URL, RATE_LIMIT_MULTIPLIER=100)
    # Cheap hashes also make the requests reach the INSERT closer together: a tighter race.
    with cheap_password_hashing():
        async with running_app(roomy) as (_, other):
            responses = await asyncio.gather(
                *(
                    other.post(
                        f"{API}/auth/register",
                        json={"email": "race@example.com", "password": f"password-{i}"},
                    )
                    for i in range(20)
                )
            )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19, [r.text for r in responses if r.status_code >= 500]
    for r in responses:
        if r.status_code == 409:
            # The same answer as a sequential duplicate, not a generic integrity error.
            assert r.json()["error"]["code"] == "conflict"
            assert r.json()["error"]["field"] == "email"
    count = await db.scalar(select(func.count()).select_from(User))
    assert count == 1


# --- login ----------------------------------------------------------------------------


async def test_login_returns_a_working_token_pair(client, auth):
    actor = await auth.user(email="bob@example.com")
    tokens = await login(client, "BOB@example.com")
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 15 * 60
    assert tokens["refresh_token"].startswith("agyr_")
    r = await client.get(f"{API}/users/me", headers=bearer(tokens["access_token"]))
    assert r.status_code == 200
    assert r.json()["id"] == str(actor.user.id)


async def test_login_form_works_like_json_login(client, auth):
    await auth.user(email="form@example.com")
    r = await client.post(
        f"{API}/auth/token", data={"username": "form@example.com", "password": PASSWORD}
    )
    assert r.status_code == 200, r.text
    me = await client.get(f"{API}/users/me", headers=bearer(r.json()["access_token"]))
    assert me.json()["email"] == "form@example.com"
    r = await client.post(
        f"{API}/auth/token", data={"username": "form@example.com", "password": "wrong-password"}
    )
    assert_error(r, 401, "unauthorized")


async def test_bad_credentials_answer_the_same_for_unknown_email_and_wrong_password(client, auth):
    await auth.user(email="known@example.com")
    wrong = await client.post(
        f"{API}/auth/login", json={"email": "known@example.com", "password": "not-the-password"}
    )
    unknown = await client.post(
        f"{API}/auth/login", json={"email": "ghost@example.com", "password": "not-the-password"}
    )
    form = await client.post(
        f"{API}/auth/token", data={"username": "ghost@example.com", "password": "whatever1"}
    )
    bodies = [assert_error(r, 401, "unauthorized") for r in (wrong, unknown, form)]
    assert len({b["message"] for b in bodies}) == 1
    assert all(r.headers["www-authenticate"] == "Bearer" for r in (wrong, unknown, form))


async def test_inactive_user_cannot_log_in(client, auth, db):
    actor = await auth.user(email="off@example.com")
    actor.user.is_active = False
    await db.commit()
    r = await client.post(
        f"{API}/auth/login", json={"email": "off@example.com", "password": PASSWORD}
    )
    assert_error(r, 401, "unauthorized")


# --- refresh, reuse detection, logout -------------------------------------------------


async def refresh(client, token: str):
    return await client.post(f"{API}/auth/refresh", json={"refresh_token": token})


async def test_refresh_rotates_the_pair(client, auth):
    await auth.user(email="rot@example.com")
    first = await login(client, "rot@example.com")
    r = await refresh(client, first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    me = await client.get(f"{API}/users/me", headers=bearer(second["access_token"]))
    assert me.status_code == 200
    # The new refresh token works in turn.
    r = await refresh(client, second["refresh_token"])
    assert r.status_code == 200


async def test_reusing_a_rotated_refresh_token_revokes_the_whole_login(client, auth, db):
    actor = await auth.user(email="reuse@example.com")
    first = await login(client, "reuse@example.com")
    other_login = await login(client, "reuse@example.com")  # another device: unaffected
    second = (await refresh(client, first["refresh_token"])).json()
    third = (await refresh(client, second["refresh_token"])).json()

    r = await refresh(client, first["refresh_token"])  # stolen and replayed
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    # The newest token of that family died with it ...
    assert_error(await refresh(client, third["refresh_token"]), 401, "unauthorized")
    # ... and the revocation was committed although the request answered 401.
    live = await db.scalar(
        select(func.count())
        .select_from(RefreshToken)
        .where(RefreshToken.user_id == actor.user.id, RefreshToken.revoked_at.is_(None))
    )
    assert live == 1  # only the other login's token
    assert (await refresh(client, other_login["refresh_token"])).status_code == 200


async def test_unknown_and_expired_refresh_tokens_are_401(client, auth, db):
    await auth.user(email="exp@example.com")
    assert_error(await refresh(client, "agyr_not-a-token"), 401, "unauthorized")
    tokens = await login(client, "exp@example.com")
    token = await db.scalar(select(RefreshToken))
    token.expires_at = token.created_at
    await db.commit()
    assert_error(await refresh(client, tokens["refresh_token"]), 401, "unauthorized")


async def test_logout_revokes_the_refresh_token(client, auth):
    await auth.user(email="out@example.com")
    tokens = await login(client, "out@example.com")
    r = await client.post(f"{API}/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 204
    assert r.content == b""
    assert_error(await refresh(client, tokens["refresh_token"]), 401, "unauthorized")
    # Logging out an unknown token reveals nothing.
    r = await client.post(f"{API}/auth/logout", json={"refresh_token": "agyr_unknown"})
    assert r.status_code == 204


async def test_refresh_is_refused_for_a_deactivated_user(client, auth, db):
    actor = await auth.user(email="gone@example.com")
    tokens = await login(client, "gone@example.com")
    actor.user.is_active = False
    await db.commit()
    assert_error(await refresh(client, tokens["refresh_token"]), 401, "unauthorized")


# --- /users/me --------------------------------------------------------------------------


async def test_get_and_patch_me(client, auth):
    actor = await auth.user()
    r = await client.get(f"{API}/users/me", headers=actor.headers)
    assert r.status_code == 200
    assert r.json()["email"] == actor.user.email
    r = await client.patch(
        f"{API}/users/me", json={"full_name": "  Grace  "}, headers=actor.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["full_name"] == "Grace"
    r = await client.patch(f"{API}/users/me", json={"is_superuser": True}, headers=actor.headers)
    assert_error(r, 422, "validation_error")
    r = await client.patch(
        f"{API}/users/me", json={"email": "x@example.com"}, headers=actor.headers
    )
    assert_error(r, 422, "validation_error")


async def test_password_change_requires_the_current_password(client, auth):
    actor = await auth.user()
    r = await client.patch(
        f"{API}/users/me", json={"password": "brand-new-pass"}, headers=actor.headers
    )
    assert assert_error(r, 422, "validation_error")["field"] == "current_password"
    r = await client.patch(
        f"{API}/users/me",
        json={"password": "brand-new-pass", "current_password": "wrong-password"},
        headers=actor.headers,
    )
    assert assert_error(r, 400, "bad_request")["field"] == "current_password"
    # Neither attempt changed anything: the old password still logs in.
    await login(client, actor.user.email)


async def test_password_change_ends_every_session(client, auth):
    actor = await auth.user()
    session = await login(client, actor.user.email)
    r = await client.patch(
        f"{API}/users/me",
        json={"password": "brand-new-pass", "current_password": PASSWORD},
        headers=bearer(session["access_token"]),
    )
    assert r.status_code == 200, r.text
    # Existing access tokens (token_version) and refresh tokens no longer work.
    for headers in (actor.headers, bearer(session["access_token"])):
        r = await client.get(f"{API}/users/me", headers=headers)
        assert_error(r, 401, "unauthorized")
    assert_error(await refresh(client, session["refresh_token"]), 401, "unauthorized")
    # The old password is refused, the new one works.
    r = await client.post(
        f"{API}/auth/login", json={"email": actor.user.email, "password": PASSWORD}
    )
    assert_error(r, 401, "unauthorized")
    fresh = await login(client, actor.user.email, "brand-new-pass")
    assert (await client.get(f"{API}/users/me", headers=bearer(fresh["access_token"]))).is_success


async def test_api_key_cannot_change_the_password(client, auth):
    actor = await auth.user()
    key = await auth.api_key(actor)
    r = await client.get(f"{API}/users/me", headers=key.headers)
    assert r.status_code == 200  # a key may read who it belongs to
    r = await client.patch(
        f"{API}/users/me",
        json={"password": "brand-new-pass", "current_password": PASSWORD},
        headers=key.headers,
    )
    assert_error(r, 403, "forbidden")
