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

_M002_INGEST = """
        -- Where an instance came from: a watched folder's name, a calling AE title, an import.
        ALTER TABLE instances ADD COLUMN origin TEXT NOT NULL DEFAULT '';
        -- dciodvfy findings as a JSON list; NULL = not checked yet, '[]' = none.
        ALTER TABLE instances ADD COLUMN conformance TEXT;
        CREATE INDEX ix_instances_unchecked ON instances (received_at) WHERE conformance IS NULL;
        -- Per-source quiet period (NULL: the agent's), explicit readiness ("send now", or the end
        -- of a C-STORE association plus its grace), and the source's facility metadata.
        ALTER TABLE studies ADD COLUMN quiet_period REAL;
        ALTER TABLE studies ADD COLUMN ready_at REAL;
        ALTER TABLE studies ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
        -- A person's decision on a quarantined file: released | deleted (NULL: still open).
        ALTER TABLE quarantine ADD COLUMN resolution TEXT;
        ALTER TABLE quarantine ADD COLUMN resolved_at REAL;
        ALTER TABLE quarantine ADD COLUMN resolution_note TEXT;
        CREATE INDEX ix_quarantine_open ON quarantine (resolution, quarantined_at);
        -- Files of copy-mode folders already taken in (originals stay where they are).
        CREATE TABLE source_files (
            folder TEXT NOT NULL,
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            taken_at REAL NOT NULL,
            PRIMARY KEY (folder, path)
        );
        -- One row per archive / medium / folder import, with what it held.
        CREATE TABLE imports (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,            -- zip | media | folder
            source TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL,
            summary TEXT NOT NULL DEFAULT '{}'
        );
"""

# Hash-chained audit records (relaypacs_shared.audit); rows are only ever appended.
_M003_AUDIT = """
        CREATE TABLE audit_log (
            seq INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            outcome TEXT NOT NULL,
            source TEXT NOT NULL,
            details TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
"""

# The LAN side (relaypacs_agent.web): cached verifiers of the facility's users (never a
# plaintext password), sessions (SHA-256 of the token only), failed logins, and the PWA's
# batches and tus uploads.
_M004_WEB = """
        CREATE TABLE lan_users (
            username TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            facilities TEXT NOT NULL DEFAULT '[]',
            password_hash TEXT NOT NULL,
            totp_secret TEXT,
            totp_required INTEGER NOT NULL DEFAULT 0,
            hub_locked_until REAL,
            synced_at REAL NOT NULL
        );
        CREATE TABLE lan_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE lan_sessions (
            token_hash TEXT PRIMARY KEY,
            username TEXT NOT NULL,
            role TEXT NOT NULL,
            facilities TEXT NOT NULL,
            offline INTEGER NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            source TEXT NOT NULL
        );
        CREATE TABLE lan_login_failures (
            username TEXT PRIMARY KEY,
            failures INTEGER NOT NULL,
            locked_until REAL
        );
        CREATE TABLE web_batches (
            id TEXT PRIMARY KEY,
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL,
            service_level TEXT NOT NULL,
            clinical_history TEXT NOT NULL DEFAULT '',
            referring_clinician TEXT NOT NULL DEFAULT '',
            label TEXT NOT NULL DEFAULT '',
            expected_files INTEGER NOT NULL DEFAULT 0,
            sent_at REAL
        );
        CREATE INDEX ix_web_batches_user ON web_batches (created_by, created_at);
        CREATE TABLE web_uploads (
            id TEXT PRIMARY KEY,
            batch_id TEXT NOT NULL REFERENCES web_batches (id),
            created_by TEXT NOT NULL,
            filename TEXT NOT NULL,
            length INTEGER NOT NULL,
            offset INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL DEFAULT 'open',   -- open | done | terminated
            outcome TEXT,                         -- accepted | duplicate | quarantined | replayed
            reason TEXT,
            message TEXT,
            sop_instance_uid TEXT,
            study_instance_uid TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX ix_web_uploads_batch ON web_uploads (batch_id);
"""

# Reports of the facility's studies, taken from the hub's feed (relaypacs_agent.reports): the
# text to read on the LAN with the WAN down, a PDF as a file under data_dir/reports.
_M005_REPORTS = """
        CREATE TABLE reports (
            id INTEGER PRIMARY KEY,               -- the hub's report id
            seq INTEGER NOT NULL,                 -- the hub feed's event number
            study_instance_uid TEXT NOT NULL,
            status TEXT NOT NULL,                 -- preliminary | final | amended
            kind TEXT NOT NULL,                   -- text | sr | pdf | cda
            title TEXT NOT NULL,
            text TEXT NOT NULL,
            document TEXT,                        -- file name of the PDF under reports/
            hub_received_at TEXT NOT NULL,
            received_at REAL NOT NULL
        );
        CREATE INDEX ix_reports_study ON reports (study_instance_uid, id);
"""

# LAN login failures are counted per username and client address (a stranger on the LAN locks
# only their own address out), the hub's account lock no longer reaches the LAN, and the time step
# of the last TOTP code used anywhere comes with the verifiers.
_M006_LOGIN_SOURCES = """
        DROP TABLE lan_login_failures;
        CREATE TABLE lan_login_failures (
            username TEXT NOT NULL,
            source TEXT NOT NULL,
            failures INTEGER NOT NULL,
            locked_until REAL,
            PRIMARY KEY (username, source)
        );
        ALTER TABLE lan_users DROP COLUMN hub_locked_until;
        ALTER TABLE lan_users ADD COLUMN totp_last_step INTEGER;
"""

# Reports stored into the facility's own PACS by C-STORE (``report_store_pacs``): one row per
# report, with the SOP Instance UID the agent gave it (stable: a second send replaces, never
# duplicates) and where the send stands.
_M007_REPORT_STORES = """
        CREATE TABLE report_stores (
            report_id INTEGER PRIMARY KEY REFERENCES reports (id),
            study_instance_uid TEXT NOT NULL,
            sop_instance_uid TEXT NOT NULL,
            state TEXT NOT NULL,                  -- stored | retry | skipped | refused
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            next_try_at REAL,
            stored_at REAL
        );
        CREATE INDEX ix_report_stores_study ON report_stores (study_instance_uid, report_id);
"""

# Each migration is SQL run in one transaction with its record in ``_migrations``; append only.
MIGRATIONS: list[tuple[str, str]] = [
    ("001_initial", _M001_INITIAL),
    ("002_ingest", _M002_INGEST),
    ("003_audit", _M003_AUDIT),
    ("004_web", _M004_WEB),
    ("005_reports", _M005_REPORTS),
    ("006_login_sources", _M006_LOGIN_SOURCES),
    ("007_report_stores", _M007_REPORT_STORES),
]

# The uplink's own tables (segments and their upload offsets, parts, transfer stats), applied by
# the uplink at start (relaypacs_agent.store.uplink.UplinkStore.migrate), recorded in the same
# ``_migrations`` table; append only.
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
