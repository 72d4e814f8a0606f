"""Verified access tokens are remembered, but expiry is still checked on every use."""

from __future__ import annotations

import uuid

import pytest

from backend.core import security
from backend.core.security import InvalidToken, create_access_token, decode_access_token

SECRET = "s" * 64


def _token(minutes: int = 5) -> tuple[str, uuid.UUID]:
    user_id = uuid.uuid4()
    token = create_access_token(
        user_id=user_id, token_version=7, secret=SECRET, algorithm="HS256", minutes=minutes
    )
    return token, user_id


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch):
    token, user_id = _token(minutes=1)
    claims = decode_access_token(token, secret=SECRET, algorithm="HS256")
    assert (claims.user_id, claims.version) == (user_id, 7)
    assert security._verified.cache_info().currsize >= 1

    monkeypatch.setattr(security.time, "time", lambda: claims.expires_at)
    with pytest.raises(InvalidToken):
        decode_access_token(token, secret=SECRET, algorithm="HS256")


def test_a_token_is_remembered_only_for_its_secret_and_algorithm():
    token, _ = _token()
    decode_access_token(token, secret=SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        decode_access_token(token, secret="t" * 64, algorithm="HS256")
    with pytest.raises(InvalidToken):
        decode_access_token(token, secret=SECRET, algorithm="HS384")


def test_invalid_tokens_are_not_remembered():
    token, _ = _token()
    forged = token[:-4] + "AAAA"
    for _ in range(2):
        with pytest.raises(InvalidToken):
            decode_access_token(forged, secret=SECRET, algorithm="HS256")
