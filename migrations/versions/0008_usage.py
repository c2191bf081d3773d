"""usage: each job's model time and bytes in and out, beside its row counts

Written by the same fenced statements that count a job's rows, so usage and results commit
together. Constant defaults: adding the columns rewrites no row.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:00:00.000000
"""
from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('model_seconds', sa.Float(), server_default=sa.text('0'),
                                    nullable=False))
    op.add_column('jobs', sa.Column('bytes_in', sa.BigInteger(), server_default=sa.text('0'),
                                    nullable=False))
    op.add_column('jobs', sa.Column('bytes_out', sa.BigInteger(), server_default=sa.text('0'),
                                    nullable=False))


def downgrade() -> None:
    for column in ('bytes_out', 'bytes_in', 'model_seconds'):
        op.drop_column('jobs', column)
