"""clinical details of a study (clinical history, referring clinician) from the sender; the
time step of each user's last accepted TOTP code (a code works once)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 06:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies') as batch:
        batch.add_column(sa.Column('clinical_history', sa.Text(), nullable=True))
        batch.add_column(sa.Column('referring_clinician', sa.String(length=200), nullable=True))
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('totp_last_step', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.drop_column('totp_last_step')
    with op.batch_alter_table('studies') as batch:
        batch.drop_column('referring_clinician')
        batch.drop_column('clinical_history')
