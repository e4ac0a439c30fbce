#!/usr/bin/env bash
# `make demo`: a hub and an agent on embedded defaults (SQLite, local object store, folder
# destination), in the foreground. Ctrl-C or SIGTERM stops both cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$(command -v uv || echo "$HOME/.local/bin/uv")}
DEMO_DIR=${DEMO_DIR:-var/demo}
DEMO_PORT=${DEMO_PORT:-8080}
DEMO_DICOM_PORT=${DEMO_DICOM_PORT:-11112}
DEMO_WEB_PORT=${DEMO_WEB_PORT:-8081}
mkdir -p "$DEMO_DIR/inbox" "$DEMO_DIR/archive"
DEMO_DIR=$(cd "$DEMO_DIR" && pwd)
cat > "$DEMO_DIR/destinations.toml" <<TOML
[[destinations]]
name = "demo-archive"
type = "folder"
path = "$DEMO_DIR/archive"
TOML

export RELAYPACS_HUB_DATA_DIR="$DEMO_DIR/hub"
export RELAYPACS_HUB_DESTINATIONS_FILE="$DEMO_DIR/destinations.toml"
export RELAYPACS_HUB_PORT="$DEMO_PORT"
export RELAYPACS_AGENT_DATA_DIR="$DEMO_DIR/agent"
export RELAYPACS_AGENT_INBOX="$DEMO_DIR/inbox"
export RELAYPACS_AGENT_HUB_URL="http://127.0.0.1:$DEMO_PORT"
export RELAYPACS_AGENT_QUIET_PERIOD_SECONDS=${RELAYPACS_AGENT_QUIET_PERIOD_SECONDS:-5}
export RELAYPACS_AGENT_DIMSE_PORT="$DEMO_DICOM_PORT"
export RELAYPACS_AGENT_DIMSE_AE_TITLE=${RELAYPACS_AGENT_DIMSE_AE_TITLE:-RELAYPACS}
export RELAYPACS_AGENT_WEB_PORT="$DEMO_WEB_PORT"
export RELAYPACS_AGENT_VERIFIER_SYNC_SECONDS=${RELAYPACS_AGENT_VERIFIER_SYNC_SECONDS:-30}

# A demo account for the PWA and the dashboard, made once with a random password kept beside
# the demo's data (development only: the embedded defaults are not for production).
if [ ! -f "$DEMO_DIR/demo-login.txt" ]; then
  demo_password=$(head -c 12 /dev/urandom | base64 | tr -d '/+=' | cut -c1-16)
  RELAYPACS_HUB_BOOTSTRAP_PASSWORD="$demo_password" \
    "$UV" run --frozen relaypacs-hub create-admin --username demo --facility demo >/dev/null
  printf 'username: demo\npassword: %s\n' "$demo_password" > "$DEMO_DIR/demo-login.txt"
  chmod 600 "$DEMO_DIR/demo-login.txt"
fi
demo_password=$(sed -n 's/^password: //p' "$DEMO_DIR/demo-login.txt")

hub_pid=""; agent_pid=""
stop() {
  trap - INT TERM
  echo; echo "stopping RelayPACS demo..."
  [ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null || true
  [ -n "$hub_pid" ] && kill -TERM "$hub_pid" 2>/dev/null || true
  [ -n "$agent_pid" ] && wait "$agent_pid" 2>/dev/null || true
  [ -n "$hub_pid" ] && wait "$hub_pid" 2>/dev/null || true
  echo "stopped."
  exit 0
}
trap stop INT TERM

"$UV" run --frozen relaypacs-hub serve &
hub_pid=$!
for _ in $(seq 1 60); do
  if curl -fs "http://127.0.0.1:$DEMO_PORT/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$hub_pid" 2>/dev/null; then echo "the hub failed to start" >&2; exit 1; fi
  sleep 0.5
done
# The agent enrolls once (a one-time code for facility "demo"), as a production agent does:
# the hub takes no anonymous uploads.
if [ ! -f "$RELAYPACS_AGENT_DATA_DIR/credential.json" ]; then
  code=$("$UV" run --frozen relaypacs-hub enrollment-code --facility demo)
  "$UV" run --frozen relaypacs-agent enroll --hub-url "$RELAYPACS_AGENT_HUB_URL" \
    --code "$code" --name demo-agent >/dev/null
fi
"$UV" run --frozen relaypacs-agent run &
agent_pid=$!

# The commands below are printed to work as printed: uv by its full path when it is not on PATH,
# run from this checkout (the workspace uv needs).
uvp=$(command -v uv >/dev/null 2>&1 && echo uv || echo "$UV")
here=$(pwd)
cat <<TXT

  RelayPACS demo is running (hub on http://127.0.0.1:$DEMO_PORT, agent watching a folder and
  listening for DICOM C-STORE on port $DEMO_DICOM_PORT, AE title $RELAYPACS_AGENT_DIMSE_AE_TITLE).

    upload from a phone/PC:  http://127.0.0.1:$DEMO_WEB_PORT/  (the agent's PWA; sign in as demo / $demo_password)
    hub dashboard:           http://127.0.0.1:$DEMO_PORT/dashboard/  (same login)
    drop DICOM files into:   $DEMO_DIR/inbox/
    they arrive in:          $DEMO_DIR/archive/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    refused files go to:     $DEMO_DIR/agent/quarantine/ (with a .reason.json beside each)
    (run these in $here)
    see what the agent holds: RELAYPACS_AGENT_DATA_DIR=$DEMO_DIR/agent $uvp run relaypacs-agent status
    make a test study:       $uvp run relaypacs-dev gen-study --out $DEMO_DIR/inbox/ct1 --instances 50
    send by C-STORE:         storescu -aec $RELAYPACS_AGENT_DIMSE_AE_TITLE +sd +r 127.0.0.1 $DEMO_DICOM_PORT <folder>
    import a CD or zip:      RELAYPACS_AGENT_DATA_DIR=$DEMO_DIR/agent $uvp run relaypacs-agent import <path>
    refused files:           RELAYPACS_AGENT_DATA_DIR=$DEMO_DIR/agent $uvp run relaypacs-agent quarantine list

  Ctrl-C stops both.

TXT
# Wait for either process; if one dies, stop the other too.
while kill -0 "$hub_pid" 2>/dev/null && kill -0 "$agent_pid" 2>/dev/null; do
  sleep 1 &
  wait $! || true
done
echo "a RelayPACS process exited on its own" >&2
stop
