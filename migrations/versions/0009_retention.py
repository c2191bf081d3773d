"""retention: result and file expiry, job tombstones, and the bytes left to remove

`results_retention_seconds` is fixed at submit; `results_expire_at` is set when the job ends.
The sweeper finds due jobs and files through partial indexes that hold only what may still
expire. `storage_garbage` holds the URIs whose bytes are removed after the commit that forgot
them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 11:00:00.000000
"""
from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('tenants', sa.Column('file_retention_seconds', sa.Float(), nullable=True))
    for column in ('results_expire_at', 'results_expired_at', 'deleted_at'):
        op.add_column('jobs', sa.Column(column, sa.DateTime(timezone=True), nullable=True))
    op.add_column('jobs', sa.Column('results_retention_seconds', sa.Float(), nullable=True))
    op.create_index('ix_jobs_results_expire_at', 'jobs', ['results_expire_at'], unique=False,
                    postgresql_where=sa.text('results_expired_at IS NULL'))
    op.create_index('ix_files_expires_at', 'files', ['expires_at'], unique=False,
                    postgresql_where=sa.text('expires_at IS NOT NULL'))
    op.create_table('storage_garbage',
                    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
                    sa.Column('uri', sa.Text(), nullable=False),
                    sa.Column('created_at', sa.DateTime(timezone=True),
                              server_default=sa.text('now()'), nullable=False),
                    sa.PrimaryKeyConstraint('id', name=op.f('pk_storage_garbage')))


def downgrade() -> None:
    op.drop_table('storage_garbage')
    op.drop_index('ix_files_expires_at', table_name='files',
                  postgresql_where=sa.text('expires_at IS NOT NULL'))
    op.drop_index('ix_jobs_results_expire_at', table_name='jobs',
                  postgresql_where=sa.text('results_expired_at IS NULL'))
    for column in ('results_retention_seconds', 'deleted_at', 'results_expired_at',
                   'results_expire_at'):
        op.drop_column('jobs', column)
    op.drop_column('tenants', 'file_retention_seconds')
