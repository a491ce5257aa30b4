"""Where the team already works: a project's Jira connection and the issues its tasks are linked to, the
outbox of calls to Jira, a project's Git connection and the commits linked to its tasks."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models.base import Base, CreatedAt, Timestamps, UUIDPk, enum_check
from shared.models.enums import GitProvider, JiraAction, OutboxStatus


class JiraConnection(UUIDPk, Timestamps, Base):
    """A project's Jira site and project. The API token and the webhook secret are sealed with the
    server's secret (shared.security.seal) and never answered."""

    __tablename__ = "jira_connections"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), unique=True)
    site_url: Mapped[str] = mapped_column(String(500))
    project_key: Mapped[str] = mapped_column(String(32))
    user_email: Mapped[str] = mapped_column(String(320))
    token_sealed: Mapped[str] = mapped_column(Text)
    webhook_secret_sealed: Mapped[str] = mapped_column(Text)
    issue_type: Mapped[str] = mapped_column(String(64), server_default="Task")
    # RecForge task status -> the Jira status name it maps to (and back)
    status_map: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    webhook_id: Mapped[int | None] = mapped_column(BigInteger)
    webhook_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class JiraLink(CreatedAt, Base):
    """A task and its Jira issue, one to one."""

    __tablename__ = "jira_links"
    __table_args__ = (UniqueConstraint("connection_id", "issue_key"),)

    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    connection_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jira_connections.id", ondelete="CASCADE"))
    issue_id: Mapped[str] = mapped_column(String(32))
    issue_key: Mapped[str] = mapped_column(String(64))


class JiraOutbox(UUIDPk, CreatedAt, Base):
    """A call RecForge owes Jira, written in the unit of work of the change it reports and made by the
    sync loop after the commit: create an issue, transition it, update its fields, comment on it."""

    __tablename__ = "jira_outbox"
    __table_args__ = (
        enum_check("action", JiraAction),
        enum_check("status", OutboxStatus),
        Index("ix_jira_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    )

    connection_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jira_connections.id", ondelete="CASCADE"))
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    status: Mapped[str] = mapped_column(String(16), server_default=OutboxStatus.pending.value)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class GitConnection(UUIDPk, Timestamps, Base):
    """A project's Git host: push webhooks signed (GitHub) or tokened (GitLab) with the sealed secret."""

    __tablename__ = "git_connections"
    __table_args__ = (enum_check("provider", GitProvider),)

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), unique=True)
    provider: Mapped[str] = mapped_column(String(16))
    secret_sealed: Mapped[str] = mapped_column(Text)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class TaskCommit(UUIDPk, CreatedAt, Base):
    """A pushed commit whose message names a task."""

    __tablename__ = "task_commits"
    __table_args__ = (UniqueConstraint("task_id", "sha"),)

    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    sha: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(String(1000))
    author: Mapped[str | None] = mapped_column(String(320))
    ref: Mapped[str | None] = mapped_column(String(300))
    repository: Mapped[str | None] = mapped_column(String(500))
    committed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closes: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
