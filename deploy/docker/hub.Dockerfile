# RelayPACS hub: one image for the API (`relaypacs-hub serve`) and the forwarding workers
# (`relaypacs-hub worker`). Build from the repository root:
#
#   docker build -f deploy/docker/hub.Dockerfile -t relaypacs/hub .
#
# Base images are build arguments so the same file builds from a local or mirrored base
# (BASE_IMAGE must be a Debian-based Python 3.12, NODE_IMAGE a Node >= 20.19).
# EXTRA_CA_CERTS: PEM text of extra CA certificates (a hospital proxy that intercepts TLS),
# trusted while building and at run time, e.g.
#   --build-arg EXTRA_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt)"
ARG BASE_IMAGE=python:3.12-slim
ARG NODE_IMAGE=node:20-bookworm-slim

# --- the web app (dashboard), built with Node in its own stage --------------------------------
FROM ${NODE_IMAGE} AS pwa
ARG EXTRA_CA_CERTS=""
RUN printf '%s\n' "$EXTRA_CA_CERTS" > /tmp/extra-ca.pem
ENV NODE_EXTRA_CA_CERTS=/tmp/extra-ca.pem npm_config_update_notifier=false npm_config_fund=false
WORKDIR /src/pwa
COPY pwa/package.json pwa/package-lock.json ./
RUN npm ci --no-audit --loglevel=error
COPY pwa/ ./
RUN npm run build

# --- Python packages into a virtual environment -----------------------------------------------
FROM ${BASE_IMAGE} AS build
ARG EXTRA_CA_CERTS=""
COPY deploy/docker/install-ca.sh /usr/local/sbin/relaypacs-install-ca
RUN sh /usr/local/sbin/relaypacs-install-ca
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/relaypacs
# Pinned and hashed third-party requirements (exported from uv.lock, see the file's header).
COPY deploy/docker/hub-requirements.txt /tmp/requirements.txt
RUN /opt/relaypacs/bin/pip install --require-hashes --no-deps -r /tmp/requirements.txt
COPY shared/ /src/relaypacs-shared/
COPY hub/ /src/hub/
RUN /opt/relaypacs/bin/pip install --no-deps /src/relaypacs-shared /src/hub \
    && /opt/relaypacs/bin/pip uninstall -y pip

# --- run time ----------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG EXTRA_CA_CERTS=""
COPY deploy/docker/install-ca.sh /usr/local/sbin/relaypacs-install-ca
RUN sh /usr/local/sbin/relaypacs-install-ca \
    && groupadd --system --gid 10001 relaypacs \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/relaypacs --no-create-home \
       --shell /usr/sbin/nologin relaypacs \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/relaypacs
COPY --from=build /opt/relaypacs /opt/relaypacs
COPY --from=pwa /src/pwa/dist /opt/relaypacs/pwa
COPY deploy/docker/healthcheck.py /opt/relaypacs/healthcheck.py
ENV PATH=/opt/relaypacs/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    RELAYPACS_HUB_HOST=0.0.0.0 \
    RELAYPACS_HUB_PORT=8080 \
    RELAYPACS_HUB_DATA_DIR=/var/lib/relaypacs \
    RELAYPACS_HUB_PWA_DIR=/opt/relaypacs/pwa \
    RELAYPACS_HUB_LOG_JSON=true
USER 10001:10001
WORKDIR /var/lib/relaypacs
EXPOSE 8080
# The API answers /readyz once its database, object store and Redis answer; worker containers are
# checked with `healthcheck.py worker` instead (see docker-compose.yml).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "/opt/relaypacs/healthcheck.py", "api"]
# Both commands stop cleanly on SIGTERM (uvicorn's graceful shutdown; the worker finishes or
# releases its jobs).
STOPSIGNAL SIGTERM
CMD ["relaypacs-hub", "serve"]
