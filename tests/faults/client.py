"""The fault suite's HTTP client: a superuser's token, used against any of the API processes.

Setup calls (project, agent type, agents) go to the first API; submits say which API they go to,
and `submit_with_failover` retries a failed submit on the next API with the same
Idempotency-Key, as a careful client does.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tests.faults.harness import SUPERUSER, Deployment

PRICING = {"input_per_mtok_usd": 1.0, "output_per_mtok_usd": 2.0}
V1 = "/api/v1"


@dataclass
class Api:
    deployment: Deployment
    token: str
    project_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _url(self, path: str, api: int | None) -> str:
        if api is None:  # the first live one (a scenario may have killed the first)
            api = next(n for n, proc in enumerate(self.deployment.apis) if proc.alive)
        return f"{self.deployment.api_url(api)}{V1}{path}"

    async def call(
        self, method: str, path: str, *, api: int | None = None, timeout: float = 10, **kwargs: Any
    ) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        async with httpx.AsyncClient(timeout=timeout) as client:
            return await client.request(method, self._url(path, api), headers=headers, **kwargs)

    async def ok(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        r = await self.call(method, path, **kwargs)
        # A read may meet a pooled connection that a Postgres restart closed: 503, try again.
        for _ in range(10):
            if method != "GET" or r.status_code != 503:
                break
            await asyncio.sleep(0.3)
            r = await self.call(method, path, **kwargs)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    # --- setup --------------------------------------------------------------------------------

    @classmethod
    async def login(cls, deployment: Deployment) -> Api:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(
                f"{deployment.api_url(0)}{V1}/auth/login",
                json={"email": SUPERUSER[0], "password": SUPERUSER[1]},
            )
        assert r.status_code == 200, r.text
        return cls(deployment, r.json()["access_token"], "")

    async def new_project(self, name: str) -> Api:
        body = {"name": f"{name}-{uuid.uuid4().hex[:6]}"}
        project = await self.ok("POST", "/projects", 201, json=body)
        return Api(self.deployment, self.token, project["id"])

    async def agent_type(self, *, latency_ms: int, timeout_seconds: int = 10) -> str:
        """An `openai` type served by the stub (its latency in the model name), priced."""
        slug = f"stub-{uuid.uuid4().hex[:8]}"
        body = {
            "name": slug,
            "slug": slug,
            "provider": "openai",
            "model": f"stub-ms-{latency_ms}",
            "system_prompt": "answer briefly",
            "timeout_seconds": timeout_seconds,
            "max_retries": 3,
            "pricing": PRICING,
        }
        return (await self.ok("POST", "/agent-types", 201, json=body))["id"]

    async def agents(self, agent_type_id: str, count: int) -> list[str]:
        path = f"/projects/{self.project_id}/agents"
        return [
            (
                await self.ok(
                    "POST", path, 201, json={"agent_type_id": agent_type_id, "name": f"a{n}"}
                )
            )["id"]
            for n in range(count)
        ]

    # --- runs ---------------------------------------------------------------------------------

    def runs_path(self, agent_id: str) -> str:
        return f"/projects/{self.project_id}/agents/{agent_id}/runs"

    async def submit(self, agent_id: str, text: str, *, api: int | None = None) -> dict[str, Any]:
        return await self.ok("POST", self.runs_path(agent_id), 202, api=api, json={"input": text})

    async def submit_with_failover(
        self,
        agent_id: str,
        text: str,
        key: str,
        *,
        first_api: int,
        tries: list[int] | None = None,
        attempts: int = 20,
    ) -> tuple[dict[str, Any], list[str]]:
        """POST the run with an Idempotency-Key; on a connection error, a 5xx or a 409 (the key
        is still in progress), retry with the same key on the next API. The run, and what each
        failed try met; `tries` gets the API of each try as it starts."""
        failures: list[str] = []
        api = first_api
        for _ in range(attempts):
            if tries is not None:
                tries.append(api)
            try:
                r = await self.call(
                    "POST",
                    self.runs_path(agent_id),
                    api=api,
                    timeout=30,
                    json={"input": text},
                    headers={"Idempotency-Key": key},
                )
            except httpx.TransportError as exc:
                failures.append(f"api{api + 1}: {type(exc).__name__}")
            else:
                if r.status_code == 202:
                    return r.json(), failures
                failures.append(f"api{api + 1}: {r.status_code} {r.text[:200]}")
                if r.status_code < 500 and r.status_code != 409:
                    raise AssertionError(f"submit {key}: {failures}")
            api = (api + 1) % len(self.deployment.apis)
            await asyncio.sleep(0.2)
        raise AssertionError(f"submit {key} never succeeded: {failures}")

    async def run(self, run_id: str, *, api: int | None = None) -> dict[str, Any]:
        return await self.ok("GET", f"/projects/{self.project_id}/runs/{run_id}", 200, api=api)

    async def metrics(self) -> dict[str, Any]:
        return await self.ok("GET", f"/projects/{self.project_id}/metrics", 200)
