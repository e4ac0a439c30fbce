#!/usr/bin/env bash
# The database server and Redis the integration tests use, on this machine's loopback:
#   PostgreSQL on 127.0.0.1:5432, user postgres without a password (RELAYPACS_TEST_PG_*),
#   Redis on 127.0.0.1:6379 (RELAYPACS_TEST_REDIS_URL).
# Installs them from Debian when missing (scripts/install-system-deps.sh), starts them when they
# are not running, and lets the postgres user in over the loopback. Machines that already run
# both (the development VMs) are left as they are. Exits non-zero, saying why, when either
# cannot be made to answer: the tests must not skip silently.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PG_HOST=${RELAYPACS_TEST_PG_HOST:-127.0.0.1}
PG_PORT=${RELAYPACS_TEST_PG_PORT:-5432}
PG_USER=${RELAYPACS_TEST_PG_USER:-postgres}

wait_until() {  # wait_until SECONDS COMMAND...
  local n=$1; shift
  for _ in $(seq 1 "$n"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  return 1
}

pg_login() { psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -w -Atc 'SELECT 1'; }

# --- PostgreSQL ---------------------------------------------------------------------------
if ! pg_isready -h "$PG_HOST" -p "$PG_PORT" -q 2>/dev/null; then
  if [ "$PG_HOST" != "127.0.0.1" ] && [ "$PG_HOST" != "localhost" ]; then
    echo "PostgreSQL is not reachable on $PG_HOST:$PG_PORT (a remote server: start it there)" >&2
    exit 1
  fi
  if ! ls /etc/postgresql/*/main/postgresql.conf >/dev/null 2>&1; then
    if [ ! -d /etc/postgresql ]; then
      echo "installing PostgreSQL (Debian's postgresql package)"
      export DEBIAN_FRONTEND=noninteractive
      $SUDO apt-get update -qq
      $SUDO apt-get install -y -qq --no-install-recommends postgresql
    fi
    if ! ls /etc/postgresql/*/main/postgresql.conf >/dev/null 2>&1; then
      version=$(ls /usr/lib/postgresql | sort -V | tail -1)
      echo "creating the PostgreSQL $version cluster 'main'"
      $SUDO pg_createcluster "$version" main
    fi
  fi
  version=$(ls /etc/postgresql | sort -V | tail -1)
  echo "starting PostgreSQL $version on port $PG_PORT"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  if ! wait_until 30 pg_isready -h "$PG_HOST" -p "$PG_PORT" -q; then
    echo "PostgreSQL $version did not start; see /var/log/postgresql/postgresql-$version-main.log" >&2
    exit 1
  fi
fi
if ! pg_login >/dev/null 2>&1; then
  # A fresh Debian cluster asks for a password over TCP; the tests log in as postgres without
  # one, from this machine only. Say so, and change nothing beyond the loopback line.
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$hba" ]; then
    echo "PostgreSQL on $PG_HOST:$PG_PORT refuses user $PG_USER without a password, and its" \
      "pg_hba.conf is not on this machine: set RELAYPACS_TEST_PG_USER and PGPASSWORD" >&2
    exit 1
  fi
  echo "letting user $PG_USER in from 127.0.0.1 without a password ($hba, for the tests)"
  line="host all $PG_USER 127.0.0.1/32 trust  # RelayPACS tests (scripts/ensure-services.sh)"
  $SUDO sed -i "1i $line" "$hba"
  version=$(basename "$(dirname "$(dirname "$hba")")")
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  if ! wait_until 10 pg_login; then
    echo "PostgreSQL still refuses user $PG_USER on $PG_HOST:$PG_PORT" >&2
    exit 1
  fi
fi

# --- Redis --------------------------------------------------------------------------------
redis_url=${RELAYPACS_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}
hostport=${redis_url#redis://}
hostport=${hostport%%/*}
r_host=${hostport%%:*}
r_port=${hostport##*:}
redis_ping() { redis-cli -h "$r_host" -p "$r_port" ping | grep -q PONG; }
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "installing Redis (Debian's redis-server package)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends redis-server redis-tools
fi
if ! redis_ping 2>/dev/null; then
  if [ "$r_host" != "127.0.0.1" ] && [ "$r_host" != "localhost" ]; then
    echo "Redis is not reachable on $r_host:$r_port (a remote server: start it there)" >&2
    exit 1
  fi
  # The tests' own Redis: loopback only, nothing written to disk.
  echo "starting Redis on 127.0.0.1:$r_port (log: /tmp/relaypacs-test-redis.log)"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$r_port" --save "" --appendonly no \
    --dir /tmp --logfile /tmp/relaypacs-test-redis.log
  if ! wait_until 10 redis_ping; then
    echo "Redis did not start; see /tmp/relaypacs-test-redis.log" >&2
    exit 1
  fi
fi
