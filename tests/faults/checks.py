"""The invariants every fault scenario ends with (DESIGN.md invariants 2, 4, 5, 6; API.md Runs):

- every run of the project is final within the scenario's stated bound: none stuck;
- each agent ran its runs one at a time, in submission order;
- usage = the delivered stub calls = the provider_calls rows = the project's metrics: a call
  that was answered is counted exactly once, a call that was never answered is not counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from decimal import Decimal
from typing import Any

from tests.faults.client import PRICING, Api
from tests.faults.harness import Db
from tests.faults.llm_stub import LlmStub

FINAL = ("succeeded", "failed", "cancelled", "timed_out")
_PENDING = """SELECT id, input, status, attempt, worker_id, error FROM runs
    WHERE project_id = $1 AND status <> ALL($2::text[]) ORDER BY seq"""


async def all_final(db: Db, api: Api, *, within: float) -> float:
    """Every run of the project reaches a final status within `within` seconds; how long it
    took (printed: `pytest tests/faults -s` shows each scenario's recovery time)."""
    started = time.monotonic()
    deadline = started + within
    while True:
        pending = await db.fetch(_PENDING, api.project_id, list(FINAL))
        if not pending:
            took = time.monotonic() - started
            print(f"\nall runs final {took:.1f} s after the fault cleared")
            return took
        if time.monotonic() > deadline:
            rows = "\n".join(f"  {dict(r)}" for r in pending)
            raise AssertionError(
                f"{len(pending)} run(s) not final {within:g} s after the fault cleared:\n{rows}"
            )
        await asyncio.sleep(0.2)


async def statuses(db: Db, api: Api) -> dict[str, str]:
    rows = await db.fetch("SELECT input, status FROM runs WHERE project_id = $1", api.project_id)
    return {r["input"]: r["status"] for r in rows}


async def one_at_a_time_in_order(db: Db, api: Api) -> None:
    """Per agent: a run starts after the previous one (by submission) finished, and the runs
    its worker claims (agent → working) come in submission order, retries included."""
    runs = await db.fetch(
        "SELECT id, agent_id, seq, started_at, finished_at FROM runs WHERE project_id = $1 "
        "AND started_at IS NOT NULL ORDER BY agent_id, seq",
        api.project_id,
    )
    by_agent: dict[Any, list[Any]] = defaultdict(list)
    for run in runs:
        by_agent[run["agent_id"]].append(run)
    for agent_id, rows in by_agent.items():
        for before, after in zip(rows, rows[1:], strict=False):
            where = f"agent {agent_id}: run {after['id']} vs the run before it {before['id']}"
            assert before["finished_at"] is not None, where
            assert after["started_at"] >= before["finished_at"], f"{where}: started before it ended"
    seq_of = {run["id"]: run["seq"] for run in runs}
    claims = await db.fetch(
        "SELECT e.agent_id, e.run_id FROM agent_events e JOIN agents a ON a.id = e.agent_id "
        "WHERE a.project_id = $1 AND e.to_status = 'working' AND e.run_id IS NOT NULL "
        "ORDER BY e.agent_id, e.seq",
        api.project_id,
    )
    claimed: dict[Any, list[int]] = defaultdict(list)
    for row in claims:
        claimed[row["agent_id"]].append(seq_of[row["run_id"]])
    for agent_id, seqs in claimed.items():
        assert seqs == sorted(seqs), f"agent {agent_id} started its runs out of order: {seqs}"


def _cost(input_tokens: int, output_tokens: int) -> Decimal:
    per_token = Decimal(1_000_000)
    return (
        input_tokens * Decimal(str(PRICING["input_per_mtok_usd"]))
        + output_tokens * Decimal(str(PRICING["output_per_mtok_usd"]))
    ) / per_token


async def usage_matches_calls(db: Db, api: Api, stub: LlmStub) -> None:
    """Each run's usage (API and DB) = the calls the stub delivered for its input, each
    recorded once in provider_calls; the project's metrics = the sum over its runs."""
    runs = await db.fetch(
        "SELECT id, input, status, output, input_tokens, output_tokens, cost_usd FROM runs "
        "WHERE project_id = $1 ORDER BY seq",
        api.project_id,
    )
    totals = {"runs": 0, "calls": 0, "input_tokens": 0, "output_tokens": 0, "cost": Decimal(0)}
    for run in runs:
        delivered = stub.delivered(run["input"])
        expected_in = sum(c.usage["prompt_tokens"] for c in delivered)
        expected_out = sum(c.usage["completion_tokens"] for c in delivered)
        recorded = await db.fetch(
            "SELECT attempt, input_tokens, output_tokens FROM provider_calls WHERE run_id = $1 "
            "ORDER BY attempt",
            run["id"],
        )
        where = f"run {run['id']} ({run['input']!r}, {run['status']})"
        assert len(recorded) == len(delivered), (
            f"{where}: the stub delivered {len(delivered)} call(s) "
            f"({[c.usage for c in delivered]}), provider_calls has {len(recorded)} "
            f"({[dict(r) for r in recorded]})"
        )
        assert (run["input_tokens"], run["output_tokens"]) == (expected_in, expected_out), (
            f"{where}: usage {run['input_tokens']}/{run['output_tokens']} != delivered calls "
            f"{expected_in}/{expected_out}"
        )
        assert run["cost_usd"] == _cost(expected_in, expected_out), where
        seen = (await api.run(str(run["id"])))["usage"]
        assert (seen["input_tokens"], seen["output_tokens"]) == (expected_in, expected_out), where
        if run["status"] == "succeeded":
            assert run["output"] == f"ok: {run['input']}", where
        totals["runs"] += 1
        totals["calls"] += len(delivered)
        totals["input_tokens"] += expected_in
        totals["output_tokens"] += expected_out
        totals["cost"] += _cost(expected_in, expected_out)
    metrics = (await api.metrics())["totals"]
    shown = {key: metrics[key] for key in ("runs", "calls", "input_tokens", "output_tokens")}
    assert shown == {k: v for k, v in totals.items() if k != "cost"}, (shown, totals)
    assert Decimal(str(metrics["cost_usd"])) == totals["cost"].quantize(Decimal("0.000001"))


async def no_stray_calls(db: Db, api: Api, stub: LlmStub, prefix: str) -> None:
    """Every call the stub saw under this scenario's prefix belongs to one of its runs."""
    inputs = set((await statuses(db, api)).keys())
    strays = [c.input for c in stub.calls(prefix) if c.input not in inputs]
    assert not strays, f"calls for no run: {strays}"


async def invariants(db: Db, api: Api, stub: LlmStub, prefix: str, *, within: float) -> None:
    await all_final(db, api, within=within)
    await one_at_a_time_in_order(db, api)
    await usage_matches_calls(db, api, stub)
    await no_stray_calls(db, api, stub, prefix)
