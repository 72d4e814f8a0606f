"""The API's resources, written once for both clients: each method hands an operation
(see `_core`) to the client's driver, which runs it synchronously or as a coroutine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentry_client import models
from agentry_client._core import (
    Call,
    Op,
    idempotency_headers,
    paginate,
    resolve_agent,
    resolve_agent_type,
    resolve_project,
)

Parse = Callable[[Any], Any] | None


def _one(call: Call, parse: Parse = None) -> Op[Any]:
    body = yield call
    return parse(body) if parse and body is not None else body


def _in_project(project: str, make: Callable[[str], Call], parse: Parse = None) -> Op[Any]:
    pid = yield from resolve_project(project)
    return (yield from _one(make(pid), parse))


def _pages_in_project(project: str, make: Callable[[str], Call], parse: Parse) -> Op[None]:
    pid = yield from resolve_project(project)
    yield from paginate(make(pid), parse)


def _with_agent(
    project: str, agent: str, make: Callable[[str, str], Call], parse: Parse = None
) -> Op[Any]:
    pid = yield from resolve_project(project)
    aid = yield from resolve_agent(pid, agent)
    return (yield from _one(make(pid, aid), parse))


def _query(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class Resource:
    def __init__(self, driver: Any) -> None:
        self._d = driver

    def _run(self, op: Op[Any]) -> Any:
        return self._d.run(op)

    def _iterate(self, op: Op[Any]) -> Any:
        return self._d.iterate(op)


class Auth(Resource):
    def login(self, email: str, password: str) -> Any:
        call = Call("POST", "/auth/login", json={"email": email, "password": password})
        return self._run(_one(call, models.Tokens.from_api))

    def logout(self, refresh_token: str) -> Any:
        return self._run(_one(Call("POST", "/auth/logout", json={"refresh_token": refresh_token})))

    def me(self) -> Any:
        return self._run(_one(Call("GET", "/users/me"), models.User.from_api))


class Projects(Resource):
    def list(self) -> Any:
        return self._iterate(paginate(Call("GET", "/projects"), models.Project.from_api))

    def get(self, project: str) -> Any:
        return self._run(
            _in_project(project, lambda p: Call("GET", f"/projects/{p}"), models.Project.from_api)
        )

    def create(
        self,
        name: str,
        *,
        slug: str | None = None,
        description: str | None = None,
        budget: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        body = _query(name=name, slug=slug, description=description, budget=budget)
        headers = idempotency_headers(idempotency_key) if idempotency_key else {}
        call = Call("POST", "/projects", json=body, headers=headers)
        return self._run(_one(call, models.Project.from_api))

    def update(self, project: str, **fields: Any) -> Any:
        make = lambda p: Call("PATCH", f"/projects/{p}", json=fields)  # noqa: E731
        return self._run(_in_project(project, make, models.Project.from_api))

    def delete(self, project: str) -> Any:
        return self._run(_in_project(project, lambda p: Call("DELETE", f"/projects/{p}")))

    def members(self, project: str) -> Any:
        make = lambda p: Call("GET", f"/projects/{p}/members")  # noqa: E731
        return self._iterate(_pages_in_project(project, make, None))


class AgentTypes(Resource):
    def list(self, *, include_inactive: bool = False) -> Any:
        params = {"include_inactive": "true"} if include_inactive else None
        call = Call("GET", "/agent-types", params=params)
        return self._iterate(paginate(call, models.AgentType.from_api))

    def get(self, agent_type: str) -> Any:
        def op() -> Op[Any]:
            tid = yield from resolve_agent_type(agent_type)
            return (yield from _one(Call("GET", f"/agent-types/{tid}"), models.AgentType.from_api))

        return self._run(op())

    def create(self, **fields: Any) -> Any:
        return self._run(_one(Call("POST", "/agent-types", json=fields), models.AgentType.from_api))

    def update(self, agent_type: str, **fields: Any) -> Any:
        def op() -> Op[Any]:
            tid = yield from resolve_agent_type(agent_type)
            call = Call("PATCH", f"/agent-types/{tid}", json=fields)
            return (yield from _one(call, models.AgentType.from_api))

        return self._run(op())

    def delete(self, agent_type: str) -> Any:
        def op() -> Op[Any]:
            tid = yield from resolve_agent_type(agent_type)
            return (yield from _one(Call("DELETE", f"/agent-types/{tid}")))

        return self._run(op())


class Agents(Resource):
    def list(
        self, project: str, *, status: str | None = None, agent_type: str | None = None
    ) -> Any:
        def op() -> Op[None]:
            tid = (yield from resolve_agent_type(agent_type)) if agent_type else None
            make = lambda p: Call(  # noqa: E731
                "GET", f"/projects/{p}/agents", params=_query(status=status, agent_type_id=tid)
            )
            yield from _pages_in_project(project, make, models.Agent.from_api)

        return self._iterate(op())

    def get(self, project: str, agent: str) -> Any:
        make = lambda p, a: Call("GET", f"/projects/{p}/agents/{a}")  # noqa: E731
        return self._run(_with_agent(project, agent, make, models.Agent.from_api))

    def spawn(
        self,
        project: str,
        *,
        agent_type: str,
        name: str,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> Any:
        """Spawn an agent; always sends an Idempotency-Key (given or generated), the same one
        on every retry, so a retried spawn never creates two agents."""
        headers = idempotency_headers(idempotency_key)

        def op() -> Op[Any]:
            pid = yield from resolve_project(project)
            tid = yield from resolve_agent_type(agent_type)
            body = {"agent_type_id": tid, "name": name, **extra}
            call = Call("POST", f"/projects/{pid}/agents", json=body, headers=headers)
            return (yield from _one(call, models.Agent.from_api))

        return self._run(op())

    def update(self, project: str, agent: str, **fields: Any) -> Any:
        make = lambda p, a: Call("PATCH", f"/projects/{p}/agents/{a}", json=fields)  # noqa: E731
        return self._run(_with_agent(project, agent, make, models.Agent.from_api))

    def pause(self, project: str, agent: str) -> Any:
        make = lambda p, a: Call("POST", f"/projects/{p}/agents/{a}/pause")  # noqa: E731
        return self._run(_with_agent(project, agent, make, models.Agent.from_api))

    def resume(self, project: str, agent: str) -> Any:
        make = lambda p, a: Call("POST", f"/projects/{p}/agents/{a}/resume")  # noqa: E731
        return self._run(_with_agent(project, agent, make, models.Agent.from_api))

    def terminate(self, project: str, agent: str) -> Any:
        """`{success, message}`: the agent is `terminated`, its queued and running runs cancelled."""
        make = lambda p, a: Call("DELETE", f"/projects/{p}/agents/{a}")  # noqa: E731
        return self._run(_with_agent(project, agent, make))

    def metrics(self, project: str, agent: str | None = None) -> Any:
        if agent is None:
            make = lambda p: Call("GET", f"/projects/{p}/agents/metrics")  # noqa: E731
            return self._run(_in_project(project, make, models.AgentMetrics.from_api))
        make2 = lambda p, a: Call("GET", f"/projects/{p}/agents/{a}/metrics")  # noqa: E731
        return self._run(_with_agent(project, agent, make2, models.AgentMetrics.from_api))

    def events(self, project: str, agent: str) -> Any:
        def op() -> Op[None]:
            pid = yield from resolve_project(project)
            aid = yield from resolve_agent(pid, agent)
            yield from paginate(Call("GET", f"/projects/{pid}/agents/{aid}/events"), None)

        return self._iterate(op())


class Runs(Resource):
    def list(self, project: str, *, agent: str | None = None, status: str | None = None) -> Any:
        def op() -> Op[None]:
            pid = yield from resolve_project(project)
            aid = (yield from resolve_agent(pid, agent)) if agent else None
            call = Call("GET", f"/projects/{pid}/runs", params=_query(agent_id=aid, status=status))
            yield from paginate(call, models.Run.from_api)

        return self._iterate(op())

    def get(self, project: str, run_id: str) -> Any:
        make = lambda p: Call("GET", f"/projects/{p}/runs/{run_id}")  # noqa: E731
        return self._run(_in_project(project, make, models.Run.from_api))

    def submit(
        self,
        project: str,
        agent: str,
        input: str,
        *,
        metadata: dict[str, Any] | None = None,
        timeout_seconds: float | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Submit a run (always with an Idempotency-Key, reused on retries). With `wait`
        (seconds, at most 300: the server's bound), answer the finished run if it ends
        within that time, else its state then."""
        headers = idempotency_headers(idempotency_key)
        body = _query(input=input, metadata=metadata, timeout_seconds=timeout_seconds)
        params = {"wait": wait} if wait else None
        timeout = wait + 30 if wait else None

        def op() -> Op[Any]:
            pid = yield from resolve_project(project)
            aid = yield from resolve_agent(pid, agent)
            call = Call(
                "POST",
                f"/projects/{pid}/agents/{aid}/runs",
                params=params,
                json=body,
                headers=headers,
                timeout=timeout,
            )
            return (yield from _one(call, models.Run.from_api))

        return self._run(op())

    def cancel(self, project: str, run_id: str) -> Any:
        make = lambda p: Call("POST", f"/projects/{p}/runs/{run_id}/cancel")  # noqa: E731
        return self._run(_in_project(project, make, models.Run.from_api))

    def steps(self, project: str, run_id: str) -> Any:
        make = lambda p: Call("GET", f"/projects/{p}/runs/{run_id}/steps")  # noqa: E731
        return self._iterate(_pages_in_project(project, make, models.Step.from_api))

    def submit_tool_outputs(
        self,
        project: str,
        run_id: str,
        tool_outputs: list[dict[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> Any:
        headers = idempotency_headers(idempotency_key)
        make = lambda p: Call(  # noqa: E731
            "POST",
            f"/projects/{p}/runs/{run_id}/tool-outputs",
            json={"tool_outputs": tool_outputs},
            headers=headers,
        )
        return self._run(_in_project(project, make, models.Run.from_api))

    def approve(
        self,
        project: str,
        run_id: str,
        decisions: list[dict[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> Any:
        """`decisions`: `[{tool_call_id, approve, message?}]`."""
        headers = idempotency_headers(idempotency_key)
        make = lambda p: Call(  # noqa: E731
            "POST",
            f"/projects/{p}/runs/{run_id}/approvals",
            json={"decisions": decisions},
            headers=headers,
        )
        return self._run(_in_project(project, make, models.Run.from_api))


class Webhooks(Resource):
    def list(self, project: str) -> Any:
        make = lambda p: Call("GET", f"/projects/{p}/webhooks")  # noqa: E731
        return self._iterate(_pages_in_project(project, make, models.Webhook.from_api))

    def get(self, project: str, webhook_id: str) -> Any:
        make = lambda p: Call("GET", f"/projects/{p}/webhooks/{webhook_id}")  # noqa: E731
        return self._run(_in_project(project, make, models.Webhook.from_api))

    def create(
        self,
        project: str,
        *,
        url: str,
        events: list[str],
        description: str | None = None,
        enabled: bool | None = None,
    ) -> Any:
        body = _query(url=url, events=events, description=description, enabled=enabled)
        make = lambda p: Call("POST", f"/projects/{p}/webhooks", json=body)  # noqa: E731
        return self._run(_in_project(project, make, models.Webhook.from_api))

    def update(self, project: str, webhook_id: str, **fields: Any) -> Any:
        make = lambda p: Call("PATCH", f"/projects/{p}/webhooks/{webhook_id}", json=fields)  # noqa: E731
        return self._run(_in_project(project, make, models.Webhook.from_api))

    def delete(self, project: str, webhook_id: str) -> Any:
        make = lambda p: Call("DELETE", f"/projects/{p}/webhooks/{webhook_id}")  # noqa: E731
        return self._run(_in_project(project, make))

    def rotate_secret(self, project: str, webhook_id: str) -> Any:
        make = lambda p: Call("POST", f"/projects/{p}/webhooks/{webhook_id}/rotate-secret")  # noqa: E731
        return self._run(_in_project(project, make))

    def test(self, project: str, webhook_id: str) -> Any:
        make = lambda p: Call("POST", f"/projects/{p}/webhooks/{webhook_id}/test")  # noqa: E731
        return self._run(_in_project(project, make))

    def deliveries(self, project: str, webhook_id: str, *, status: str | None = None) -> Any:
        make = lambda p: Call(  # noqa: E731
            "GET", f"/projects/{p}/webhooks/{webhook_id}/deliveries", params=_query(status=status)
        )
        return self._iterate(_pages_in_project(project, make, models.Delivery.from_api))

    def redeliver(self, project: str, webhook_id: str, delivery_id: str) -> Any:
        path = f"/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"
        make = lambda p: Call("POST", f"/projects/{p}{path}")  # noqa: E731
        return self._run(_in_project(project, make))


class Metrics(Resource):
    def get(
        self,
        project: str,
        *,
        from_: str | None = None,
        to: str | None = None,
        granularity: str | None = None,
    ) -> Any:
        params = _query(granularity=granularity, to=to, **{"from": from_})
        make = lambda p: Call("GET", f"/projects/{p}/metrics", params=params)  # noqa: E731
        return self._run(_in_project(project, make, models.Metrics.from_api))

    def admin(self) -> Any:
        return self._run(_one(Call("GET", "/admin/metrics")))


class ApiKeys(Resource):
    def list(self) -> Any:
        return self._iterate(paginate(Call("GET", "/api-keys"), models.ApiKey.from_api))

    def create(
        self,
        name: str,
        *,
        project: str | None = None,
        scopes: list[str] | None = None,
        expires_in_days: int | None = None,
    ) -> Any:
        """The answer's `key` is shown only here."""

        def op() -> Op[Any]:
            pid = (yield from resolve_project(project)) if project else None
            body = _query(name=name, project_id=pid, scopes=scopes, expires_in_days=expires_in_days)
            return (yield from _one(Call("POST", "/api-keys", json=body), models.ApiKey.from_api))

        return self._run(op())

    def delete(self, key_id: str) -> Any:
        return self._run(_one(Call("DELETE", f"/api-keys/{key_id}")))
