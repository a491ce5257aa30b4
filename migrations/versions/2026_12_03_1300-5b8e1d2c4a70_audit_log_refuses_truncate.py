"""the audit log refuses TRUNCATE as it refuses UPDATE and DELETE

Revision ID: 5b8e1d2c4a70
Revises: 7200a27a488b
Create Date: 2026-12-03 13:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5b8e1d2c4a70"
down_revision: str | None = "7200a27a488b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # TRUNCATE fires no row triggers: a statement trigger of its own keeps history from being wiped.
    op.execute(
        """
        CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
