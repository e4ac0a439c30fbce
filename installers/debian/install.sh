#!/usr/bin/env bash
# Install, upgrade or remove the RelayPACS agent on Debian or Raspberry Pi OS (bookworm, amd64
# or arm64), from this bundle alone: the wheels inside are installed with no network (air-gapped
# sites need only this folder and Debian's python3-venv).
#
#   sudo ./install.sh --hub-url https://hub.example.org --enroll-code Xy12... [--name ct-room-1]
#   sudo ./install.sh                      # upgrade: keeps settings, data and the enrollment
#   sudo ./install.sh --rollback           # back to the version installed before this one
#   sudo ./install.sh --uninstall          # keeps /etc/relaypacs and /var/lib/relaypacs-agent
#   sudo ./install.sh --uninstall --purge  # also the data (refused while studies are unsent)
#
# What it makes: system user `relaypacs`; /opt/relaypacs-agent/<version> (a Python venv and the
# web app) with /opt/relaypacs-agent/current pointing at it; /etc/relaypacs/agent.env (settings,
# 0640 root:relaypacs, never overwritten); /var/lib/relaypacs-agent (data, 0750); the hardened
# unit relaypacs-agent.service; /usr/local/bin/relaypacs-agent (runs as `relaypacs` with the
# service's settings). Enrollment comes last, once everything else is in place.
set -euo pipefail

BUNDLE=$(cd "$(dirname "$0")" && pwd)
VERSION=$(cat "$BUNDLE/VERSION")
BUNDLE_ARCH=$(cat "$BUNDLE/ARCH")
PREFIX=/opt/relaypacs-agent
ETC=/etc/relaypacs
DATA=/var/lib/relaypacs-agent
UNIT=/etc/systemd/system/relaypacs-agent.service
WRAPPER=/usr/local/bin/relaypacs-agent
USER_NAME=relaypacs

hub_url="" code="" name="" mode=install purge=0 force=0 start=auto
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --hub-url) hub_url=${2:?--hub-url needs a URL}; shift 2 ;;
        --enroll-code) code=${2:?--enroll-code needs the code from the hub admin}; shift 2 ;;
        --name) name=${2:?--name needs a name}; shift 2 ;;
        --uninstall) mode=uninstall; shift ;;
        --rollback) mode=rollback; shift ;;
        --purge) purge=1; shift ;;
        --force) force=1; shift ;;
        --no-start) start=no; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
have_systemd() { [ "$start" != no ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 ...)"

# --- removal ------------------------------------------------------------------------------
if [ "$mode" = uninstall ]; then
    if [ $purge -eq 1 ] && [ $force -eq 0 ] && [ -e "$DATA/agent.db" ] \
        && [ ! -x "$PREFIX/current/bin/relaypacs-agent" ]; then
        die "cannot check for studies not yet at the hub (the programs are removed already); add --force to delete $DATA anyway"
    fi
    if [ $purge -eq 1 ] && [ $force -eq 0 ] && [ -x "$PREFIX/current/bin/relaypacs-agent" ]; then
        # Nothing is ever lost: refuse to delete studies the hub does not hold yet.
        unsent=$(RELAYPACS_AGENT_DATA_DIR=$DATA "$PREFIX/current/bin/relaypacs-agent" status --json \
            | "$PREFIX/current/bin/python" -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for s in d.get("studies", []) if s["state"] == "receiving"))')
        if [ "$unsent" != 0 ]; then
            die "$unsent study(ies) are not at the hub yet; let them go (relaypacs-agent status) or add --force to delete them"
        fi
    fi
    if have_systemd; then
        systemctl disable --now relaypacs-agent.service 2>/dev/null || true
    fi
    rm -f "$UNIT" "$WRAPPER"
    if have_systemd; then systemctl daemon-reload; fi
    rm -rf "$PREFIX"
    say "removed the agent's programs and its service"
    if [ $purge -eq 1 ]; then
        rm -rf "$DATA" "$ETC/agent.env"
        rmdir "$ETC" 2>/dev/null || true
        if id "$USER_NAME" >/dev/null 2>&1; then userdel "$USER_NAME" 2>/dev/null || true; fi
        say "removed its settings, data and the $USER_NAME user"
    else
        say "kept $ETC/agent.env and $DATA (settings, enrollment, spool); --purge removes them"
    fi
    exit 0
fi

if [ "$mode" = rollback ]; then
    [ -f "$PREFIX/previous" ] || die "no earlier version recorded in $PREFIX/previous"
    prev=$(cat "$PREFIX/previous")
    [ -x "$PREFIX/$prev/bin/relaypacs-agent" ] || die "version $prev is no longer in $PREFIX"
    cur=$(readlink "$PREFIX/current")
    ln -sfn "$prev" "$PREFIX/current.new" && mv -T "$PREFIX/current.new" "$PREFIX/current"
    echo "$cur" >"$PREFIX/previous"
    if have_systemd; then systemctl restart relaypacs-agent.service; fi
    say "back on version $prev"
    exit 0
fi

# --- checks -------------------------------------------------------------------------------
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
[ "$arch" = "$BUNDLE_ARCH" ] || die "this bundle is for $BUNDLE_ARCH; this machine is $arch (use the $arch bundle)"
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-unknown}")
case "$codename" in
    bookworm|trixie) ;;
    *) say "warning: built and tested for Debian bookworm; this is '$codename'" ;;
esac
command -v python3 >/dev/null || die "python3 is missing: apt-get install python3 python3-venv"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "Python 3.11 or newer is needed; this is $(python3 -V 2>&1)"
pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    if apt-get install -y -qq --no-install-recommends "python${pyver}-venv" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends "python${pyver}-venv" >/dev/null 2>&1; }; then
        say "installed python${pyver}-venv from Debian"
    else
        die "Python's venv module is missing and could not be installed: apt-get install python${pyver}-venv (offline: copy its .deb from a machine with the same Debian release)"
    fi
fi
if [ -n "$hub_url" ]; then
    case "$hub_url" in https://*|http://*) ;; *) die "--hub-url must start with https:// (got $hub_url)" ;; esac
fi

# --- user and folders ---------------------------------------------------------------------
if ! id "$USER_NAME" >/dev/null 2>&1; then
    if command -v adduser >/dev/null; then
        adduser --system --group --home "$DATA" --no-create-home --shell /usr/sbin/nologin \
            --quiet "$USER_NAME"
    else
        groupadd --system "$USER_NAME"
        useradd --system --gid "$USER_NAME" --home-dir "$DATA" --no-create-home \
            --shell /usr/sbin/nologin "$USER_NAME"
    fi
    say "created the system user $USER_NAME"
fi
install -d -o root -g "$USER_NAME" -m 0750 "$ETC"
install -d -o "$USER_NAME" -g "$USER_NAME" -m 0750 "$DATA"
# The inbox takes files from staff in the relaypacs group (setgid: new files stay in the group).
install -d -o "$USER_NAME" -g "$USER_NAME" -m 2770 "$DATA/inbox"

# --- programs -----------------------------------------------------------------------------
# Each install gets its own folder (a venv records its own path, so it is built where it runs);
# /opt/relaypacs-agent/current switches to it in one step, and the one before stays for --rollback.
install -d -m 0755 "$PREFIX"
release="$VERSION-$(date -u +%Y%m%d%H%M%S)"
target="$PREFIX/$release"
say "installing RelayPACS agent $VERSION ($arch) from $BUNDLE/wheels (no network)"
python3 -m venv "$target"
if ! "$target/bin/python" -m pip install --quiet --no-index --find-links "$BUNDLE/wheels" \
        --no-cache-dir --disable-pip-version-check relaypacs-agent; then
    rm -rf "$target"
    die "the wheels did not install; nothing was changed"
fi
"$target/bin/python" -m pip uninstall --quiet -y pip >/dev/null 2>&1 || true
cp -a "$BUNDLE/pwa" "$target/pwa"
install -d -m 0755 "$target/share"
install -m 0644 "$BUNDLE/README.txt" "$target/share/README.txt"
if ! "$target/bin/relaypacs-agent" --help >/dev/null; then
    rm -rf "$target"
    die "the new version does not start; nothing was changed"
fi
old=$(readlink "$PREFIX/current" 2>/dev/null || true)
ln -sfn "$release" "$PREFIX/current.new" && mv -T "$PREFIX/current.new" "$PREFIX/current"
if [ -n "$old" ]; then echo "$old" >"$PREFIX/previous"; fi
# Keep the running version and the one before it; older ones go.
for dir in "$PREFIX"/*/; do
    dir=${dir%/}; base=${dir##*/}
    [ -L "$dir" ] && continue
    if [ "$base" != "$release" ] && [ "$base" != "$old" ]; then rm -rf "$dir"; fi
done

cat >"$WRAPPER" <<'EOF'
#!/bin/sh
# relaypacs-agent for administrators: the service's settings, as the service's user.
set -e
if [ ! -r /etc/relaypacs/agent.env ]; then
    echo "relaypacs-agent: cannot read /etc/relaypacs/agent.env (use sudo, or join the relaypacs group)" >&2
    exit 1
fi
set -a
. /etc/relaypacs/agent.env
set +a
if [ "$(id -u)" = 0 ]; then
    exec runuser -u relaypacs -- /opt/relaypacs-agent/current/bin/relaypacs-agent "$@"
fi
exec /opt/relaypacs-agent/current/bin/relaypacs-agent "$@"
EOF
chmod 0755 "$WRAPPER"

# --- settings and the service ---------------------------------------------------------------
if [ ! -e "$ETC/agent.env" ]; then
    url=${hub_url:-https://hub.example.org}
    sed "s|__HUB_URL__|$url|" "$BUNDLE/agent.env" >"$ETC/agent.env.new"
    chown root:"$USER_NAME" "$ETC/agent.env.new" && chmod 0640 "$ETC/agent.env.new"
    mv "$ETC/agent.env.new" "$ETC/agent.env"
    say "wrote $ETC/agent.env (edit it for watched folders, ports, TLS)"
elif [ -n "$hub_url" ] && ! grep -q "^RELAYPACS_AGENT_HUB_URL=$hub_url\$" "$ETC/agent.env"; then
    sed -i "s|^RELAYPACS_AGENT_HUB_URL=.*|RELAYPACS_AGENT_HUB_URL=$hub_url|" "$ETC/agent.env"
    say "set RELAYPACS_AGENT_HUB_URL=$hub_url in $ETC/agent.env"
else
    say "kept $ETC/agent.env"
fi
install -m 0644 "$BUNDLE/relaypacs-agent.service" "$UNIT"

# --- enrollment, last -----------------------------------------------------------------------
if [ -n "$code" ]; then
    [ -n "$hub_url" ] || hub_url=$(sed -n 's/^RELAYPACS_AGENT_HUB_URL=//p' "$ETC/agent.env")
    if [ -e "$DATA/credential.json" ]; then
        say "already enrolled ($DATA/credential.json); the code was not used"
    else
        say "enrolling at $hub_url"
        "$WRAPPER" enroll --hub-url "$hub_url" --code "$code" ${name:+--name "$name"}
    fi
fi

if have_systemd; then
    systemctl daemon-reload
    systemctl enable --quiet relaypacs-agent.service
    if [ -e "$DATA/credential.json" ] || grep -q '^RELAYPACS_AGENT_HUB_TOKEN=.' "$ETC/agent.env"; then
        systemctl restart relaypacs-agent.service
        say "relaypacs-agent.service is running: systemctl status relaypacs-agent; journalctl -u relaypacs-agent"
    else
        say "not started: enroll first (sudo $0 --enroll-code <code>), then it starts"
    fi
else
    say "no systemd here: start it with  runuser -u relaypacs -- env \$(cat $ETC/agent.env | grep -v '^#') $PREFIX/current/bin/relaypacs-agent run"
fi
say "done: RelayPACS agent $VERSION; status: sudo relaypacs-agent status"
