#!/usr/bin/env bash
# Install uv into ~/.local/bin when it is not there, with nothing but python3's standard library:
# stock Debian has neither pip nor venv, and refuses `pip install --user` (PEP 668). The wheel
# for this machine comes from PyPI's simple index and is checked against the index's sha256.
set -euo pipefail
if command -v uv >/dev/null 2>&1 || [ -x "$HOME/.local/bin/uv" ]; then exit 0; fi
command -v python3 >/dev/null 2>&1 || { echo "ensure-uv: python3 is needed (apt-get install python3)" >&2; exit 1; }
UV_VERSION=${UV_VERSION:-0.13.9}
echo "installing uv $UV_VERSION from PyPI into $HOME/.local/bin ..."
python3 - "$UV_VERSION" <<'PY'
import hashlib, io, json, os, platform, stat, sys, urllib.request, zipfile

version = sys.argv[1]
machine = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
    platform.machine().lower())
if machine is None:
    sys.exit(f"ensure-uv: no uv wheel for {platform.machine()}; see https://docs.astral.sh/uv/")
index = os.environ.get("UV_BOOTSTRAP_INDEX", "https://pypi.org/simple")
req = urllib.request.Request(f"{index}/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
try:
    files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
except OSError as exc:
    sys.exit(f"ensure-uv: cannot reach {index} ({exc}); install uv by hand: https://docs.astral.sh/uv/")
wanted = [f for f in files if f["filename"].startswith(f"uv-{version}-py3-none-manylinux")
          and f["filename"].endswith(f"_{machine}.whl")]
if not wanted:
    sys.exit(f"ensure-uv: PyPI has no uv {version} wheel for {machine} (set UV_VERSION)")
wheel = min(wanted, key=lambda f: len(f["filename"]))  # plain manylinux, not the musl one
data = urllib.request.urlopen(wheel["url"], timeout=300).read()
if hashlib.sha256(data).hexdigest() != wheel["hashes"]["sha256"]:
    sys.exit("ensure-uv: the downloaded wheel does not match PyPI's sha256; nothing installed")
target = os.path.expanduser("~/.local/bin")
os.makedirs(target, exist_ok=True)
with zipfile.ZipFile(io.BytesIO(data)) as zf:
    for name in zf.namelist():
        base = name.rsplit("/", 1)[-1]
        if "/scripts/" in name and base in ("uv", "uvx"):
            path = os.path.join(target, base)
            with open(path + ".tmp", "wb") as out:
                out.write(zf.read(name))
            os.chmod(path + ".tmp", 0o755)
            os.replace(path + ".tmp", path)
print(f"installed {wheel['filename']} -> {target}/uv")
PY
"$HOME/.local/bin/uv" --version
case ":$PATH:" in
    *":$HOME/.local/bin:"*) ;;
    *) echo "note: $HOME/.local/bin is not on PATH; the Makefile finds uv there anyway (or: export PATH=\$HOME/.local/bin:\$PATH)" ;;
esac
