"""Fixtures of the fault suite: one deployment (own Postgres + Redis, 2 API and 2 worker
processes, the counting LLM stub) for the package's scenarios, stopped after its last one (the
rest of the suite does not share the machine with it); each scenario gets a new project and
finds every process running again (the ones the previous scenario killed are restarted). A
failed scenario prints every process's state and log tail."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.client import Api
from tests.faults.harness import Db, Deployment
from tests.faults.llm_stub import LlmStub


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="package")
def llm() -> Iterator[LlmStub]:
    stub = LlmStub().start()
    yield stub
    stub.stop()


@pytest.fixture(scope="package")
async def deployment(llm: LlmStub) -> AsyncIterator[Deployment]:
    # Not pytest's tmp_path (0700 under a 0700 root): embedded Postgres runs as another user
    # when we are root, and must reach its directory.
    root = Path(tempfile.mkdtemp(prefix="agentry-faults-"))
    deployment = Deployment(root, llm.url)
    try:
        deployment.start()
        await deployment.ensure_running()
        yield deployment
    finally:
        deployment.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Scene:
    """What a scenario works with: the deployment, its own project, the stub, the database."""

    deployment: Deployment
    api: Api
    llm: LlmStub
    db: Db
    prefix: str  # every run input of the scenario starts with it (the stub's calls map to runs)

    def text(self, *parts: object) -> str:
        return "-".join([self.prefix, *(str(p) for p in parts)])


@pytest.fixture
async def scene(
    deployment: Deployment, llm: LlmStub, request: pytest.FixtureRequest
) -> AsyncIterator[Scene]:
    await deployment.ensure_running()
    api = await (await Api.login(deployment)).new_project(request.node.name[:40])
    assert deployment.db is not None
    prefix = request.node.name.removeprefix("test_")
    yield Scene(deployment, api, llm, deployment.db, prefix)
    llm.release(prefix)  # whatever the scenario still held
    if request.node.stash.get(_FAILED, False):
        print(f"\n===== processes after {request.node.name} =====\n{deployment.report()}")
