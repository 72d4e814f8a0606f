"""Secrets encrypted at rest: values the service must send again (webhook signing secrets, MCP
servers' headers), so hashing them is not enough. Fernet with a key derived from SECRET_KEY
per purpose: a leak of one purpose's key opens nothing else. Rotating SECRET_KEY makes the
stored values unreadable (they must be set again).
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet


@lru_cache(maxsize=8)
def _fernet(secret_key: str, purpose: str) -> Fernet:
    digest = hashlib.sha256(f"agentry/{purpose}\0".encode() + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(value: str, secret_key: str, purpose: str) -> str:
    return _fernet(secret_key, purpose).encrypt(value.encode()).decode()


@lru_cache(maxsize=1024)  # read on every use (each delivery, each MCP session)
def decrypt(token: str, secret_key: str, purpose: str) -> str:
    return _fernet(secret_key, purpose).decrypt(token.encode()).decode()
