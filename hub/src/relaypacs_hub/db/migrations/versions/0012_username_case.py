"""usernames are unique whatever their case

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A deployment that already holds names differing only by case keeps them (an admin merges
    # or renames them); the hub refuses new ones either way (AuthService.create_user).
    bind = op.get_bind()
    clash = bind.execute(
        sa.text("SELECT lower(username) FROM users GROUP BY lower(username) HAVING count(*) > 1")
    ).first()
    if clash is None:
        op.create_index('ix_users_username_lower', 'users', [sa.text('lower(username)')], unique=True)


def downgrade() -> None:
    bind = op.get_bind()
    if 'ix_users_username_lower' in {i['name'] for i in sa.inspect(bind).get_indexes('users')}:
        op.drop_index('ix_users_username_lower', table_name='users')
