"""a study sent by a second facility is held for an admin (study_claims)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 00:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'study_claims',
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('facility', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('device', sa.String(length=128), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('first_seen_at', sa.DateTime(), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(), nullable=False),
        sa.Column('decided_by', sa.String(length=64), nullable=True),
        sa.Column('decided_at', sa.DateTime(), nullable=True),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('study_instance_uid', 'facility'),
    )
    op.create_index('ix_study_claims_state', 'study_claims', ['state'])


def downgrade() -> None:
    op.drop_index('ix_study_claims_state', table_name='study_claims')
    op.drop_table('study_claims')
