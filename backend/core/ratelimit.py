"""Per-route, per-caller fixed-window rate limits in Redis (`limits`' items and keys).

Counters live in Redis, so every API process shares them. While Redis is
unreachable (an error, or no reply within 0.5 s) the limiter fails open (requests pass
without rate-limit headers) for a short back-off, so an outage of the cache never becomes an
outage of the API. Limits enforced with `fail_closed` (login and register, against password
guessing) refuse with 503 instead: without their counters they would be unlimited.

A hit is one round trip on a pipelined connection: a script increments the window's
counter (starting the window's expiry when it creates it, as `limits`' fixed window
does) and returns the window's remaining time with it, on the keys `limits` would use.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

import structlog
from limits import RateLimitItem, parse
from prometheus_client import Counter
from starlette.requests import Request

from backend.core.errors import RateLimited, Unavailable
from backend.core.redis_pipe import RedisPipe, RedisReplyError

log = structlog.get_logger()

DEGRADED = Counter(
    "agentry_rate_limit_degraded_total", "Requests let through because Redis was unreachable"
)
_BACKOFF_SECONDS = 5.0
# KEYS[1]: the window's counter; ARGV[1]: the window in seconds. Returns {count, PTTL in ms}.
_HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return {count, redis.call('PTTL', KEYS[1])}
"""
_HIT_SHA = hashlib.sha1(_HIT_SCRIPT.encode()).hexdigest()
# Where a request's verdict waits for its response (scope["state"], i.e. request.state).
RATE_LIMIT_STATE_KEY = "rate_limit_headers"


@dataclass(frozen=True)
class Verdict:
    limit: int
    remaining: int
    reset_at: float  # epoch seconds when the window resets

    @property
    def allowed(self) -> bool:
        return self.remaining >= 0

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(self.remaining, 0)),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.reset_at - time.time())))
        return headers


class RateLimiter:
    def __init__(
        self,
        redis_url: str,
        *,
        enabled: bool = True,
        multiplier: float = 1.0,
        overrides: dict[str, str] | None = None,
        key_prefix: str = "agentry:rl",
    ) -> None:
        self.enabled = enabled
        self.multiplier = multiplier
        self.overrides = overrides or {}
        self.key_prefix = key_prefix
        self.redis = RedisPipe(redis_url, timeout=0.5)
        self._items: dict[tuple[str, str], RateLimitItem] = {}
        self._down_until = 0.0

    def item(self, name: str, default: str) -> RateLimitItem:
        cached = self._items.get((name, default))
        if cached is None:
            base = parse(self.overrides.get(name, default))
            amount = max(1, math.floor(base.amount * self.multiplier))
            cached = type(base)(amount, base.multiples, namespace=name)
            self._items[(name, default)] = cached
        return cached

    async def hit(
        self, name: str, default: str, identity: str, *, fail_closed: bool = False
    ) -> Verdict | None:
        """Count one request; None when limiting is off or degraded (with `fail_closed`,
        degraded raises Unavailable instead)."""
        if not self.enabled:
            return None
        if time.monotonic() < self._down_until:
            _degraded(fail_closed)
            return None
        item = self.item(name, default)
        key = f"{self.key_prefix}:{item.key_for(identity)}"
        try:
            count, ttl_ms = await self._incr(key, item.get_expiry())
        except Exception as exc:  # noqa: BLE001 - any storage failure means "degraded", by design
            self._down_until = time.monotonic() + _BACKOFF_SECONDS
            log.warning("rate_limit_degraded", error_type=type(exc).__name__)
            _degraded(fail_closed)
            return None
        reset_at = time.time() + max(ttl_ms, 0) / 1000
        return Verdict(limit=item.amount, remaining=item.amount - count, reset_at=reset_at)

    async def _incr(self, key: str, expiry: int) -> tuple[int, int]:
        try:
            return await self.redis.execute("EVALSHA", _HIT_SHA, 1, key, expiry)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # A restarted Redis (or SCRIPT FLUSH): EVAL caches the script again.
            return await self.redis.execute("EVAL", _HIT_SCRIPT, 1, key, expiry)

    async def enforce(
        self,
        name: str,
        default: str,
        identity: str,
        request: Request,
        *,
        fail_closed: bool = False,
    ) -> None:
        verdict = await self.hit(name, default, identity, fail_closed=fail_closed)
        if verdict is None:
            return
        headers = verdict.headers()
        # Every response of the request carries them (core/middleware.py), whatever it is.
        request.scope.setdefault("state", {})[RATE_LIMIT_STATE_KEY] = [
            (name.lower().encode(), value.encode()) for name, value in headers.items()
        ]
        if not verdict.allowed:
            raise RateLimited(f"Rate limit of {verdict.limit} per window exceeded; retry later")

    async def aclose(self) -> None:
        await self.redis.aclose()


def _degraded(fail_closed: bool) -> None:
    if fail_closed:
        raise Unavailable(
            "Rate limiting is unavailable, and this route is not served without it; retry later",
            headers={"Retry-After": str(math.ceil(_BACKOFF_SECONDS))},
        )
    DEGRADED.inc()
    return None
