#!/bin/sh
# Trust extra CA certificates given as PEM text in $EXTRA_CA_CERTS (build argument), e.g. a
# hospital proxy that intercepts TLS. Without it only the distribution's CAs are trusted.
set -eu
if [ -n "${EXTRA_CA_CERTS:-}" ]; then
    mkdir -p /usr/local/share/ca-certificates
    printf '%s\n' "$EXTRA_CA_CERTS" > /usr/local/share/ca-certificates/relaypacs-extra.crt
fi
if command -v update-ca-certificates >/dev/null 2>&1; then
    update-ca-certificates >/dev/null 2>&1 || update-ca-certificates
elif [ -n "${EXTRA_CA_CERTS:-}" ]; then
    echo "EXTRA_CA_CERTS given but the base image has no update-ca-certificates" >&2
    exit 1
fi
