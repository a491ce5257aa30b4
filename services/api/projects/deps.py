"""Resolve the project a request is about, and the caller's role in it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path

from services.api.auth.deps import CurrentPerson, Principal
from services.api.deps import SessionDep
from services.api.projects import repository
from services.api.projects.permissions import Action, allows
from shared.errors import Forbidden, NotFound
from shared.models import Project
from shared.models.enums import ProjectRole

_ACTION_WORDS = {
    Action.read: "read this project",
    Action.update_project: "change the project",
    Action.manage_budget: "change the compute budget",
    Action.manage_members: "manage members",
    Action.write_tasks: "create or change tasks",
    Action.delete_tasks: "delete tasks",
    Action.manage_milestones: "manage milestones",
    Action.read_audit: "read the audit log",
    Action.write_datasets: "import datasets",
    Action.run_jobs: "submit, cancel or retry training jobs",
    Action.deploy: "promote model versions",
}


@dataclass(frozen=True)
class ProjectContext:
    project: Project
    role: ProjectRole | None  # None: an admin who is not a member
    principal: Principal

    def can(self, action: Action) -> bool:
        return allows(self.role, action, is_admin=self.principal.is_admin)

    def require(self, action: Action) -> None:
        if not self.can(action):
            role = self.role.value if self.role else "none"
            raise Forbidden(f"your role in this project ({role}) may not {_ACTION_WORDS[action]}")

    @property
    def actor(self) -> dict[str, uuid.UUID]:
        return {"actor_user_id": self.principal.user_id, "actor_key_id": self.principal.key_id}


async def load_project_context(session: SessionDep, principal: Principal, ref: str) -> ProjectContext:
    """The project and the caller's role. Unknown projects and those the caller is not a member of
    answer the same 404, so a non-member cannot tell whether a project exists."""
    project = await repository.find_project(session, ref)
    if project is None:
        raise NotFound("project not found")
    role = await repository.member_role(session, project.id, principal.user_id)
    if role is None and not principal.is_admin:
        raise NotFound("project not found")
    return ProjectContext(project=project, role=ProjectRole(role) if role else None, principal=principal)


async def load_entity_context(
    session: SessionDep, principal: Principal, project_id: uuid.UUID, entity: str
) -> ProjectContext:
    """The context of the project a row belongs to. A caller who cannot see that project gets the
    same 404 as for a row that does not exist ("<entity> not found")."""
    try:
        return await load_project_context(session, principal, str(project_id))
    except NotFound:
        raise NotFound(f"{entity} not found") from None


async def get_project_context(
    session: SessionDep,
    principal: CurrentPerson,
    project_id: Annotated[str, Path(description="The project's id or slug.", max_length=100)],
) -> ProjectContext:
    return await load_project_context(session, principal, project_id)


ProjectDep = Annotated[ProjectContext, Depends(get_project_context)]
