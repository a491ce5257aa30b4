"""labelling queues

Revision ID: 8e1ef52a70a6
Revises: a298c17f3d8a
Create Date: 2026-12-07 00:18:11.742443
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '8e1ef52a70a6'
down_revision: str | None = 'a298c17f3d8a'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_JOB_TYPES = "'bi_encoder', 'cross_encoder', 'classifier', 'evaluate', 'export', 'index', 'feedback'"


def upgrade() -> None:
    op.drop_constraint(op.f("ck_training_jobs_job_type_valid"), "training_jobs", type_="check")
    op.create_check_constraint(
        op.f("ck_training_jobs_job_type_valid"), "training_jobs", f"job_type IN ({_OLD_JOB_TYPES}, 'labeling')"
    )
    op.create_table('labeling_queues',
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='building', nullable=False),
    sa.Column('strategy', sa.String(length=16), nullable=False),
    sa.Column('pool', sa.String(length=16), nullable=False),
    sa.Column('options', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('budget', sa.Integer(), nullable=False),
    sa.Column('labels_per_item', sa.SmallInteger(), server_default=sa.text('1'), nullable=False),
    sa.Column('assignment', sa.String(length=16), server_default='round_robin', nullable=False),
    sa.Column('labellers', postgresql.ARRAY(sa.Uuid()), server_default='{}', nullable=False),
    sa.Column('min_grade', sa.SmallInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('max_grade', sa.SmallInteger(), server_default=sa.text('3'), nullable=False),
    sa.Column('dataset_name', sa.String(length=200), nullable=False),
    sa.Column('pool_dataset_version_id', sa.Uuid(), nullable=True),
    sa.Column('selection_job_id', sa.Uuid(), nullable=True),
    sa.Column('report', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('dataset_version_id', sa.Uuid(), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_by', sa.Uuid(), nullable=True),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("assignment IN ('round_robin', 'least_loaded')", name=op.f('ck_labeling_queues_assignment_valid')),
    sa.CheckConstraint("pool IN ('dataset', 'impressions')", name=op.f('ck_labeling_queues_pool_valid')),
    sa.CheckConstraint("status IN ('building', 'open', 'closed', 'failed')", name=op.f('ck_labeling_queues_status_valid')),
    sa.CheckConstraint("strategy IN ('random', 'uncertainty', 'committee')", name=op.f('ck_labeling_queues_strategy_valid')),
    sa.CheckConstraint('budget >= 1', name=op.f('ck_labeling_queues_budget_positive')),
    sa.CheckConstraint('labels_per_item BETWEEN 1 AND 5', name=op.f('ck_labeling_queues_labels_per_item_range')),
    sa.CheckConstraint('min_grade >= 0 AND max_grade > min_grade', name=op.f('ck_labeling_queues_grade_scale_valid')),
    sa.ForeignKeyConstraint(['closed_by'], ['users.id'], name=op.f('fk_labeling_queues_closed_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_labeling_queues_created_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['dataset_version_id'], ['dataset_versions.id'], name=op.f('fk_labeling_queues_dataset_version_id_dataset_versions'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['pool_dataset_version_id'], ['dataset_versions.id'], name=op.f('fk_labeling_queues_pool_dataset_version_id_dataset_versions'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_labeling_queues_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['selection_job_id'], ['training_jobs.id'], name=op.f('fk_labeling_queues_selection_job_id_training_jobs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_labeling_queues'))
    )
    op.create_index('ix_labeling_queues_project_id_status', 'labeling_queues', ['project_id', 'status'], unique=False)
    op.create_table('labeling_items',
    sa.Column('queue_id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('query', sa.String(length=1000), nullable=False),
    sa.Column('product_id', sa.String(length=200), nullable=False),
    sa.Column('product_text', sa.Text(), server_default='', nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('signals', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_labeling_items_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['queue_id'], ['labeling_queues.id'], name=op.f('fk_labeling_items_queue_id_labeling_queues'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_labeling_items')),
    sa.UniqueConstraint('queue_id', 'position', name=op.f('uq_labeling_items_queue_id_position')),
    sa.UniqueConstraint('queue_id', 'query', 'product_id', name=op.f('uq_labeling_items_queue_id_query_product_id'))
    )
    op.create_index(op.f('ix_labeling_items_project_id'), 'labeling_items', ['project_id'], unique=False)
    op.create_table('labeling_assignments',
    sa.Column('queue_id', sa.Uuid(), nullable=False),
    sa.Column('item_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('grade', sa.SmallInteger(), nullable=True),
    sa.Column('skip_reason', sa.String(length=500), nullable=True),
    sa.Column('answered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("(status = 'labelled') = (grade IS NOT NULL)", name=op.f('ck_labeling_assignments_grade_when_labelled')),
    sa.CheckConstraint("status IN ('pending', 'labelled', 'skipped')", name=op.f('ck_labeling_assignments_status_valid')),
    sa.ForeignKeyConstraint(['item_id'], ['labeling_items.id'], name=op.f('fk_labeling_assignments_item_id_labeling_items'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['queue_id'], ['labeling_queues.id'], name=op.f('fk_labeling_assignments_queue_id_labeling_queues'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_labeling_assignments_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_labeling_assignments')),
    sa.UniqueConstraint('item_id', 'user_id', name=op.f('uq_labeling_assignments_item_id_user_id'))
    )
    op.create_index('ix_labeling_assignments_queue_id_user_id_status', 'labeling_assignments', ['queue_id', 'user_id', 'status'], unique=False)
    op.create_index('ix_labeling_assignments_user_id_status', 'labeling_assignments', ['user_id', 'status'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_labeling_assignments_user_id_status', table_name='labeling_assignments')
    op.drop_index('ix_labeling_assignments_queue_id_user_id_status', table_name='labeling_assignments')
    op.drop_table('labeling_assignments')
    op.drop_index(op.f('ix_labeling_items_project_id'), table_name='labeling_items')
    op.drop_table('labeling_items')
    op.drop_index('ix_labeling_queues_project_id_status', table_name='labeling_queues')
    op.drop_table('labeling_queues')
    op.execute("DELETE FROM training_jobs WHERE job_type = 'labeling'")
    op.drop_constraint(op.f("ck_training_jobs_job_type_valid"), "training_jobs", type_="check")
    op.create_check_constraint(op.f("ck_training_jobs_job_type_valid"), "training_jobs", f"job_type IN ({_OLD_JOB_TYPES})")
