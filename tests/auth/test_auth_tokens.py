"""Access tokens: anything but a valid, current, HS256 access token of an active user is a 401."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import jwt
import pytest

from backend.core.security import create_access_token

ME = "/api/v1/users/me"


def _claims(user_id: uuid.UUID, **overrides: object) -> dict:
    now = int(datetime.now(UTC).timestamp())
    claims = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "type": "access",
        "ver": 0,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _bad_tokens(user_id: uuid.UUID, secret: str) -> dict[str, str]:
    sign = lambda **kw: jwt.encode(_claims(user_id, **kw), secret, algorithm="HS256")  # noqa: E731
    good = sign()
    header, payload, signature = good.split(".")
    forged_payload = _b64({**_claims(user_id), "sub": str(uuid.uuid4())})
    return {
        "expired": sign(exp=int(datetime.now(UTC).timestamp()) - 5),
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "tampered payload": f"{header}.{forged_payload}.{signature}",
        "alg none": jwt.encode(_claims(user_id), None, algorithm="none"),
        "alg none header on signed body": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "other secret": jwt.encode(_claims(user_id), "another-secret-" + "y" * 32, "HS256"),
        "other algorithm": jwt.encode(_claims(user_id), secret, algorithm="HS384"),
        "refresh type": sign(type="refresh"),
        "no type": sign(type=None),
        "no sub": sign(sub=None),
        "no exp": sign(exp=None),
        "no iat": sign(iat=None),
        "no jti": sign(jti=None),
        "no version": sign(ver=None),
        "old version": sign(ver=-1),
        "sub not a uuid": sign(sub="admin"),
        "sub of nobody": sign(sub=str(uuid.uuid4())),
        "garbage": "not.a.jwt",
        "empty segments": "..",
        "huge": "a" * 10_000,
    }


CASES = list(_bad_tokens(uuid.uuid4(), "s" * 64).keys())


@pytest.mark.parametrize("case", CASES)
async def test_invalid_access_tokens_are_401_with_envelope(client, auth, settings, case):
    actor = await auth.user()
    token = _bad_tokens(actor.user.id, settings.secret_key)[case]
    r = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, (case, r.text)
    assert r.headers["www-authenticate"] == "Bearer"
    error = r.json()["error"]
    assert error["code"] == "unauthorized"
    assert error["request_id"] == r.headers["x-request-id"]


async def test_the_reference_token_is_valid(client, auth, settings):
    # Guards the cases above: the only difference between them and success is the defect.
    actor = await auth.user()
    token = jwt.encode(_claims(actor.user.id), settings.secret_key, algorithm="HS256")
    r = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Token abc"},
        {"X-API-Key": "agy_not-a-key"},
        {"X-API-Key": "x" * 5000},
    ],
)
async def test_missing_or_malformed_credentials_are_401(client, auth, headers):
    await auth.user()
    r = await client.get(ME, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthorized"


async def test_deactivation_kills_access_tokens_at_once(client, auth, db):
    actor = await auth.user()
    assert (await client.get(ME, headers=actor.headers)).status_code == 200
    actor.user.is_active = False
    await db.commit()
    r = await client.get(ME, headers=actor.headers)
    assert r.status_code == 401


def test_create_access_token_carries_the_documented_claims(settings):
    user_id = uuid.uuid4()
    token = create_access_token(
        user_id=user_id, token_version=3, secret=settings.secret_key, algorithm="HS256", minutes=1
    )
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, settings.secret_key, algorithms=["HS256"])
    assert {"sub", "exp", "iat", "jti", "type"} <= claims.keys()
    assert (claims["sub"], claims["type"], claims["ver"]) == (str(user_id), "access", 3)
