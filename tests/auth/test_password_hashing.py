"""Password hashing: argon2, bounded parallelism (64 MiB each), 1 KB cap, constant-time misses."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from backend.core import security


async def test_hash_and_verify():
    hashed = await security.hash_password("correct horse")
    assert hashed.startswith("$argon2id$")
    assert await security.verify_password("correct horse", hashed)
    assert not await security.verify_password("wrong horse", hashed)
    assert not await security.verify_password("correct horse", None)  # unknown user
    assert not await security.verify_password("x" * 1025, hashed)  # over 1 KB: refused unhashed


class _CountingHasher:
    """Stands in for argon2 to observe how many hashes run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def hash(self, password: str) -> str:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return "hashed"


async def test_concurrent_hashes_are_bounded_by_the_cpus(monkeypatch: pytest.MonkeyPatch):
    counting = _CountingHasher()
    monkeypatch.setattr(security, "_hasher", counting)
    await asyncio.gather(*(security.hash_password(f"pw-{i}") for i in range(24)))
    assert counting.peak <= max(2, os.cpu_count() or 2)
