"""jira and git

Revision ID: d79ed70e868a
Revises: 8e1ef52a70a6
Create Date: 2026-12-07 00:45:21.923994
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = 'd79ed70e868a'
down_revision: str | None = '8e1ef52a70a6'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_NUMBER_FUNCTION = """
CREATE OR REPLACE FUNCTION recforge_task_number() RETURNS trigger AS $$
BEGIN
    UPDATE projects SET task_counter = task_counter + 1 WHERE id = NEW.project_id
        RETURNING task_counter INTO NEW.number;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table('git_connections',
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('provider', sa.String(length=16), nullable=False),
    sa.Column('secret_sealed', sa.Text(), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("provider IN ('github', 'gitlab')", name=op.f('ck_git_connections_provider_valid')),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_git_connections_created_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_git_connections_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_git_connections')),
    sa.UniqueConstraint('project_id', name=op.f('uq_git_connections_project_id'))
    )
    op.create_table('jira_connections',
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('site_url', sa.String(length=500), nullable=False),
    sa.Column('project_key', sa.String(length=32), nullable=False),
    sa.Column('user_email', sa.String(length=320), nullable=False),
    sa.Column('token_sealed', sa.Text(), nullable=False),
    sa.Column('webhook_secret_sealed', sa.Text(), nullable=False),
    sa.Column('issue_type', sa.String(length=64), server_default='Task', nullable=False),
    sa.Column('status_map', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('enabled', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('webhook_id', sa.BigInteger(), nullable=True),
    sa.Column('webhook_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_jira_connections_created_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_jira_connections_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jira_connections')),
    sa.UniqueConstraint('project_id', name=op.f('uq_jira_connections_project_id'))
    )
    op.create_table('jira_links',
    sa.Column('task_id', sa.Uuid(), nullable=False),
    sa.Column('connection_id', sa.Uuid(), nullable=False),
    sa.Column('issue_id', sa.String(length=32), nullable=False),
    sa.Column('issue_key', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['jira_connections.id'], name=op.f('fk_jira_links_connection_id_jira_connections'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_jira_links_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_jira_links')),
    sa.UniqueConstraint('connection_id', 'issue_key', name=op.f('uq_jira_links_connection_id_issue_key'))
    )
    op.create_table('jira_outbox',
    sa.Column('connection_id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('task_id', sa.Uuid(), nullable=True),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('leased_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("action IN ('create_issue', 'transition', 'update', 'comment')", name=op.f('ck_jira_outbox_action_valid')),
    sa.CheckConstraint("status IN ('pending', 'done', 'failed')", name=op.f('ck_jira_outbox_status_valid')),
    sa.ForeignKeyConstraint(['connection_id'], ['jira_connections.id'], name=op.f('fk_jira_outbox_connection_id_jira_connections'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_jira_outbox_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_jira_outbox_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jira_outbox'))
    )
    op.create_index(op.f('ix_jira_outbox_project_id'), 'jira_outbox', ['project_id'], unique=False)
    op.create_index('ix_jira_outbox_status_next_attempt_at', 'jira_outbox', ['status', 'next_attempt_at'], unique=False)
    op.create_index(op.f('ix_jira_outbox_task_id'), 'jira_outbox', ['task_id'], unique=False)
    op.create_table('task_commits',
    sa.Column('task_id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('sha', sa.String(length=64), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('url', sa.String(length=1000), nullable=True),
    sa.Column('author', sa.String(length=320), nullable=True),
    sa.Column('ref', sa.String(length=300), nullable=True),
    sa.Column('repository', sa.String(length=500), nullable=True),
    sa.Column('committed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closes', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_task_commits_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_commits_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_commits')),
    sa.UniqueConstraint('task_id', 'sha', name=op.f('uq_task_commits_task_id_sha'))
    )
    op.create_index(op.f('ix_task_commits_task_id'), 'task_commits', ['task_id'], unique=False)
    op.add_column('model_versions', sa.Column('git', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False))
    op.add_column('projects', sa.Column('task_counter', sa.Integer(), server_default=sa.text('0'), nullable=False))
    # existing tasks are numbered in the order they were made; new ones by the trigger, under the
    # project row's lock (two tasks made at once never share a number)
    op.add_column('tasks', sa.Column('number', sa.Integer(), nullable=True))
    op.execute(
        "UPDATE tasks SET number = ranked.n FROM (SELECT id, row_number() OVER "
        "(PARTITION BY project_id ORDER BY created_at, id) AS n FROM tasks) AS ranked WHERE tasks.id = ranked.id"
    )
    op.execute(
        "UPDATE projects SET task_counter = counted.n FROM (SELECT project_id, max(number) AS n FROM tasks "
        "GROUP BY project_id) AS counted WHERE projects.id = counted.project_id"
    )
    op.alter_column('tasks', 'number', nullable=False)
    op.create_unique_constraint(op.f('uq_tasks_project_id_number'), 'tasks', ['project_id', 'number'])
    op.execute(_NUMBER_FUNCTION)
    op.execute(
        "CREATE TRIGGER tasks_number BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION recforge_task_number()"
    )


def downgrade() -> None:
    op.drop_constraint(op.f('uq_tasks_project_id_number'), 'tasks', type_='unique')
    op.execute("DROP TRIGGER IF EXISTS tasks_number ON tasks")
    op.execute("DROP FUNCTION IF EXISTS recforge_task_number()")
    op.drop_column('tasks', 'number')
    op.drop_column('projects', 'task_counter')
    op.drop_column('model_versions', 'git')
    op.drop_index(op.f('ix_task_commits_task_id'), table_name='task_commits')
    op.drop_table('task_commits')
    op.drop_index(op.f('ix_jira_outbox_task_id'), table_name='jira_outbox')
    op.drop_index('ix_jira_outbox_status_next_attempt_at', table_name='jira_outbox')
    op.drop_index(op.f('ix_jira_outbox_project_id'), table_name='jira_outbox')
    op.drop_table('jira_outbox')
    op.drop_table('jira_links')
    op.drop_table('jira_connections')
    op.drop_table('git_connections')
