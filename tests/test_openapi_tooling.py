"""/openapi.json as the SPA's tools see it: a valid OpenAPI 3.1 document from which
openapi-python-client generates a typed client without a warning or a dropped model."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from openapi_python_client.strings import ClassName
from openapi_spec_validator import validate

from backend.config import Settings
from backend.main import create_app


@pytest.fixture(scope="module")
def document() -> dict:
    # Building the document needs no database: no lifespan, placeholder URLs.
    settings = Settings(
        ENVIRONMENT="test",
        SECRET_KEY="x" * 40,
        DATABASE_URL="postgresql://unused",
        REDIS_URL="redis://unused",
        LOG_LEVEL="WARNING",  # create_app configures the process's logging
        _env_file=None,  # type: ignore[call-arg]
    )
    return create_app(settings).openapi()


def test_the_document_is_valid_openapi(document) -> None:
    validate(document)  # raises on the first violation


@pytest.fixture(scope="module")
def generated(document, tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("client")
    (tmp / "openapi.json").write_text(json.dumps(document))
    (tmp / "config.json").write_text(json.dumps({"post_hooks": []}))
    cli = Path(sys.executable).with_name("openapi-python-client")
    result = subprocess.run(
        [
            str(cli),
            "generate",
            "--path=openapi.json",
            "--config=config.json",
            "--meta=none",
            "--output-path=client",
            "--fail-on-warning",
        ],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return tmp / "client", output


def test_the_python_client_generates_without_warnings(generated) -> None:
    _, output = generated
    assert "warning" not in output.lower(), output


def test_every_schema_becomes_a_model(document, generated) -> None:
    client, _ = generated
    init = ast.parse((client / "models" / "__init__.py").read_text())
    models = {
        alias.name
        for node in ast.walk(init)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    expected = {str(ClassName(name, "")) for name in document["components"]["schemas"]}
    assert expected <= models, sorted(expected - models)


@pytest.mark.parametrize(
    ("module", "model"),
    [
        ("projects/create_project.py", "ProjectOut"),
        ("projects/list_projects.py", "PageProjectOut"),
        ("projects/get_project.py", "ProjectOut"),
        ("projects/update_project.py", "ProjectOut"),
        ("runs/submit_run.py", "RunOut"),
        ("auth/login.py", "TokenPair"),
    ],
)
def test_operations_are_typed_with_their_models(generated, module, model) -> None:
    client, _ = generated
    source = (client / "api" / module).read_text()
    sync = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.name == "sync"
    )
    assert model in ast.unparse(sync.returns), ast.unparse(sync.returns)
