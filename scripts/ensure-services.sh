#!/usr/bin/env bash
# Make sure PostgreSQL answers on 127.0.0.1:5432 (the integration tests' database server).
# On the development machines it is already running; elsewhere, start the local cluster.
set -euo pipefail
if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then exit 0; fi
if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql >/dev/null 2>&1; then
  version=$(ls /etc/postgresql | sort -V | tail -1)
  echo "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do
    pg_isready -h 127.0.0.1 -p 5432 -q && exit 0
    sleep 1
  done
fi
echo "PostgreSQL is not reachable on 127.0.0.1:5432; integration tests that need it will be skipped" >&2
