"""Every /admin/* route needs a superuser's login: any API key, even a superuser's, gets 403."""

from __future__ import annotations

import pytest

API = "/api/v1"


def admin_paths(app) -> list[str]:
    paths = [path for path in app.openapi()["paths"] if path.startswith(f"{API}/admin/")]
    assert paths, "no /admin routes found"
    return paths


@pytest.mark.parametrize("key_kind", ["all_scopes", "one_project_runs_read"])
async def test_admin_routes_refuse_a_superusers_api_key(app, client, auth, key_kind):
    admin = await auth.user(superuser=True)
    project = await auth.project(admin)
    if key_kind == "all_scopes":
        key = await auth.api_key(admin)
    else:
        key = await auth.api_key(admin, scopes=["runs:read"], project=project)
    for path in admin_paths(app):
        response = await client.get(path, headers=key.headers)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"]["code"] == "forbidden"
        # The login still works on the very same route.
        assert (await client.get(path, headers=admin.headers)).status_code == 200, path
