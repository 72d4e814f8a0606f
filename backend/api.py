"""Every domain router under /api/v1."""

from fastapi import APIRouter

from backend.admin import router as admin_router
from backend.agent_types.router import router as agent_types_router
from backend.agents.router import router as agents_router
from backend.auth.router import router as auth_router
from backend.projects.router import router as projects_router
from backend.runs.router import router as runs_router
from backend.usage.router import router as usage_router
from backend.webhooks.router import router as webhooks_router

api_router = APIRouter(prefix="/api/v1")
# The hot routers first: FastAPI tries routes in order and every route tried before the
# match costs CPU (~40 Python calls each). Paths of different routers never overlap, so
# the order changes nothing else; docs list the tags in openapi.py's TAGS order.
api_router.include_router(agents_router, tags=["agents"])
api_router.include_router(runs_router, tags=["runs"])
api_router.include_router(projects_router, tags=["projects"])
api_router.include_router(auth_router, tags=["auth"])
api_router.include_router(agent_types_router, tags=["agent types"])
api_router.include_router(usage_router, tags=["usage"])
api_router.include_router(admin_router)  # tags per route: usage, audit
api_router.include_router(webhooks_router, tags=["webhooks"])
