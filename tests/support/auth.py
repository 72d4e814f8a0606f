"""Users, memberships and credentials for tests, without paying argon2 per user."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from backend.auth.models import ApiKey, User
from backend.auth.schemas import Scope
from backend.config import Settings
from backend.core.security import _hasher, create_access_token, digest, new_api_key
from backend.projects.models import Project, ProjectMember, Role

PASSWORD = "correct-horse-battery"
_HASH = _hasher.hash(PASSWORD)


@dataclass
class Actor:
    user: User
    headers: dict[str, str] = field(default_factory=dict)


class Auth:
    def __init__(self, db: AsyncSession, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def token_for(self, user: User) -> str:
        return create_access_token(
            user_id=user.id,
            token_version=user.token_version,
            secret=self.settings.secret_key,
            algorithm=self.settings.JWT_ALGORITHM,
            minutes=self.settings.ACCESS_TOKEN_EXPIRE_MINUTES,
        )

    async def user(self, *, superuser: bool = False, email: str | None = None) -> Actor:
        user = User(
            email=email or f"u-{uuid.uuid4().hex[:10]}@example.com",
            hashed_password=_HASH,
            full_name="Test User",
            is_superuser=superuser,
        )
        self.db.add(user)
        await self.db.commit()
        return Actor(user, {"Authorization": f"Bearer {self.token_for(user)}"})

    async def project(self, owner: Actor, *, name: str | None = None) -> Project:
        name = name or f"Project {uuid.uuid4().hex[:8]}"
        project = Project(name=name, slug=name.lower().replace(" ", "-"), owner_id=owner.user.id)
        self.db.add(project)
        await self.db.flush()
        self.db.add(ProjectMember(project_id=project.id, user_id=owner.user.id, role=Role.owner))
        await self.db.commit()
        return project

    async def member(self, project: Project, role: Role) -> Actor:
        actor = await self.user()
        self.db.add(ProjectMember(project_id=project.id, user_id=actor.user.id, role=role))
        await self.db.commit()
        return actor

    async def api_key(
        self,
        owner: Actor,
        *,
        scopes: list[str] | None = None,
        project: Project | None = None,
    ) -> Actor:
        raw = new_api_key()
        key = ApiKey(
            user_id=owner.user.id,
            name="test key",
            prefix=raw[:12],
            key_digest=digest(raw),
            project_id=project.id if project else None,
            scopes=scopes if scopes is not None else [s.value for s in Scope],
        )
        self.db.add(key)
        await self.db.commit()
        return Actor(owner.user, {"X-API-Key": raw})
