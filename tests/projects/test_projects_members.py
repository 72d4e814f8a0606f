"""Projects (tenants) and their members: slugs, visibility, roles, the single owner."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from backend.projects.models import Project, ProjectMember, Role

API = "/api/v1"


async def create_project(client, actor, **body) -> dict:
    r = await client.post(
        f"{API}/projects", json={"name": "My Proj", **body}, headers=actor.headers
    )
    assert r.status_code == 201, r.text
    return r.json()


async def test_create_project_makes_the_caller_owner(client, auth, db):
    owner = await auth.user()
    project = await create_project(
        client,
        owner,
        name="Support Bots",
        description="d",
        budget={"monthly_cost_limit_usd": "50.5", "monthly_token_limit": 1000},
    )
    assert set(project) == {
        "id",
        "name",
        "slug",
        "description",
        "owner_id",
        "budget",
        "created_at",
        "updated_at",
        "role",
    }
    assert project["slug"] == "support-bots"
    assert project["owner_id"] == str(owner.user.id)
    assert project["role"] == "owner"
    assert project["budget"] == {"monthly_cost_limit_usd": 50.5, "monthly_token_limit": 1000}
    member = await db.get(ProjectMember, (uuid.UUID(project["id"]), owner.user.id))
    assert member.role == Role.owner


async def test_slug_is_derived_and_unique(client, auth):
    owner = await auth.user()
    assert (await create_project(client, owner, name="  Ünïcode & Co!  "))["slug"] == "unicode-co"
    assert (await create_project(client, owner, name="!!!"))["slug"] == "project"
    assert (await create_project(client, owner, name="x", slug="custom-1"))["slug"] == "custom-1"
    other = await auth.user()
    r = await client.post(f"{API}/projects", json={"name": "Unicode Co"}, headers=other.headers)
    assert r.status_code == 409, r.text
    assert r.json()["error"] == {
        "code": "conflict",
        "message": r.json()["error"]["message"],
        "field": "slug",
        "request_id": r.headers["x-request-id"],
    }
    r = await client.post(
        f"{API}/projects", json={"name": "x", "slug": "Not A Slug"}, headers=owner.headers
    )
    assert r.status_code == 422


async def test_deleted_project_frees_its_slug_and_leaves_listings(client, auth):
    owner = await auth.user()
    project = await create_project(client, owner, name="Gone")
    r = await client.delete(f"{API}/projects/{project['id']}", headers=owner.headers)
    assert r.status_code == 204
    listing = await client.get(f"{API}/projects", headers=owner.headers)
    assert listing.json()["data"] == []
    assert (
        await client.get(f"{API}/projects/{project['id']}", headers=owner.headers)
    ).status_code == 404
    superuser = await auth.user(superuser=True)
    listing = await client.get(f"{API}/projects", headers=superuser.headers)
    assert listing.json()["pagination"]["total"] == 0
    again = await create_project(client, owner, name="Gone")
    assert again["slug"] == "gone"
    assert again["id"] != project["id"]


async def test_list_shows_member_projects_only_and_superusers_see_all(client, auth):
    alice, bob = await auth.user(), await auth.user()
    a1 = await auth.project(alice)
    a2 = await auth.project(alice)
    b1 = await auth.project(bob)
    db_add = auth.db
    db_add.add(ProjectMember(project_id=b1.id, user_id=alice.user.id, role=Role.viewer))
    await db_add.commit()

    r = await client.get(f"{API}/projects", headers=alice.headers)
    roles = {p["id"]: p["role"] for p in r.json()["data"]}
    assert roles == {str(a1.id): "owner", str(a2.id): "owner", str(b1.id): "viewer"}
    r = await client.get(f"{API}/projects", headers=bob.headers)
    assert [p["id"] for p in r.json()["data"]] == [str(b1.id)]
    outsider = await auth.user()
    r = await client.get(f"{API}/projects", headers=outsider.headers)
    assert r.json()["data"] == []
    assert r.json()["pagination"]["total"] == 0

    superuser = await auth.user(superuser=True)
    r = await client.get(f"{API}/projects", headers=superuser.headers)
    assert {p["id"] for p in r.json()["data"]} == {str(a1.id), str(a2.id), str(b1.id)}
    assert all(p["role"] is None for p in r.json()["data"])
    r = await client.get(f"{API}/projects", params={"limit": 2}, headers=superuser.headers)
    assert len(r.json()["data"]) == 2
    assert r.json()["pagination"]["has_next"] is True
    # Newest first.
    r = await client.get(f"{API}/projects", headers=alice.headers)
    assert [p["id"] for p in r.json()["data"]][-1] == str(a1.id)


async def test_update_project(client, auth):
    owner = await auth.user()
    project = await create_project(client, owner, budget={"monthly_token_limit": 5})
    url = f"{API}/projects/{project['id']}"
    r = await client.patch(
        url, json={"name": "Renamed", "description": "new"}, headers=owner.headers
    )
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["description"]) == ("Renamed", "new")
    assert r.json()["slug"] == project["slug"]  # slugs are stable
    assert r.json()["budget"] == {"monthly_cost_limit_usd": None, "monthly_token_limit": 5}
    r = await client.patch(url, json={"budget": None}, headers=owner.headers)
    assert r.json()["budget"] is None
    r = await client.patch(url, json={"name": None}, headers=owner.headers)
    assert r.status_code == 422
    r = await client.patch(url, json={"slug": "new-slug"}, headers=owner.headers)
    assert r.status_code == 422


async def test_api_key_cannot_create_projects(client, auth):
    owner = await auth.user()
    key = await auth.api_key(owner)
    r = await client.post(f"{API}/projects", json={"name": "By key"}, headers=key.headers)
    assert r.status_code == 403


async def test_idempotent_project_creation(client, auth, db):
    owner = await auth.user()
    headers = {**owner.headers, "Idempotency-Key": "abc-1"}
    first = await client.post(f"{API}/projects", json={"name": "Idem"}, headers=headers)
    second = await client.post(f"{API}/projects", json={"name": "Idem"}, headers=headers)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] == second.json()["id"]
    r = await client.post(f"{API}/projects", json={"name": "Other"}, headers=headers)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "conflict"
    assert len((await db.scalars(select(Project))).all()) == 1


# --- members --------------------------------------------------------------------------


async def add(client, actor, project_id, email, role):
    return await client.post(
        f"{API}/projects/{project_id}/members",
        json={"email": email, "role": role},
        headers=actor.headers,
    )


async def test_add_list_update_remove_member(client, auth):
    owner = await auth.user()
    project = await auth.project(owner)
    newcomer = await auth.user(email="new@example.com")
    r = await add(client, owner, project.id, "NEW@example.com", "member")
    assert r.status_code == 201, r.text
    assert set(r.json()) == {"user_id", "email", "role", "created_at"}
    assert (r.json()["user_id"], r.json()["role"]) == (str(newcomer.user.id), "member")

    r = await client.get(f"{API}/projects/{project.id}/members", headers=newcomer.headers)
    assert r.status_code == 200
    assert {m["email"]: m["role"] for m in r.json()["data"]} == {
        owner.user.email: "owner",
        "new@example.com": "member",
    }
    # The newcomer now sees the project, with their role.
    r = await client.get(f"{API}/projects/{project.id}", headers=newcomer.headers)
    assert r.json()["role"] == "member"

    url = f"{API}/projects/{project.id}/members/{newcomer.user.id}"
    r = await client.patch(url, json={"role": "viewer"}, headers=owner.headers)
    assert r.status_code == 200
    assert r.json()["role"] == "viewer"
    r = await client.delete(url, headers=owner.headers)
    assert r.status_code == 204
    r = await client.get(f"{API}/projects/{project.id}", headers=newcomer.headers)
    assert r.status_code == 404
    assert (await client.delete(url, headers=owner.headers)).status_code == 404


async def test_adding_unknown_email_is_404_and_duplicates_409(client, auth):
    owner = await auth.user()
    project = await auth.project(owner)
    r = await add(client, owner, project.id, "nobody@example.com", "viewer")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = await add(client, owner, project.id, owner.user.email, "viewer")
    assert r.status_code == 409


async def test_owner_cannot_be_removed_or_changed(client, auth):
    owner = await auth.user()
    project = await auth.project(owner)
    admin = await auth.member(project, Role.admin)
    superuser = await auth.user(superuser=True)
    url = f"{API}/projects/{project.id}/members/{owner.user.id}"
    for actor in (owner, admin, superuser):
        r = await client.delete(url, headers=actor.headers)
        assert r.status_code == 409, r.text
        r = await client.patch(url, json={"role": "viewer"}, headers=actor.headers)
        assert r.status_code == 409
    # Ownership cannot be granted through membership either (exactly one owner).
    viewer = await auth.member(project, Role.viewer)
    r = await client.patch(
        f"{API}/projects/{project.id}/members/{viewer.user.id}",
        json={"role": "owner"},
        headers=owner.headers,
    )
    assert r.status_code == 409
    other = await auth.user()
    assert (await add(client, owner, project.id, other.user.email, "owner")).status_code == 409


async def test_admin_manages_members_and_viewers_but_not_admins(client, auth):
    owner = await auth.user()
    project = await auth.project(owner)
    admin = await auth.member(project, Role.admin)
    other_admin = await auth.member(project, Role.admin)
    viewer = await auth.member(project, Role.viewer)
    a, b = await auth.user(), await auth.user()

    assert (await add(client, admin, project.id, a.user.email, "member")).status_code == 201
    r = await add(client, admin, project.id, b.user.email, "admin")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    members = f"{API}/projects/{project.id}/members"
    r = await client.patch(
        f"{members}/{viewer.user.id}", json={"role": "member"}, headers=admin.headers
    )
    assert r.status_code == 200
    r = await client.patch(
        f"{members}/{viewer.user.id}", json={"role": "admin"}, headers=admin.headers
    )
    assert r.status_code == 403
    r = await client.patch(
        f"{members}/{other_admin.user.id}", json={"role": "viewer"}, headers=admin.headers
    )
    assert r.status_code == 403
    r = await client.delete(f"{members}/{other_admin.user.id}", headers=admin.headers)
    assert r.status_code == 403
    # The owner can.
    assert (await add(client, owner, project.id, b.user.email, "admin")).status_code == 201
    r = await client.patch(
        f"{members}/{other_admin.user.id}", json={"role": "viewer"}, headers=owner.headers
    )
    assert r.status_code == 200
    r = await client.delete(f"{members}/{b.user.id}", headers=owner.headers)
    assert r.status_code == 204


async def test_members_and_viewers_cannot_manage_members(client, auth):
    owner = await auth.user()
    project = await auth.project(owner)
    target = await auth.member(project, Role.viewer)
    someone = await auth.user()
    for role in (Role.member, Role.viewer):
        actor = await auth.member(project, role)
        r = await add(client, actor, project.id, someone.user.email, "viewer")
        assert r.status_code == 403
        r = await client.delete(
            f"{API}/projects/{project.id}/members/{target.user.id}", headers=actor.headers
        )
        assert r.status_code == 403


async def test_member_of_another_project_is_404(client, auth):
    owner = await auth.user()
    project, other_project = await auth.project(owner), await auth.project(owner)
    stranger = await auth.member(other_project, Role.viewer)
    url = f"{API}/projects/{project.id}/members/{stranger.user.id}"
    assert (
        await client.patch(url, json={"role": "member"}, headers=owner.headers)
    ).status_code == 404
    assert (await client.delete(url, headers=owner.headers)).status_code == 404


async def test_unknown_project_is_404_for_everyone(client, auth):
    superuser = await auth.user(superuser=True)
    r = await client.get(f"{API}/projects/{uuid.uuid4()}", headers=superuser.headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
