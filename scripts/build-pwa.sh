#!/usr/bin/env bash
# Build the PWA into pwa/dist, skipping what has not changed: `npm ci` runs only when
# package-lock.json changed since the last install, the build only when a source file did.
set -euo pipefail
cd "$(dirname "$0")/../pwa"
bash ../scripts/ensure-node.sh
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -d node_modules ] || [ "$(cat node_modules/.relaypacs-lock 2>/dev/null)" != "$lock_sum" ]; then
    npm ci --no-audit --no-fund --loglevel=error
    echo "$lock_sum" > node_modules/.relaypacs-lock
fi
shopt -s nullglob
src_sum=$( (find src public scripts -type f -print0; printf '%s\0' ./*.html ./*.json ./*.ts ./*.js ./*.mjs) \
    | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ -f dist/index.html ] && [ "$(cat dist/.relaypacs-sources 2>/dev/null)" = "$src_sum" ]; then
    echo "pwa/dist is up to date with the sources (nothing to build)"
    exit 0
fi
npm run build
npm run size
echo "$src_sum" > dist/.relaypacs-sources
