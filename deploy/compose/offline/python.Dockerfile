# Offline stand-in for python:3.12-slim: the Debian base made by debootstrap plus a CPython 3.12
# tree from the build machine (staged as ./python by compose_test.py).
ARG DEBIAN_IMAGE=relaypacs-offline/debian:bookworm
FROM ${DEBIAN_IMAGE}
COPY python/ /usr/local/
RUN ldconfig && ln -sf python3.12 /usr/local/bin/python3 && ln -sf python3 /usr/local/bin/python \
    && python3 -c "import ssl, sqlite3, ctypes, venv, ensurepip, zlib, lzma, bz2" \
    && python3 --version
CMD ["python3"]
