"""docker-compose.yml (no Docker engine here to run it): the long-running services come back
by themselves, and their healthchecks call commands and routes that exist."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.main import get_command

from backend import cli
from backend.main import create_app
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]


def test_api_and_worker_restart_and_have_real_healthchecks() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    commands = get_command(cli.app).commands  # type: ignore[attr-defined]
    paths = create_app(make_settings("", "")).openapi()["paths"]

    for name in ("api", "worker"):
        assert services[name]["restart"] == "unless-stopped", name
    assert services["worker"]["command"] == ["agentry", "worker"]
    assert services["api"]["command"] == ["agentry", "api"]
    assert {"worker", "api"} <= set(commands)
    assert services["api"]["environment"]["HOST"] == "0.0.0.0"
    assert "FORWARDED_ALLOW_IPS" in services["api"]["environment"]

    worker_check = services["worker"]["healthcheck"]["test"]
    assert worker_check[1:3] == ["agentry", "worker-health"]
    assert "worker-health" in commands
    assert services["worker"]["environment"]["WORKER_HEALTH_FILE"]

    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/health" in api_check
    assert "/health" in paths
