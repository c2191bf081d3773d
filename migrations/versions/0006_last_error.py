"""last_error on jobs and chunks: a phase given up after KILN_MAX_ATTEMPTS says why

A leased phase (validating, a chunk, finalizing) that raises records the error on its job or
chunk before it lets the lease go; when the attempts run out the job fails with that error
(`phase_failed`) instead of `worker_crashed`, which is kept for workers that really died.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 08:30:00.000000
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('last_error', sa.Text(), nullable=True))
    op.add_column('job_chunks', sa.Column('last_error', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('job_chunks', 'last_error')
    op.drop_column('jobs', 'last_error')
