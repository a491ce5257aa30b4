"""Who may do what in a project. The README's role table is checked against this by the tests."""

from __future__ import annotations

from enum import StrEnum

from shared.models.enums import ProjectRole


class Action(StrEnum):
    read = "read"  # project, members, tasks, milestones, progress
    update_project = "update_project"  # details, goal, dates, status
    manage_budget = "manage_budget"
    manage_members = "manage_members"
    write_tasks = "write_tasks"  # create, edit, move, comment
    delete_tasks = "delete_tasks"
    manage_milestones = "manage_milestones"
    read_audit = "read_audit"
    write_datasets = "write_datasets"  # import data, new dataset versions
    run_jobs = "run_jobs"  # submit, cancel and retry training jobs
    deploy = "deploy"  # promote model versions, canaries


_OWNER, _MAINTAINER, _MEMBER, _VIEWER = (
    ProjectRole.owner,
    ProjectRole.maintainer,
    ProjectRole.member,
    ProjectRole.viewer,
)

ALLOWED: dict[Action, frozenset[ProjectRole]] = {
    Action.read: frozenset({_OWNER, _MAINTAINER, _MEMBER, _VIEWER}),
    Action.update_project: frozenset({_OWNER, _MAINTAINER}),
    Action.manage_budget: frozenset({_OWNER}),
    Action.manage_members: frozenset({_OWNER, _MAINTAINER}),
    Action.write_tasks: frozenset({_OWNER, _MAINTAINER, _MEMBER}),
    Action.delete_tasks: frozenset({_OWNER, _MAINTAINER}),
    Action.manage_milestones: frozenset({_OWNER, _MAINTAINER}),
    Action.read_audit: frozenset({_OWNER, _MAINTAINER}),
    Action.write_datasets: frozenset({_OWNER, _MAINTAINER, _MEMBER}),
    Action.run_jobs: frozenset({_OWNER, _MAINTAINER, _MEMBER}),
    Action.deploy: frozenset({_OWNER, _MAINTAINER}),
}


def allows(role: ProjectRole | None, action: Action, *, is_admin: bool = False) -> bool:
    """Admins may do everything; members what their role allows; others nothing."""
    if is_admin:
        return True
    return role is not None and role in ALLOWED[action]
