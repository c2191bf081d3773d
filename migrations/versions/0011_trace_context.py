"""trace context: the W3C trace context a job was submitted in

`jobs.trace_context` holds `{"traceparent": ..., "tracestate": ...}` as JSON text, written at
submit while tracing is on (NULL otherwise). Workers, webhook deliveries and shared model
batches continue or link to it, so a job is one trace whoever publishes its messages (the
reconciler's carry no trace context).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 15:30:00.000000
"""
from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('trace_context', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('jobs', 'trace_context')
