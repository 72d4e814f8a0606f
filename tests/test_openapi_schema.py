"""/openapi.json: every operation documented (id, summary, errors, security, examples)."""

from __future__ import annotations

import json

import pytest
from openapi_schema_validator import OAS31Validator

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


PUBLIC = {"health", "ready", "prometheus_metrics", "register", "login", "login_form"}
PUBLIC |= {"refresh_tokens", "logout"}
CREATES_WITH_LOCATION = {"create_project", "create_user", "create_agent_type", "spawn_agent"}


def _resolve(spec: dict, node: dict) -> dict:
    while "$ref" in node:
        node = spec["components"][node["$ref"].split("/")[2]][node["$ref"].split("/")[3]]
    return node


async def test_schema_names_are_unique_across_input_and_output(spec):
    split = [name for name in spec["components"]["schemas"] if name.endswith(("-Input", "-Output"))]
    assert not split


async def test_public_operations_say_security_none_and_others_need_credentials(spec):
    for _, _, op in operations(spec):
        if op["operationId"] in PUBLIC:
            assert op["security"] == [], op["operationId"]
        else:
            assert {n for r in op["security"] for n in r} == {
                "OAuth2PasswordBearer",
                "APIKeyHeader",
            }


async def test_every_operation_documents_the_shared_errors_and_headers(spec):
    for path, _, op in operations(spec):
        responses, name = op["responses"], op["operationId"]
        assert {"500", "503"} <= set(responses), name
        if "requestBody" in op:
            assert {"400", "413", "422"} <= set(responses), name
        for status, response in responses.items():
            headers = set(response.get("headers", {}))
            assert "X-Request-ID" in headers, (name, status)
            if path.startswith("/api/"):
                assert {
                    "X-RateLimit-Limit",
                    "X-RateLimit-Remaining",
                    "X-RateLimit-Reset",
                } <= headers
            if status == "429":
                assert "Retry-After" in headers
            if status in ("201", "202") and name in CREATES_WITH_LOCATION | {"submit_run"}:
                assert "Location" in headers, name


async def test_409_tells_invalid_transition_from_conflict(spec):
    op = spec["paths"]["/api/v1/projects/{project_id}/agents/{agent_id}"]["patch"]
    examples = op["responses"]["409"]["content"]["application/json"]["examples"]
    codes = {e["value"]["error"]["code"] for e in examples.values()}
    assert codes == {"invalid_transition", "conflict"}


async def test_closed_fields_are_enums(spec):
    schemas = spec["components"]["schemas"]

    def prop(model: str, field: str) -> str:
        return json.dumps(schemas[model]["properties"][field])

    assert "#/components/schemas/Role" in prop("ProjectOut", "role")
    assert "#/components/schemas/Role" in prop("MemberOut", "role")
    assert "#/components/schemas/Scope" in prop("ApiKeyOut", "scopes")
    assert "#/components/schemas/ProviderName" in prop("RunOut", "provider")
    assert "#/components/schemas/ErrorCode" in prop("ErrorBody", "code")
    assert schemas["TokenPair"]["properties"]["token_type"].get("const") == "bearer"
    assert "invalid_transition" in schemas["ErrorCode"]["enum"]


async def test_metrics_is_plain_text(spec):
    content = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"text/plain"}


async def test_the_event_stream_has_a_schema_per_event(spec):
    path = "/api/v1/projects/{project_id}/runs/{run_id}/events"
    content = spec["paths"][path]["get"]["responses"]["200"]["content"]
    assert set(content) == {"text/event-stream"}
    events = content["text/event-stream"]["schema"]["oneOf"]
    names = {e["properties"]["event"]["const"] for e in events}
    assert names == {
        "status",
        "delta",
        "usage",
        "tool_call",
        "tool_result",
        "requires_action",
        "end",
    }
    for event in events:
        assert _resolve(spec, event["properties"]["data"]["contentSchema"])["properties"]


async def test_the_websocket_is_described(spec):
    ws = spec["x-websockets"]["/api/v1/projects/{project_id}/agents/{agent_id}/ws"]
    assert [_resolve(spec, m)["title"] for m in ws["publish"]["oneOf"]] == [
        "RunCreate",
        "WsToolOutputs",
        "WsApprovals",
    ]
    assert "run_id" in _resolve(spec, ws["subscribe"])["properties"]


async def test_links_lead_from_each_create_to_the_operations_of_its_id(spec):
    by_id = {op["operationId"]: op for _, _, op in operations(spec)}
    linked = set()
    for _, _, op in operations(spec):
        for response in op["responses"].values():
            for link in response.get("links", {}).values():
                target = by_id[link["operationId"]]
                names = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
                assert set(link.get("parameters", {})) == names, link
                if "requestBody" in link:
                    assert "requestBody" in target, link
                linked.add(link["operationId"])
    with_ids = {op["operationId"] for p, _, op in operations(spec) if "{" in p}
    assert with_ids <= linked, sorted(with_ids - linked)


async def test_servers_and_tag_descriptions(spec):
    assert spec["servers"]
    assert all(tag.get("description") for tag in spec["tags"])


def _examples_of(spec: dict, media: dict) -> list:
    if "example" in media:
        return [media["example"]]
    if "examples" in media:
        return [e["value"] for e in media["examples"].values()]
    return _resolve(spec, media.get("schema", {})).get("examples", [])


async def test_every_request_and_response_has_a_valid_example(spec):
    validator_for = OAS31Validator
    missing, invalid = [], []
    for _, _, op in operations(spec):
        media = [("request", m) for m in op.get("requestBody", {}).get("content", {}).values()]
        media += [(s, m) for s, r in op["responses"].items() for m in r.get("content", {}).values()]
        for where, content in media:
            examples = _examples_of(spec, content)
            if not examples:
                missing.append(f"{op['operationId']} {where}")
            schema = {**content.get("schema", {}), "components": spec["components"]}
            if content.get("schema", {}).get("type") == "string" or "oneOf" in schema:
                continue  # text: an SSE stream or the Prometheus format
            for example in examples:
                errors = list(validator_for(schema).iter_errors(example))
                if errors:
                    invalid.append(f"{op['operationId']} {where}: {errors[0].message}")
    assert not missing, missing
    assert not invalid, invalid
