"""agent heartbeats: the latest health report of each agent (backlog, oldest waiting study, disk
free against its reserve, quarantine by reason, last hub contact, version), one row per agent

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 03:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'agent_heartbeats',
        sa.Column('agent_key', sa.String(length=160), nullable=False),
        sa.Column('device_id', sa.String(length=32), nullable=True),
        sa.Column('facility', sa.String(length=64), nullable=True),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('version', sa.String(length=32), nullable=False),
        sa.Column('received_at', sa.DateTime(), nullable=False),
        sa.Column('backlog_studies', sa.Integer(), nullable=False),
        sa.Column('backlog_bytes', sa.BigInteger(), nullable=False),
        sa.Column('oldest_waiting_seconds', sa.Float(), nullable=True),
        sa.Column('disk_free_bytes', sa.BigInteger(), nullable=True),
        sa.Column('disk_reserve_bytes', sa.BigInteger(), nullable=True),
        sa.Column('quarantine_json', sa.Text(), nullable=False),
        sa.Column('last_hub_contact_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('agent_key'),
    )
    op.create_index(
        op.f('ix_agent_heartbeats_facility'), 'agent_heartbeats', ['facility'], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f('ix_agent_heartbeats_facility'), table_name='agent_heartbeats')
    op.drop_table('agent_heartbeats')
