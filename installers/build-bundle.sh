#!/usr/bin/env bash
# Build the agent's offline installer bundles for Debian / Raspberry Pi OS bookworm:
#   dist/relaypacs-agent-<version>-bookworm-<arch>.tar.gz   (arch: amd64, arm64)
# Each holds install.sh, the systemd unit, the settings template, the built web app and every
# wheel the agent needs for that architecture and Python 3.11 (bookworm's), checked against the
# hashes of uv.lock; an air-gapped site copies the one file and runs install.sh.
#
#   make agent-bundle                       # both architectures
#   bash installers/build-bundle.sh amd64   # one (needs `make pwa` first)
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$(command -v uv || echo "$HOME/.local/bin/uv")}
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(amd64 arm64)
[ -f pwa/dist/index.html ] || { echo "build-bundle: pwa/dist is missing: run make pwa" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' agent/pyproject.toml | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "==> building the relaypacs-shared and relaypacs-agent wheels ($version)"
"$UV" build --quiet --wheel --package relaypacs-shared --out-dir "$work/local"
"$UV" build --quiet --wheel --package relaypacs-agent --out-dir "$work/local"

out_dir=${BUNDLE_OUT:-dist}
mkdir -p "$out_dir"
for arch in "${archs[@]}"; do
    case "$arch" in
        amd64) machine=x86_64 ;;
        arm64) machine=aarch64 ;;
        *) echo "build-bundle: unknown architecture $arch (amd64 or arm64)" >&2; exit 2 ;;
    esac
    name="relaypacs-agent-$version-bookworm-$arch"
    out="$work/$name"
    mkdir -p "$out/wheels"
    echo "==> $arch: downloading the third-party wheels for CPython 3.11 (hashes from uv.lock)"
    # Bookworm has glibc 2.36: any manylinux wheel up to that runs there.
    platforms=()
    for tag in manylinux_2_36 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
        manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 \
        manylinux1; do
        platforms+=(--platform "${tag}_${machine}")
    done
    "$UV" tool run --quiet --from pip pip download --quiet --disable-pip-version-check \
        --only-binary=:all: --no-deps --require-hashes \
        --implementation cp --python-version 3.11 "${platforms[@]}" \
        -r deploy/docker/agent-requirements.txt -d "$out/wheels"
    cp "$work"/local/*.whl "$out/wheels/"
    cp installers/debian/install.sh installers/debian/relaypacs-agent.service \
        installers/debian/agent.env "$out/"
    cp installers/debian/README.txt "$out/README.txt"
    cp -a pwa/dist "$out/pwa"
    echo "$version" >"$out/VERSION"
    echo "$arch" >"$out/ARCH"
    (cd "$out" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum >SHA256SUMS)
    tar -C "$work" --owner=0 --group=0 -czf "$out_dir/$name.tar.gz" "$name"
    (cd "$out_dir" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
    size=$(du -h "$out_dir/$name.tar.gz" | cut -f1)
    echo "==> $out_dir/$name.tar.gz ($size, $(ls "$out/wheels" | wc -l) wheels)"
done
