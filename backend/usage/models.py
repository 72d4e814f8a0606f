from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Numeric, String, text
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base


class UsageRollup(Base):
    """Hourly usage per (project, agent, provider, model), upserted in the run's transactions.

    Project metrics read only this table, so their cost does not grow with the number of runs.
    Tokens, cost and ``calls`` grow per provider call; ``runs`` and the status counters grow
    once per run, keyed by its final model (backend/usage/service.py's fragments).
    """

    __tablename__ = "usage_rollups"

    project_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    agent_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(16), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    runs: Mapped[int] = mapped_column(default=0)
    succeeded: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    cancelled: Mapped[int] = mapped_column(default=0)
    timed_out: Mapped[int] = mapped_column(default=0)
    # Provider calls; with unknown_cost_calls it tells "partly unpriced" from "not priced at all".
    calls: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=Decimal(0))
    unknown_cost_calls: Mapped[int] = mapped_column(default=0)
