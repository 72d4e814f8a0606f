"""SECRET_KEY: a weak or missing key is a startup error outside dev mode."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.config import Settings


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for name in ("SECRET_KEY", "ENVIRONMENT", "FIRST_SUPERUSER_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("environment", ["production", "test"])
@pytest.mark.parametrize(
    "key", [None, "", "changeme", "CHANGEME", "secret", "short-but-random-1234"]
)
def test_weak_or_missing_secret_key_is_refused_outside_dev(environment, key):
    values = {"ENVIRONMENT": environment, "_env_file": None}
    if key is not None:
        values["SECRET_KEY"] = key
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(**values)


def test_production_defaults_to_refusing_a_missing_key():
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(_env_file=None)


def test_default_first_superuser_password_is_refused_outside_dev():
    with pytest.raises(ValidationError, match="FIRST_SUPERUSER_PASSWORD"):
        Settings(
            ENVIRONMENT="production",
            SECRET_KEY="k" * 40,
            FIRST_SUPERUSER_PASSWORD="changeme",
            _env_file=None,
        )


def test_dev_mode_allows_a_default_key():
    assert Settings(ENVIRONMENT="dev", SECRET_KEY="changeme", _env_file=None).ENVIRONMENT == "dev"
    assert Settings(ENVIRONMENT="dev", _env_file=None).SECRET_KEY is None


def test_a_strong_key_is_accepted_and_kept_secret():
    settings = Settings(ENVIRONMENT="production", SECRET_KEY="k" * 40, _env_file=None)
    assert settings.secret_key == "k" * 40
    assert "k" * 40 not in repr(settings)
