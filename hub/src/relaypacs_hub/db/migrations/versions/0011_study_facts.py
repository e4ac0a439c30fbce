"""study facts for the dashboard's lists and analytics: modalities, date, description, accession

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies') as batch:
        batch.add_column(sa.Column('modalities', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('study_date', sa.String(length=8), nullable=True))
        batch.add_column(sa.Column('study_description', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('accession_number', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('studies') as batch:
        batch.drop_column('accession_number')
        batch.drop_column('study_description')
        batch.drop_column('study_date')
        batch.drop_column('modalities')
