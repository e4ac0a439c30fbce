#!/usr/bin/env bash
# Node.js 20.19 or newer (the PWA's build tools need it), or a clear error saying how to get it.
# Debian bookworm's own nodejs package is 18: too old.
set -euo pipefail
need_major=20 need_minor=19
how="install Node.js 22 LTS (or 20.19+): https://nodejs.org/en/download (Debian: the NodeSource
packages, or nvm) so that \`node --version\` prints v20.19 or newer, then run make again"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "Node.js and npm are needed to build the web app (PWA and dashboard) and are not installed." >&2
    echo "$how" >&2
    exit 1
fi
version=$(node --version | sed 's/^v//')
major=${version%%.*} rest=${version#*.}
minor=${rest%%.*}
if [ "$major" -lt "$need_major" ] || { [ "$major" -eq "$need_major" ] && [ "$minor" -lt "$need_minor" ]; }; then
    echo "Node.js $version is too old: the web app's build needs $need_major.$need_minor or newer." >&2
    echo "$how" >&2
    exit 1
fi
