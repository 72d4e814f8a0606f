"""Credentials: argon2 password hashes, HS JWT access tokens, API keys and refresh tokens.

Secrets we hand out (API keys, refresh tokens) are random and stored only as
SHA-256 digests; access tokens are checked for algorithm, expiry and type.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

MAX_PASSWORD_BYTES = 1024
API_KEY_PREFIX = "agy_"
REFRESH_PREFIX = "agyr_"
T = TypeVar("T")

_hasher = PasswordHash((Argon2Hasher(),))
# Verifying against this keeps unknown-email logins as slow as wrong-password ones.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


# Each argon2 call takes ~90 ms of CPU and 64 MiB: off the event loop, on a pool sized to the
# CPUs, so a burst of logins queues instead of allocating 64 MiB per waiting request.
_HASH_POOL = ThreadPoolExecutor(
    max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="argon2"
)


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_HASH_POOL, fn, *args)


async def hash_password(password: str) -> str:
    return await _off_loop(_hasher.hash, password)


async def verify_password(password: str, hashed: str | None) -> bool:
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return False
    ok = await _off_loop(_hasher.verify, password, hashed or _DUMMY_HASH)
    return bool(ok) and hashed is not None


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


def create_access_token(
    *, user_id: uuid.UUID, token_version: int, secret: str, algorithm: str, minutes: int
) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + timedelta(minutes=minutes),
        "jti": uuid.uuid4().hex,
        "type": "access",
        "ver": token_version,
    }
    return jwt.encode(claims, secret, algorithm=algorithm)


class InvalidToken(Exception):
    pass


class AccessClaims(NamedTuple):
    user_id: uuid.UUID
    version: int | None  # compared to the user's token_version on every request
    expires_at: float


def decode_access_token(token: str, *, secret: str, algorithm: str) -> AccessClaims:
    """Verified claims of an access token; raises InvalidToken.

    Verification (signature, algorithm, required claims, type) is remembered per token, but
    expiry is checked on every call, and the caller still checks the user and `ver` per request.
    """
    claims = _verified(token, secret, algorithm)
    if claims.expires_at <= time.time():  # PyJWT's rule: expired at exp
        raise InvalidToken("ExpiredSignatureError")
    return claims


@lru_cache(maxsize=4096)  # a token is ~250 bytes: about 2 MB at most
def _verified(token: str, secret: str, algorithm: str) -> AccessClaims:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[algorithm],  # never trust the header's alg (rejects alg=none)
            options={"require": ["sub", "exp", "iat", "jti", "type"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(type(exc).__name__) from exc
    if claims.get("type") != "access":
        raise InvalidToken("wrong token type")
    try:
        user_id = uuid.UUID(claims["sub"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidToken("bad subject") from exc
    version = claims.get("ver")
    return AccessClaims(user_id, version if type(version) is int else None, float(claims["exp"]))
