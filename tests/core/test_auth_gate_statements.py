"""Authentication and the project gate read the caller, the project and the role at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from backend.projects.models import Role


@contextmanager
def statements(app) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append(statement)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_a_project_read_is_one_statement_for_a_token_or_a_key(app, client, auth):
    owner = await auth.user()
    project = await auth.project(owner)
    key = await auth.api_key(owner, project=project)
    path = f"/api/v1/projects/{project.id}"
    assert (await client.get(path, headers=key.headers)).status_code == 200  # last_used_at
    for actor in (owner, key):
        with statements(app) as seen:
            r = await client.get(path, headers=actor.headers)
        assert r.status_code == 200
        assert len(seen) == 1, seen
        assert "project_members" in seen[0]


async def test_the_gate_still_answers_404_and_403_from_that_one_read(app, client, auth):
    owner = await auth.user()
    project = await auth.project(owner)
    viewer, stranger = await auth.member(project, Role.viewer), await auth.user()
    path = f"/api/v1/projects/{project.id}"
    with statements(app) as seen:
        assert (await client.get(path, headers=stranger.headers)).status_code == 404
        assert (
            await client.patch(path, json={"name": "x"}, headers=viewer.headers)
        ).status_code == 403
    assert len(seen) == 2
