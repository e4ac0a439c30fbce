"""The uplink's own tables in the agent's SQLite (segments and their upload offsets).

Kept apart from the ingest schema and applied by the uplink at start, recorded in the same
``_migrations`` table; append only.
"""

from __future__ import annotations

from relaypacs_agent.store.db import Store

UPLINK_MIGRATIONS: list[tuple[str, str]] = [
    (
        "uplink_001_segments",
        """
        CREATE TABLE segments (
            id TEXT PRIMARY KEY,
            study_instance_uid TEXT NOT NULL,
            path TEXT NOT NULL,
            length INTEGER NOT NULL,
            raw_bytes INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            sop_uids TEXT NOT NULL,            -- JSON list
            upload_url TEXT,
            offset INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL DEFAULT 'built', -- built | uploading | uploaded | abandoned
            attempts INTEGER NOT NULL DEFAULT 0,
            resent_bytes INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX ix_segments_study ON segments (study_instance_uid, state);
        CREATE TABLE transfer_stats (
            study_instance_uid TEXT PRIMARY KEY,
            total_bytes INTEGER NOT NULL DEFAULT 0,   -- raw bytes the hub lacked at manifest time
            sent_bytes INTEGER NOT NULL DEFAULT 0,    -- raw bytes in segments the hub acknowledged
            wire_bytes INTEGER NOT NULL DEFAULT 0,    -- bytes put on the link (after compression)
            rate_bps REAL NOT NULL DEFAULT 0,         -- recent wire throughput
            started_at REAL,
            updated_at REAL
        );
        """,
    ),
    (
        "uplink_002_segment_parts",
        """
        CREATE TABLE segment_parts (
            segment_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            start INTEGER NOT NULL,
            length INTEGER NOT NULL,
            upload_url TEXT,
            offset INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (segment_id, idx)
        );
        """,
    ),
]


def migrate_uplink(store: Store) -> list[str]:
    return store.migrate(UPLINK_MIGRATIONS)
