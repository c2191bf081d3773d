"""tenant limits: per-tenant quotas and submit rate, and an index of each tenant's live jobs

A tenant's limit columns are NULL until set (the `KILN_TENANT_*` defaults apply) and 0 means
unlimited. Admission counts a tenant's live jobs and their rows on every limited submit; the
partial index makes that an index scan of only the live jobs, however many have finished.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 09:00:00.000000
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

LIVE = "status IN ('validating', 'queued', 'running', 'finalizing', 'cancelling')"


def upgrade() -> None:
    op.add_column('tenants', sa.Column('max_queued_rows', sa.BigInteger(), nullable=True))
    op.add_column('tenants', sa.Column('max_active_jobs', sa.Integer(), nullable=True))
    op.add_column('tenants', sa.Column('max_storage_bytes', sa.BigInteger(), nullable=True))
    op.add_column('tenants', sa.Column('submits_per_second', sa.Float(), nullable=True))
    op.add_column('tenants', sa.Column('submit_burst', sa.Integer(), nullable=True))
    op.create_index('ix_jobs_live_by_tenant', 'jobs', ['tenant_id'], unique=False,
                    postgresql_include=['total_count'], postgresql_where=sa.text(LIVE))


def downgrade() -> None:
    op.drop_index('ix_jobs_live_by_tenant', table_name='jobs',
                  postgresql_where=sa.text(LIVE))
    for column in ('submit_burst', 'submits_per_second', 'max_storage_bytes',
                   'max_active_jobs', 'max_queued_rows'):
        op.drop_column('tenants', column)
