"""Which of the routes and processes the bench measures exist in the tree right now."""

from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass, field

P = "/api/v1/projects/{project_id}"
GET_AGENT = ("GET", P + "/agents/{agent_id}")
LIST_AGENTS = ("GET", P + "/agents")
SPAWN = ("POST", P + "/agents")
SUBMIT_RUN = ("POST", P + "/agents/{agent_id}/runs")
GET_RUN = ("GET", P + "/runs/{run_id}")
TOOL_OUTPUTS = ("POST", P + "/runs/{run_id}/tool-outputs")
METRICS = ("GET", P + "/metrics")


@dataclass
class Available:
    routes: set[tuple[str, str]] = field(default_factory=set)
    app_error: str | None = None
    worker: bool = False
    worker_error: str | None = None

    def has(self, route: tuple[str, str]) -> bool:
        return route in self.routes

    def missing(self, *routes: tuple[str, str]) -> list[str]:
        return [f"{m} {p}" for m, p in routes if (m, p) not in self.routes]


def discover() -> Available:
    found = Available()
    try:
        from backend.config import Settings
        from backend.main import create_app

        settings = Settings(
            ENVIRONMENT="production",
            SECRET_KEY="route-discovery-" + "x" * 32,
            DATABASE_URL="postgresql+asyncpg://nobody@/nowhere",
            REDIS_URL="redis://127.0.0.1:1/0",
            LOG_LEVEL="WARNING",
            _env_file=None,
        )
        app = create_app(settings)  # no lifespan: nothing connects
        # The OpenAPI document lists every HTTP operation, however routers are nested.
        for path, operations in app.openapi()["paths"].items():
            for method in operations:
                found.routes.add((method.upper(), path))
    except Exception:  # noqa: BLE001 - a half-written module elsewhere must not kill the bench
        found.app_error = traceback.format_exc(limit=3)
    try:
        module = importlib.import_module("backend.worker")
        # `agentry worker` runs backend.worker.main (WorkerSettings is built lazily from env).
        found.worker = callable(vars(module).get("main"))
        if not found.worker:
            found.worker_error = "backend.worker has no main() (the `agentry worker` entry)"
    except ModuleNotFoundError as exc:
        if exc.name != "backend.worker":
            found.worker_error = f"backend.worker failed to import: {exc}"
        else:
            found.worker_error = "backend/worker.py not implemented"
    except Exception as exc:  # noqa: BLE001
        found.worker_error = f"backend.worker failed to import: {exc!r}"
    return found
