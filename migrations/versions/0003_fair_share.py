"""fair share: claim inline jobs by tenant and deadline, count a tenant's open chunks

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00.000000
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_jobs_claimable', table_name='jobs', postgresql_where=sa.text("status = 'queued'"))
    op.create_index('ix_jobs_queued_by_tenant', 'jobs', ['model_id', 'tenant_id', sa.text('priority DESC'), 'created_at'], unique=False, postgresql_where=sa.text("status = 'queued'"))
    op.create_index('ix_jobs_queued_by_deadline', 'jobs', ['model_id', 'expires_at'], unique=False, postgresql_where=sa.text("status = 'queued'"))
    op.create_index('ix_job_chunks_open_by_tenant', 'job_chunks', ['tenant_id'], unique=False, postgresql_where=sa.text("status IN ('queued', 'running')"))


def downgrade() -> None:
    op.drop_index('ix_job_chunks_open_by_tenant', table_name='job_chunks', postgresql_where=sa.text("status IN ('queued', 'running')"))
    op.drop_index('ix_jobs_queued_by_deadline', table_name='jobs', postgresql_where=sa.text("status = 'queued'"))
    op.drop_index('ix_jobs_queued_by_tenant', table_name='jobs', postgresql_where=sa.text("status = 'queued'"))
    op.create_index('ix_jobs_claimable', 'jobs', ['model_id', 'priority', 'created_at'], unique=False, postgresql_where=sa.text("status = 'queued'"))
