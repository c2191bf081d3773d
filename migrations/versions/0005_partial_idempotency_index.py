"""idempotency keys: a partial unique index, so jobs submitted without a key cost it nothing

Most jobs carry no Idempotency-Key, yet the unique constraint indexed every row version of
every job (three per inline job: insert, claim, finish). The partial index holds only the
jobs that have a key, and enforces the same uniqueness.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 17:30:00.000000
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_jobs_idempotency_key', 'jobs', ['tenant_id', 'idempotency_key'],
                    unique=True, postgresql_where=sa.text('idempotency_key IS NOT NULL'))
    op.drop_constraint('tenant_idempotency_key', 'jobs', type_='unique')


def downgrade() -> None:
    op.create_unique_constraint('tenant_idempotency_key', 'jobs', ['tenant_id', 'idempotency_key'])
    op.drop_index('ix_jobs_idempotency_key', table_name='jobs',
                  postgresql_where=sa.text('idempotency_key IS NOT NULL'))
