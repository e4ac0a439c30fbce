#!/usr/bin/env bash
# Write the images' pinned, hashed requirements from uv.lock (run after every `uv lock`):
#   bash deploy/docker/export-requirements.sh          # rewrite the files
#   bash deploy/docker/export-requirements.sh --check  # exit 1 if they drifted from uv.lock
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=${UV:-$(command -v uv || echo "$HOME/.local/bin/uv")}
status=0
for pkg in hub agent; do
    out="deploy/docker/${pkg}-requirements.txt"
    new=$(
        echo "# Third-party requirements of the ${pkg} image, exported from uv.lock."
        echo "# Regenerate with: bash deploy/docker/export-requirements.sh"
        "$UV" export --frozen --package "relaypacs-${pkg}" --no-dev --no-emit-workspace \
            --format requirements-txt --no-header --quiet
    )
    if [[ ${1:-} == --check ]]; then
        if [[ "$new" != "$(cat "$out" 2>/dev/null)" ]]; then
            echo "$out differs from uv.lock: run bash deploy/docker/export-requirements.sh" >&2
            status=1
        fi
    else
        printf '%s\n' "$new" >"$out"
    fi
done
exit $status
