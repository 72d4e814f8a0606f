"""`agentry webhooks`: a process that only delivers webhooks (Postgres only, no Redis).

The deployment where webhooks cost the run pipeline least: workers started with
WEBHOOK_DELIVERY_ENABLED=false run runs (their claims and conclusions write the events), and
one or more of these fan the events out and deliver them, on CPU of their own. Stops on
SIGINT/SIGTERM; an attempt cut short is retried when its lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from backend.config import Settings, get_settings
from backend.core.logging import configure_logging
from backend.webhooks.delivery import Deliverer

log = structlog.get_logger()


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Deliver until `stop` is set."""
    if not settings.DATABASE_URL:
        raise RuntimeError("DATABASE_URL must be set to deliver webhooks")
    deliverer = Deliverer(settings)
    deliverer.start()
    log.info("webhook_deliverer_started")
    try:
        await stop.wait()
    finally:
        await deliverer.close()


def main() -> None:
    settings = get_settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    with contextlib.suppress(ImportError):  # uvicorn[standard] brings it
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(run())
