#!/usr/bin/env bash
# The unit tests under CPython 3.12 (the hub image's Python), in their own environment
# (.venv-py312), next to the default 3.11 one (the agent's floor: Raspberry Pi OS bookworm).
# Finds a 3.12 from pyenv, uv's managed Pythons or PATH; else asks uv to install one.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$(command -v uv || echo "$HOME/.local/bin/uv")}
py=""
for exe in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.*/bin/python3.12 \
    "$("$UV" python find --no-config --managed-python 3.12 2>/dev/null || true)" \
    "$(command -v python3.12 2>/dev/null || true)"; do
    if [ -n "$exe" ] && [ -x "$exe" ] && "$exe" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
        py=$exe
        break
    fi
done
if [ -z "$py" ]; then
    echo "test-py312: no CPython 3.12 here; trying: uv python install 3.12"
    "$UV" python install 3.12 || {
        echo "test-py312: could not get CPython 3.12 (pyenv install 3.12, or uv python install 3.12 with network)" >&2
        exit 1
    }
    py=$("$UV" python find --managed-python 3.12)
fi
echo "test-py312: $("$py" -V) at $py"
export UV_PROJECT_ENVIRONMENT=.venv-py312
"$UV" sync --quiet --all-packages --frozen --python "$py"
start=$(date +%s)
"$UV" run --python "$py" pytest -q -m "not integration" -p no:cacheprovider "$@"
echo "test-py312: unit tests under $("$py" -V) took $(( $(date +%s) - start )) s"
