"""addresses each person signed in from; failed logins counted per address, not per account

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'login_sources',
        sa.Column('user_id', sa.Integer(), sa.ForeignKey('users.id'), nullable=False),
        sa.Column('source_digest', sa.String(length=64), nullable=False),
        sa.Column('last_success_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('user_id', 'source_digest'),
    )
    # Failures are counted by the rate limiter per account and address (and for names that do
    # not exist alike); the account row keeps only when a password spray locked it.
    with op.batch_alter_table('users') as batch:
        batch.drop_column('failed_logins')
    _keep_case_index()


def downgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.add_column(
            sa.Column('failed_logins', sa.Integer(), nullable=False, server_default='0')
        )
    _keep_case_index()
    op.drop_table('login_sources')


def _keep_case_index() -> None:
    """SQLite's batch mode rebuilds the table without its expression index (0012): put it back
    (unless names clashing by case are there, which 0012 leaves to an admin)."""
    bind = op.get_bind()
    clash = bind.execute(
        sa.text("SELECT lower(username) FROM users GROUP BY lower(username) HAVING count(*) > 1")
    ).first()
    if clash is None:
        op.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS ix_users_username_lower ON users (lower(username))"
        )
