"""reports: report objects of studies, the per-facility report feed, each delivered study's
report status and poll schedule, archive objects that are not reports, service leases, Web Push
subscriptions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 02:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'reports',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('facility', sa.String(length=64), nullable=True),
        sa.Column('source', sa.String(length=96), nullable=False),
        sa.Column('sop_instance_uid', sa.String(length=64), nullable=True),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('title', sa.String(length=200), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=True),
        sa.Column('content_type', sa.String(length=64), nullable=True),
        sa.Column('predecessors_json', sa.Text(), nullable=False),
        sa.Column('received_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('sop_instance_uid'),
    )
    with op.batch_alter_table('reports') as batch:
        batch.create_index(batch.f('ix_reports_study_instance_uid'), ['study_instance_uid'])
        batch.create_index(batch.f('ix_reports_facility'), ['facility'])
    op.create_table(
        'report_events',
        sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('facility', sa.String(length=64), nullable=True),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('report_id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['report_id'], ['reports.id']),
        sa.PrimaryKeyConstraint('seq'),
    )
    with op.batch_alter_table('report_events') as batch:
        batch.create_index(batch.f('ix_report_events_facility'), ['facility'])
    op.create_table(
        'study_reports',
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('facility', sa.String(length=64), nullable=True),
        sa.Column('accession_number', sa.String(length=64), nullable=True),
        sa.Column('stat', sa.Boolean(), nullable=False),
        sa.Column('report_status', sa.String(length=16), nullable=False),
        sa.Column('delivered_at', sa.DateTime(), nullable=True),
        sa.Column('preliminary_at', sa.DateTime(), nullable=True),
        sa.Column('final_at', sa.DateTime(), nullable=True),
        sa.Column('amended_at', sa.DateTime(), nullable=True),
        sa.Column('time_to_report_seconds', sa.Float(), nullable=True),
        sa.Column('next_poll_at', sa.DateTime(), nullable=True),
        sa.Column('polls', sa.Integer(), nullable=False),
        sa.Column('last_polled_at', sa.DateTime(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('study_instance_uid'),
    )
    with op.batch_alter_table('study_reports') as batch:
        batch.create_index('ix_study_reports_due', ['next_poll_at'])
        batch.create_index(batch.f('ix_study_reports_accession_number'), ['accession_number'])
    op.create_table(
        'report_skips',
        sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('reason', sa.String(length=255), nullable=False),
        sa.Column('seen_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('sop_instance_uid'),
    )
    with op.batch_alter_table('report_skips') as batch:
        batch.create_index(batch.f('ix_report_skips_study_instance_uid'), ['study_instance_uid'])
    op.create_table(
        'service_leases',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('owner', sa.String(length=96), nullable=True),
        sa.Column('lease_until', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('name'),
    )
    op.create_table(
        'push_subscriptions',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('endpoint', sa.String(length=1024), nullable=False),
        sa.Column('p256dh', sa.String(length=255), nullable=False),
        sa.Column('auth', sa.String(length=64), nullable=False),
        sa.Column('facility', sa.String(length=64), nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('endpoint'),
    )
    with op.batch_alter_table('push_subscriptions') as batch:
        batch.create_index(batch.f('ix_push_subscriptions_facility'), ['facility'])


def downgrade() -> None:
    op.drop_table('push_subscriptions')
    op.drop_table('service_leases')
    op.drop_table('report_skips')
    op.drop_table('study_reports')
    op.drop_table('report_events')
    op.drop_table('reports')
