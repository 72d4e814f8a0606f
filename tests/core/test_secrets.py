"""Secrets at rest (backend/core/secrets.py): a key per purpose, and webhook secrets stored
before the helper moved to core still readable."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.fernet import Fernet, InvalidToken

from backend.core import secrets
from backend.webhooks import signing

KEY = "k" * 40


def test_round_trip_and_a_key_per_purpose() -> None:
    token = secrets.encrypt("Bearer s3cr3t", KEY, "mcp-headers")
    assert "s3cr3t" not in token
    assert secrets.decrypt(token, KEY, "mcp-headers") == "Bearer s3cr3t"
    with pytest.raises(InvalidToken):
        secrets.decrypt(token, KEY, "webhook-secrets")
    with pytest.raises(InvalidToken):
        secrets.decrypt(token, "other" * 10, "mcp-headers")


def test_webhook_secrets_encrypted_by_the_former_helper_still_decrypt() -> None:
    # The key derivation webhooks/signing.py used before: existing rows must stay readable.
    digest = hashlib.sha256(b"agentry/webhook-secrets\0" + KEY.encode()).digest()
    old = Fernet(base64.urlsafe_b64encode(digest)).encrypt(b"whsec_abc").decode()
    assert signing.decrypt(old, KEY) == "whsec_abc"
    assert signing.decrypt(signing.encrypt("whsec_x", KEY), KEY) == "whsec_x"
