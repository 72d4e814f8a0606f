"""Standard Webhooks signatures, and webhook secrets encrypted at rest.

A secret is `whsec_` + base64 of 32 random bytes; it must sign every delivery, so it is stored
encrypted (backend/core/secrets.py), shown once, never returned or logged again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

from backend.core import secrets as stored

PREFIX = "whsec_"
PURPOSE = "webhook-secrets"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def encrypt(secret: str, secret_key: str) -> str:
    return stored.encrypt(secret, secret_key, PURPOSE)


def decrypt(token: str, secret_key: str) -> str:
    return stored.decrypt(token, secret_key, PURPOSE)


def sign(webhook_secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: a `v1,<base64 HMAC-SHA256>` per secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in webhook_secrets:
        key = base64.b64decode(secret.removeprefix(PREFIX))
        mac = hmac.new(key, signed, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(mac).decode())
    return " ".join(signatures)
