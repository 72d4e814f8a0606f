"""/openapi.json: every operation documented (id, summary, errors, security, examples)."""

from __future__ import annotations

import pytest

OPS_PATHS = {"/health", "/ready", "/metrics"}


@pytest.fixture(scope="module")
async def spec(app) -> dict:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield path, method, op


async def test_operation_ids_are_present_and_unique(spec):
    ids = [op.get("operationId") for _, _, op in operations(spec)]
    assert all(ids), [f"{m} {p}" for p, m, op in operations(spec) if not op.get("operationId")]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates


async def test_every_operation_has_a_summary(spec):
    missing = [f"{m} {p}" for p, m, op in operations(spec) if not op.get("summary")]
    assert not missing


async def test_security_schemes_bearer_and_api_key(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == "/api/v1/auth/token"
    assert schemes["APIKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}


def _is_authenticated(op: dict) -> bool:
    return bool(op.get("security"))


async def test_api_operations_document_their_errors_with_the_envelope(spec):
    problems = []
    for path, method, op in operations(spec):
        if path in OPS_PATHS:
            continue
        codes = set(op["responses"])
        takes_input = bool(op.get("parameters") or op.get("requestBody"))
        wanted = {"429"}
        if _is_authenticated(op):
            wanted |= {"401", "403"}
        if takes_input:
            wanted.add("422")
        if "{" in path and _is_authenticated(op):
            wanted.add("404")
        if not wanted <= codes:
            problems.append(f"{method.upper()} {path}: missing {sorted(wanted - codes)}")
        for code in codes - {"200", "201", "202", "204"}:
            schema = op["responses"][code].get("content", {}).get("application/json", {})
            if code.startswith(("4", "5")) and code != "503":
                ref = schema.get("schema", {}).get("$ref", "")
                if not ref.endswith("/ErrorResponse") and code != "422":
                    problems.append(f"{method.upper()} {path}: {code} is not the error envelope")
    assert not problems, "\n".join(problems)


async def test_every_api_operation_requires_credentials_except_auth(spec):
    anonymous = {
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/token",
        "/api/v1/auth/refresh",
        "/api/v1/auth/logout",
    }
    unsecured = [
        f"{m} {p}"
        for p, m, op in operations(spec)
        if p.startswith("/api/") and p not in anonymous and not _is_authenticated(op)
    ]
    assert not unsecured
    for path, _, op in operations(spec):
        if _is_authenticated(op):
            names = {name for requirement in op["security"] for name in requirement}
            assert names == {"OAuth2PasswordBearer", "APIKeyHeader"}, path


async def test_request_bodies_carry_examples_where_given(spec):
    schemas = spec["components"]["schemas"]
    for name in ("RegisterIn", "LoginIn", "ApiKeyCreate", "ProjectCreate"):
        assert schemas[name].get("examples"), name


async def test_422_is_documented_as_the_envelope(spec):
    op = spec["paths"]["/api/v1/projects"]["post"]
    ref = op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ErrorResponse")
    assert "HTTPValidationError" not in str(op["responses"])


async def test_docs_page_is_served(client):
    r = await client.get("/docs")
    assert r.status_code == 200
    assert "swagger" in r.text.lower()
