"""Garbage on every HTTP route of the app: always a 4xx with the envelope, never a 500.

Routes come from app.routes (flattened), so routes added later are covered without
editing this file. A superuser calls, on a real project, so authentication and
authorization pass and the path, query and body validation is what gets exercised.
Rate limiting is switched off by configuration for this app.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from backend.core.db import create_sessionmaker
from backend.main import create_app
from backend.projects.models import Role
from tests.conftest import make_settings
from tests.support.apps import cheap_password_hashing, running_app
from tests.support.auth import Auth

HUGE = "x" * (1024 * 1024 + 1)
MALFORMED_IDS = ["not-a-uuid", "'; DROP TABLE users; --", "x" * 5000]
PAGING_GARBAGE = [
    {"page": "-1"},
    {"page": "0"},
    {"page": "abc"},
    {"page": "1e309"},
    {"page": "99999999999999999999999"},
    {"limit": "1000"},
    {"limit": "0"},
    {"limit": "ten"},
]
QUERY_GARBAGE = ["abc", "-1", "1e309", "nul\x00", "x" * 10_000]
VALUE_GARBAGE: list[Any] = [
    None,
    "",
    True,
    10**30,
    [1, "two"],
    {"$where": "1"},
    "nul\x00-garbage-value",
    "NaN",
    "2024-13-45T99:99:99",
]
NESTED_GARBAGE: list[Any] = [None, "nul\x00", "NaN", 10**30, [1]]
RAW_NUMBERS = ["NaN", "1e999"]  # not JSON, but Python's parser takes them
CONCURRENCY = 4


@dataclass
class Operation:
    method: str
    path: str
    spec: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _operations() -> list[Operation]:
    app = create_app(make_settings("postgresql+asyncpg://unused/unused", "redis://unused:1/0"))
    paths = app.openapi()["paths"]
    ops = []
    for context in iter_route_contexts(app.routes):
        if not isinstance(context.original_route, APIRoute):
            continue  # docs pages, websockets
        for method in sorted(context.methods or ()):
            if method != "HEAD":
                spec = paths.get(context.path_format, {}).get(method.lower(), {})
                ops.append(Operation(method, context.path_format, spec))
    return ops


OPERATIONS = _operations()


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _cheap_argon2() -> Iterator[None]:
    # Hundreds of valid-looking bodies reach the password hasher.
    with cheap_password_hashing():
        yield


@pytest.fixture(scope="module")
async def garbage_client(settings) -> AsyncIterator[httpx.AsyncClient]:
    config = make_settings(settings.DATABASE_URL, settings.REDIS_URL, RATE_LIMIT_ENABLED=False)
    async with running_app(config) as (_, client):
        yield client


@dataclass
class World:
    headers: dict[str, str]
    ids: dict[str, str]
    components: dict


@pytest.fixture
async def world(engine, settings, garbage_client) -> AsyncIterator[World]:
    async with create_sessionmaker(engine)() as session:
        auth = Auth(session, settings)
        superuser = await auth.user(superuser=True)
        owner = await auth.user()
        project = await auth.project(owner)
        viewer = await auth.member(project, Role.viewer)
        components = (await garbage_client.get("/openapi.json")).json()["components"]
        yield World(
            superuser.headers,
            {"project_id": str(project.id), "user_id": str(viewer.user.id)},
            components,
        )


# --- request helpers ------------------------------------------------------------------


def _path(op: Operation, world: World, **override: str) -> str:
    values = {name: world.ids.get(name, str(uuid.uuid4())) for name in _params(op, "path")}
    values.update(override)
    return op.path.format(**values)


def _params(op: Operation, where: str) -> list[str]:
    return [p["name"] for p in op.spec.get("parameters", []) if p["in"] == where]


async def _send(client: httpx.AsyncClient, op: Operation, url: str, **kwargs) -> httpx.Response:
    # Bounded: a route that hangs on garbage (say, a stream that never ends) is a failure too.
    return await asyncio.wait_for(client.request(op.method, url, **kwargs), timeout=15)


def _check(r: httpx.Response, what: str, *, must_fail: bool) -> None:
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if must_fail:
        assert 400 <= r.status_code < 500, f"{what}: accepted with {r.status_code}"
    if r.status_code >= 400:
        assert r.headers.get("content-type", "").startswith("application/json"), what
        error = r.json()["error"]
        assert error["code"], what
        assert error["message"], what
        assert error["request_id"] == r.headers["x-request-id"], what


# --- schema-driven bodies -------------------------------------------------------------


def _resolve(schema: dict, components: dict) -> dict:
    while "$ref" in schema:
        schema = components["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _sample(schema: dict, components: dict, name: str = "") -> Any:
    """A plausible value for a JSON schema (valid where the schema is simple)."""
    schema = _resolve(schema, components)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"]
            return _sample(options[0], components, name) if options else None
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {
            prop: _sample(sub, components, prop)
            for prop, sub in schema.get("properties", {}).items()
            if prop in schema.get("required", [])
        }
    if kind == "array":
        return [_sample(schema.get("items", {}), components)] * schema.get("minItems", 0)
    if kind == "integer":
        return max(schema.get("minimum", 1), 1)
    if kind == "number":
        return 1
    if kind == "boolean":
        return False
    fmt = schema.get("format", "")
    if fmt == "email" or name == "email":
        return f"garbage-{uuid.uuid4().hex[:8]}@example.com"
    if fmt == "uuid":
        return str(uuid.uuid4())
    return "garbage-value"[: schema.get("maxLength", 13)]


def _body_schema(op: Operation, components: dict) -> tuple[str | None, dict]:
    content = op.spec.get("requestBody", {}).get("content", {})
    for media in ("application/json", "application/x-www-form-urlencoded", "multipart/form-data"):
        if media in content:
            return media, _resolve(content[media].get("schema", {}), components)
    return None, {}


def _base_body(schema: dict, components: dict) -> dict:
    examples = schema.get("examples") or []
    base = dict(examples[0]) if examples and isinstance(examples[0], dict) else {}
    sampled = _sample(schema, components)
    return {**(sampled if isinstance(sampled, dict) else {}), **base}


def _string_fields(schema: dict, components: dict) -> list[str]:
    names = []
    for prop, sub in schema.get("properties", {}).items():
        sub = _resolve(sub, components)
        options = sub.get("anyOf", [sub])
        if any(_resolve(o, components).get("type") == "string" for o in options):
            names.append(prop)
    return names


# --- the test -------------------------------------------------------------------------


@dataclass
class Probe:
    what: str
    url: str
    kwargs: dict[str, Any]
    must_fail: bool
    extra_forbidden: bool = False  # the answer must name an unknown-field error


@pytest.mark.parametrize("op", OPERATIONS, ids=str)
async def test_garbage_never_causes_a_500(garbage_client, world, op):
    probes = [*_path_probes(op, world), *_query_probes(op, world), *_header_probes(op, world)]
    media, schema = _body_schema(op, world.components)
    if media is not None:
        probes += _body_probes(op, world, media, schema)
    # The request without garbage still answers something sane.
    probes.append(Probe(f"{op} baseline", _path(op, world), {}, must_fail=False))
    gate = asyncio.Semaphore(CONCURRENCY)

    async def run(probe: Probe) -> None:
        async with gate:
            headers = {**world.headers, **probe.kwargs.pop("headers", {})}
            r = await _send(garbage_client, op, probe.url, headers=headers, **probe.kwargs)
        _check(r, probe.what, must_fail=probe.must_fail)
        if probe.extra_forbidden:
            details = r.json()["error"].get("details", [])
            assert any(d["type"] == "extra_forbidden" for d in details), probe.what

    await asyncio.gather(*(run(p) for p in probes))


def _path_probes(op: Operation, world: World) -> list[Probe]:
    return [
        Probe(f"{op} path {name}={bad[:20]}", _path(op, world, **{name: bad}), {}, True)
        for name in _params(op, "path")
        for bad in MALFORMED_IDS
    ]


def _query_probes(op: Operation, world: World) -> list[Probe]:
    url, declared = _path(op, world), _params(op, "query")
    paged = {"page", "limit"} <= set(declared)
    paging = PAGING_GARBAGE if paged else [{"page": "-1", "limit": "1000", "zz": "x"}]
    probes = [Probe(f"{op} query {p}", url, {"params": p}, must_fail=paged) for p in paging]
    probes += [
        Probe(f"{op} query {name}={bad[:20]!r}", url, {"params": {name: bad}}, False)
        for name in declared
        for bad in QUERY_GARBAGE
    ]
    return probes


def _header_probes(op: Operation, world: World) -> list[Probe]:
    return [
        Probe(f"{op} header {name}={bad[:10]!r}", _path(op, world), {"headers": {name: bad}}, False)
        for name in _params(op, "header")
        for bad in ("x" * 5000, "")
    ]


def _raw(what: str, url: str, content: bytes, ctype: str, must_fail: bool) -> Probe:
    return Probe(what, url, {"content": content, "headers": {"content-type": ctype}}, must_fail)


def _body_probes(op: Operation, world: World, media: str, schema: dict) -> list[Probe]:
    url = _path(op, world)
    required = op.spec.get("requestBody", {}).get("required", False)
    raw_bodies = [
        (b'{"broken": ', "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"<xml>nope</xml>", "application/xml"),
        (b'{"a": 1}', "text/plain"),
        (json.dumps(HUGE).encode(), "application/json"),
    ]
    if required:
        raw_bodies += [(v.encode(), "application/json") for v in ("[]", "null", "1", '"x"', "true")]
    probes = [
        _raw(f"{op} body {content[:20]!r} as {ctype}", url, content, ctype, required)
        for content, ctype in raw_bodies
    ]
    if media != "application/json":
        return probes + [
            Probe(f"{op} form {name}=<1 MB>", url, {"data": {name: HUGE}}, False)
            for name in schema.get("properties", {})
        ]
    base = _base_body(schema, world.components)
    probes.append(
        Probe(f"{op} unknown field", url, {"json": {**base, "zz_unknown": 1}}, True, True)
    )
    probes += [
        Probe(f"{op} {name}=<1 MB string>", url, {"json": {**base, name: HUGE}}, True)
        for name in _string_fields(schema, world.components)
    ]
    for name, sub in schema.get("properties", {}).items():
        probes += _field_probes(op, url, base, name)
        nested = _resolve(_first_object(sub, world.components), world.components)
        inner_base = _sample(nested, world.components) if nested else {}
        probes += [
            Probe(
                f"{op} {name}.{inner}={str(bad)[:20]!r}",
                url,
                {"json": {**base, name: {**inner_base, inner: bad}}},
                False,
            )
            for inner in nested.get("properties", {})
            for bad in NESTED_GARBAGE
        ]
    return probes


def _first_object(schema: dict, components: dict) -> dict:
    schema = _resolve(schema, components)
    for option in schema.get("anyOf", [schema]):
        option = _resolve(option, components)
        if option.get("type") == "object" or "properties" in option:
            return option
    return {}


def _field_probes(op: Operation, url: str, base: dict, name: str) -> list[Probe]:
    probes = [
        Probe(f"{op} {name}={str(bad)[:20]!r}", url, {"json": {**base, name: bad}}, False)
        for bad in VALUE_GARBAGE
    ]
    rest = {k: v for k, v in base.items() if k != name}
    prefix = json.dumps(rest)[:-1] + (", " if rest else "")
    for token in RAW_NUMBERS:
        content = f'{prefix}"{name}": {token}}}'.encode()
        probes.append(_raw(f"{op} {name}={token}", url, content, "application/json", False))
    return probes
