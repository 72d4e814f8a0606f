"""What a provider writes is stored whatever it contains: a NUL or a lone surrogate in a model's
answer (which TEXT and JSONB refuse) becomes U+FFFD instead of failing every attempt."""

from __future__ import annotations

import json

import respx
from pydantic import SecretStr

from backend.config import Settings
from backend.worker import run_worker
from tests.runs.conftest import World
from tests.runs.providers.conftest import OPENAI_URL
from tests.runs.providers.test_provider_openai import answer, finish, stream_response


async def test_a_nul_in_the_answer_is_stored_as_a_replacement_character(
    world: World, worker_settings: Settings, openai_api: respx.Router
) -> None:
    # "\\u0000" and a lone surrogate, as JSON sends them.
    body = answer("before").replace('"content": "before"', '"content": "a\\u0000b\\ud800c"')
    openai_api.post("/chat/completions").mock(return_value=stream_response(body + finish()))
    agent_type = await world.agent_type(
        provider="openai",
        model="gpt-test-mini",
        pricing={"input_per_mtok_usd": "1", "output_per_mtok_usd": "2"},
    )
    agent = await world.agent(agent_type)
    settings = worker_settings.model_copy(
        update={"OPENAI_BASE_URL": OPENAI_URL, "OPENAI_API_KEY": SecretStr("sk-test")}
    )
    worker = await run_worker(settings)
    try:
        run = await world.finished((await world.submit(agent, "say it"))["id"], timeout=10)
    finally:
        await worker.close()

    assert run["status"] == "succeeded", json.dumps(run)
    assert run["output"] == "a\ufffdb\ufffdc"
    assert run["attempt"] == 1
    assert run["usage"]["total_tokens"] > 0
