"""The agent's schema, as migrations in code (applied in order, recorded in ``_migrations``)."""

from __future__ import annotations

_M001_INITIAL = """
        CREATE TABLE instances (
            sop_instance_uid TEXT PRIMARY KEY,
            study_instance_uid TEXT NOT NULL,
            series_instance_uid TEXT NOT NULL,
            sop_class_uid TEXT NOT NULL,
            transfer_syntax_uid TEXT NOT NULL,
            modality TEXT NOT NULL DEFAULT '',
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            spool_path TEXT NOT NULL,
            source TEXT NOT NULL,
            source_path TEXT NOT NULL,
            received_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'spooled',     -- spooled | uploaded | refused
            uploaded_at REAL,
            warnings TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX ix_instances_study ON instances (study_instance_uid, state);
        CREATE TABLE studies (
            study_instance_uid TEXT PRIMARY KEY,
            state TEXT NOT NULL,               -- receiving | committed | delivered
            service_level TEXT NOT NULL DEFAULT 'routine',
            first_received_at REAL NOT NULL,
            last_instance_at REAL NOT NULL,
            committed_at REAL,
            delivered_at REAL,
            commits INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            last_error TEXT,
            hub_status TEXT
        );
        CREATE INDEX ix_studies_state ON studies (state, next_attempt_at);
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,
            original_name TEXT NOT NULL,
            source TEXT NOT NULL,
            reason TEXT NOT NULL,
            message TEXT NOT NULL,
            size INTEGER NOT NULL,
            sha256 TEXT,
            sop_instance_uid TEXT,
            quarantined_at REAL NOT NULL
        );
        CREATE TABLE duplicates (
            id INTEGER PRIMARY KEY,
            sop_instance_uid TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            original_name TEXT NOT NULL,
            source TEXT NOT NULL,
            received_at REAL NOT NULL
        );
"""

# Each migration is SQL run in one transaction with its record in ``_migrations``; append only.
MIGRATIONS: list[tuple[str, str]] = [("001_initial", _M001_INITIAL)]
