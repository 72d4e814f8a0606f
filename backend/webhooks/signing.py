"""Standard Webhooks signatures, and webhook secrets encrypted at rest.

A secret is `whsec_` + base64 of 32 random bytes; it must sign every delivery, so it is stored
encrypted (Fernet, key derived from SECRET_KEY), shown once, never returned or logged again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from functools import lru_cache

from cryptography.fernet import Fernet

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@lru_cache(maxsize=8)
def _fernet(secret_key: str) -> Fernet:
    # A key of its own, derived: a leak of one use of SECRET_KEY's bytes opens nothing else.
    digest = hashlib.sha256(b"agentry/webhook-secrets\0" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(secret: str, secret_key: str) -> str:
    return _fernet(secret_key).encrypt(secret.encode()).decode()


@lru_cache(maxsize=1024)  # every delivery decrypts its endpoint's secrets
def decrypt(token: str, secret_key: str) -> str:
    return _fernet(secret_key).decrypt(token.encode()).decode()


def sign(webhook_secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: a `v1,<base64 HMAC-SHA256>` per secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in webhook_secrets:
        key = base64.b64decode(secret.removeprefix(PREFIX))
        mac = hmac.new(key, signed, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(mac).decode())
    return " ".join(signatures)
