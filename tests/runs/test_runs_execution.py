"""Runs executed by a real ARQ worker: order, lifecycle interplay, retries, timeouts, cancel."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY
from sqlalchemy import select

from backend.agents.models import AgentEvent
from backend.runs.models import ConversationMessage, ProviderCall
from tests.runs.conftest import World, eventually


def _ended(status: str) -> float:
    """Runs that ended with `status` in this process's run-duration histogram."""
    return REGISTRY.get_sample_value("agentry_run_duration_seconds_count", {"status": status}) or 0


async def test_one_run_end_to_end(world: World, worker) -> None:
    agent = await world.agent(chunks=3)
    ended = _ended("succeeded")
    submitted = await world.submit(agent, "hi there", metadata={"ticket": 7})
    assert submitted["status"] == "queued"
    assert submitted["attempt"] == 0

    run = await world.finished(submitted["id"])

    assert run["status"] == "succeeded"
    assert run["output"] == "echo: hi there"
    assert run["attempt"] == 1
    assert run["error"] is None
    assert run["metadata"] == {"ticket": 7}
    # fake usage: words of system prompt ("be brief") + input, and of the answer
    assert run["usage"]["input_tokens"] == 4
    assert run["usage"]["output_tokens"] == 3
    assert run["usage"]["total_tokens"] == 7
    assert run["started_at"]
    assert run["finished_at"]
    row = await world.agent_row(agent)
    assert row.status == "idle"
    assert row.tasks_completed == 1
    assert row.tokens_used == 7
    messages = (
        await world.db.execute(
            select(ConversationMessage.role, ConversationMessage.content)
            .where(ConversationMessage.agent_id == agent.id)
            .order_by(ConversationMessage.seq)
        )
    ).all()
    assert messages == [("user", "hi there"), ("assistant", "echo: hi there")]
    assert _ended("succeeded") == ended + 1


async def test_five_rapid_runs_start_in_order_one_at_a_time(world: World, worker) -> None:
    agent = await world.agent(latency_ms=150)
    ids = [(await world.submit(agent, f"task {n}"))["id"] for n in range(5)]

    runs = [await world.finished(run_id) for run_id in ids]

    assert [r["status"] for r in runs] == ["succeeded"] * 5
    assert [r["output"] for r in runs] == [f"echo: task {n}" for n in range(5)]
    for earlier, later in zip(runs, runs[1:], strict=False):
        # submission order, and never two at once: each starts after the previous finished
        assert later["started_at"] > earlier["finished_at"]
    history = (
        await world.db.scalars(
            select(AgentEvent.to_status)
            .where(AgentEvent.agent_id == agent.id)
            .order_by(AgentEvent.seq)
        )
    ).all()
    assert history == ["working", "idle"] * 5


async def test_runs_of_different_agents_overlap(world: World, worker) -> None:
    agents = [await world.agent(latency_ms=400) for _ in range(3)]
    ids = [(await world.submit(a))["id"] for a in agents]
    runs = [await world.finished(run_id) for run_id in ids]
    assert max(r["started_at"] for r in runs) < min(r["finished_at"] for r in runs)


async def test_paused_agent_starts_nothing_and_resume_starts_its_runs(
    world: World, cronless_worker
) -> None:
    agent = await world.agent()
    base = f"/api/v1/projects/{world.project.id}/agents/{agent.id}"
    assert (
        await world.client.post(f"{base}/pause", headers=world.owner.headers)
    ).status_code == 200
    ids = [(await world.submit(agent, f"t{n}"))["id"] for n in range(2)]

    await asyncio.sleep(0.5)  # ample time for a worker to (wrongly) start one
    assert [(await world.run(i))["status"] for i in ids] == ["queued", "queued"]
    agent_out = (await world.client.get(base, headers=world.owner.headers)).json()
    assert agent_out["pending_runs"] == 2

    # No sweeper runs in this worker: resume itself must dispatch.
    assert (
        await world.client.post(f"{base}/resume", headers=world.owner.headers)
    ).status_code == 200
    runs = [await world.finished(i) for i in ids]
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    agent_out = (await world.client.get(base, headers=world.owner.headers)).json()
    assert agent_out["pending_runs"] == 0
    assert agent_out["status"] == "idle"


async def test_pause_during_a_run_lets_it_finish_and_holds_the_next(world: World, worker) -> None:
    agent = await world.agent(latency_ms=400)
    base = f"/api/v1/projects/{world.project.id}/agents/{agent.id}"
    first = await world.submit(agent, "one")
    second = await world.submit(agent, "two")
    await eventually(lambda: _status_is(world, first["id"], "running"))
    assert (
        await world.client.post(f"{base}/pause", headers=world.owner.headers)
    ).status_code == 200

    assert (await world.finished(first["id"]))["status"] == "succeeded"
    await asyncio.sleep(0.4)
    assert (await world.run(second["id"]))["status"] == "queued"
    assert (await world.agent_row(agent)).status == "paused"  # the finish left it paused

    await world.client.post(f"{base}/resume", headers=world.owner.headers)
    assert (await world.finished(second["id"]))["status"] == "succeeded"


async def test_terminate_cancels_queued_and_running_runs(world: World, worker) -> None:
    agent = await world.agent(latency_ms=5000)
    ended = _ended("cancelled")
    running = await world.submit(agent, "long")
    queued = await world.submit(agent, "next")
    await eventually(lambda: _status_is(world, running["id"], "running"))

    url = f"/api/v1/projects/{world.project.id}/agents/{agent.id}"
    response = await world.client.delete(url, headers=world.owner.headers)
    assert response.status_code == 200, response.text

    assert (await world.run(running["id"]))["status"] == "cancelled"
    assert (await world.run(queued["id"]))["status"] == "cancelled"
    # the worker stops the provider call promptly (abort), without touching the run again
    await eventually(lambda: _no_active(worker), timeout=3)
    assert (await world.agent_row(agent)).status == "terminated"
    assert (await world.run(running["id"]))["status"] == "cancelled"
    assert _ended("cancelled") == ended + 1  # the queued one never started: no duration


async def test_transient_failures_below_max_retries_succeed_on_the_right_attempt(
    world: World, worker
) -> None:
    agent = await world.agent(await world.agent_type(max_retries=3, config={"fail_times": 2}))
    run = await world.finished((await world.submit(agent))["id"])
    assert run["status"] == "succeeded"
    assert run["attempt"] == 3
    assert run["error"] is None
    assert (await world.agent_row(agent)).status == "idle"
    statuses = (
        await world.db.scalars(
            select(AgentEvent.to_status)
            .where(AgentEvent.agent_id == agent.id)
            .order_by(AgentEvent.seq)
        )
    ).all()
    assert statuses == ["working", "waiting", "working", "waiting", "working", "idle"]


async def test_transient_failures_above_max_retries_fail(world: World, worker) -> None:
    agent = await world.agent(await world.agent_type(max_retries=1, config={"fail_times": 5}))
    run = await world.finished((await world.submit(agent))["id"])
    assert run["status"] == "failed"
    assert run["attempt"] == 2
    assert run["error"]["code"] == "simulated_transient_error"
    row = await world.agent_row(agent)
    assert row.status == "idle"
    assert row.tasks_completed == 0


async def test_permanent_failure_fails_on_the_first_attempt(world: World, worker) -> None:
    agent = await world.agent(await world.agent_type(config={"fail_permanently": True}))
    run = await world.finished((await world.submit(agent))["id"])
    assert run["status"] == "failed"
    assert run["attempt"] == 1
    assert run["error"] == {
        "code": "simulated_permanent_error",
        "message": "fake provider: simulated permanent failure",
    }


async def test_attempt_timeout_is_retried_then_timed_out(world: World, worker) -> None:
    agent = await world.agent(
        await world.agent_type(max_retries=1, timeout_seconds=1, config={"latency_ms": 3000})
    )
    run = await world.finished((await world.submit(agent))["id"], timeout=15)
    assert run["status"] == "timed_out"
    assert run["attempt"] == 2
    assert run["error"]["code"] == "timeout"


async def test_run_timeout_seconds_overrides_the_type(world: World, worker) -> None:
    agent = await world.agent(
        await world.agent_type(max_retries=0, timeout_seconds=60, config={"latency_ms": 3000})
    )
    run = await world.finished((await world.submit(agent, timeout_seconds=1))["id"])
    assert run["status"] == "timed_out"
    assert run["attempt"] == 1


async def test_cancel_a_running_run(world: World, worker) -> None:
    agent = await world.agent(latency_ms=5000)
    run = await world.submit(agent)
    following = await world.submit(agent, "after")
    await eventually(lambda: _status_is(world, run["id"], "running"))

    response = await world.client.post(
        world.run_url(run["id"]) + "/cancel", headers=world.owner.headers
    )
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    await eventually(lambda: _no_active(worker, run["id"]), timeout=3)
    # the agent is free at once and takes its next run
    await eventually(lambda: _status_is(world, following["id"], "running"))
    assert (await world.run(run["id"]))["status"] == "cancelled"


async def test_history_is_sent_to_the_next_run(world: World, worker, monkeypatch) -> None:
    seen: list[list[tuple[str, str]]] = []
    from backend.runs.providers.fake import FakeProvider

    original = FakeProvider.complete

    async def spy(self, request, on_delta):
        seen.append([(m.role, m.content) for m in request.messages])
        return await original(self, request, on_delta)

    monkeypatch.setattr(FakeProvider, "complete", spy)
    agent = await world.agent()
    await world.finished((await world.submit(agent, "first"))["id"])
    await world.finished((await world.submit(agent, "second"))["id"])
    assert seen == [
        [("user", "first")],
        [("user", "first"), ("assistant", "echo: first"), ("user", "second")],
    ]


async def test_failed_attempts_usage_is_counted_once(world: World, worker, monkeypatch) -> None:
    """A failure that reports usage is recorded, with the success, each exactly once."""
    from backend.runs.providers import TransientProviderError, Usage
    from backend.runs.providers.fake import FakeProvider

    original = FakeProvider.complete

    async def partly(self, request, on_delta):
        if request.attempt == 1:
            raise TransientProviderError("overloaded", "busy", usage=Usage(input_tokens=5))
        return await original(self, request, on_delta)

    monkeypatch.setattr(FakeProvider, "complete", partly)
    agent = await world.agent()
    run = await world.finished((await world.submit(agent, "a b"))["id"])
    assert run["status"] == "succeeded"
    calls = (
        await world.db.execute(
            select(ProviderCall.attempt, ProviderCall.succeeded, ProviderCall.input_tokens)
            .where(ProviderCall.run_id == run["id"])
            .order_by(ProviderCall.attempt)
        )
    ).all()
    assert calls == [(1, False, 5), (2, True, 4)]
    assert run["usage"]["input_tokens"] == 9
    row = await world.agent_row(agent)
    assert row.tokens_used == await world.calls_tokens(agent) == run["usage"]["total_tokens"]


async def test_fallback_model_answers_when_the_primary_fails(
    world: World, worker, monkeypatch
) -> None:
    from backend.runs.providers import TransientProviderError
    from backend.runs.providers.fake import FakeProvider

    original = FakeProvider.complete

    async def primary_down(self, request, on_delta):
        if request.model == "fake-primary":
            raise TransientProviderError("server_error", "primary is down")
        return await original(self, request, on_delta)

    monkeypatch.setattr(FakeProvider, "complete", primary_down)
    agent_type = await world.agent_type(model="fake-primary", fallback_models=["fake-backup"])
    agent = await world.agent(agent_type)
    run = await world.finished((await world.submit(agent))["id"])
    assert run["status"] == "succeeded"
    assert run["attempt"] == 1
    assert run["model"] == "fake-backup"


async def _status_is(world: World, run_id: str, status: str) -> bool:
    return (await world.run(run_id))["status"] == status


async def _no_active(worker, run_id: str | None = None) -> bool:
    active = worker.ctx["runs"].active
    return not active if run_id is None else all(str(k) != run_id for k in active)
