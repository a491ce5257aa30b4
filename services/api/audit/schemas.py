from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, ConfigDict


class AuditEntry(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: uuid.UUID | None
    actor_user_id: uuid.UUID | None
    actor_key_id: uuid.UUID | None
    action: str
    entity_type: str
    entity_id: str | None
    before: dict[str, object] | None
    after: dict[str, object] | None
    request_id: str | None
    created_at: dt.datetime
