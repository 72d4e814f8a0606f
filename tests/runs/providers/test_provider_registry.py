import json
from types import SimpleNamespace

import httpx
import pytest
import respx
from pydantic import SecretStr

from backend.runs.providers import (
    AnthropicProvider,
    CompletionRequest,
    FakeProvider,
    Message,
    OpenAIProvider,
    PermanentProviderError,
    TransientProviderError,
    get_provider,
)

ANTHROPIC_URL = "http://anthropic.test"  # the `anthropic_api` fixture mocks this host


def settings(**overrides: object) -> SimpleNamespace:
    values: dict[str, object] = {
        "ANTHROPIC_API_KEY": SecretStr("sk-ant-registry-1"),
        "OPENAI_API_KEY": SecretStr("sk-openai-registry-1"),
        "ANTHROPIC_BASE_URL": ANTHROPIC_URL,
        "OPENAI_BASE_URL": None,
    }
    return SimpleNamespace(**{**values, **overrides})


async def ignore(_: str) -> None:
    return None


@pytest.mark.parametrize(
    ("name", "cls"),
    [("fake", FakeProvider), ("anthropic", AnthropicProvider), ("openai", OpenAIProvider)],
)
def test_returns_one_cached_provider_per_name(name: str, cls: type) -> None:
    first = get_provider(name, settings())

    assert isinstance(first, cls)
    assert first.name == name
    assert get_provider(name, settings()) is first


def test_new_credentials_get_a_new_provider() -> None:
    first = get_provider("openai", settings())

    rotated = get_provider("openai", settings(OPENAI_API_KEY=SecretStr("sk-openai-registry-2")))

    assert rotated is not first


def test_unknown_name_is_a_permanent_error() -> None:
    with pytest.raises(PermanentProviderError) as caught:
        get_provider("gemini", settings())

    assert caught.value.code == "unknown_provider"


@pytest.mark.parametrize("key", [None, SecretStr("")])
async def test_unset_key_fails_when_called_not_when_looked_up(key: SecretStr | None) -> None:
    provider = get_provider("openai", settings(OPENAI_API_KEY=key))
    request = CompletionRequest(model="m", system_prompt="", messages=[Message("user", "hi")])

    with pytest.raises(PermanentProviderError) as caught:
        await provider.complete(request, ignore)

    assert caught.value.code == "not_configured"


async def test_provider_uses_the_settings_key_and_base_url(anthropic_api: respx.Router) -> None:
    route = anthropic_api.post("/v1/messages").mock(return_value=httpx.Response(500))
    provider = get_provider("anthropic", settings(ANTHROPIC_API_KEY=SecretStr("sk-ant-registry-3")))
    request = CompletionRequest(model="m", system_prompt="", messages=[Message("user", "hi")])

    with pytest.raises(TransientProviderError, match="500"):
        await provider.complete(request, ignore)

    assert route.calls.last.request.headers["authorization"] == "Bearer sk-ant-registry-3"
    assert json.loads(route.calls.last.request.content)["model"] == "m"
