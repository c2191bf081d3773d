"""reference indexes: find the jobs that point at a file or a parent job without a scan

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 16:00:00.000000
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

COLUMNS = ("input_file_id", "output_file_id", "error_file_id", "parent_id")


def upgrade() -> None:
    for column in COLUMNS:
        op.create_index(f'ix_jobs_{column}', 'jobs', [column], unique=False,
                        postgresql_where=sa.text(f'{column} IS NOT NULL'))


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_index(f'ix_jobs_{column}', table_name='jobs',
                      postgresql_where=sa.text(f'{column} IS NOT NULL'))
