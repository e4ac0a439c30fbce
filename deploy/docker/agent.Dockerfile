# RelayPACS agent: watched folder, C-STORE SCP and the LAN web app (PWA), relaying to the hub.
# Build from the repository root; every stage is architecture-neutral (wheels exist for amd64
# and arm64, Node builds the same web app on both), so one command builds both:
#
#   docker build -f deploy/docker/agent.Dockerfile -t relaypacs/agent .
#   docker buildx build --platform linux/amd64,linux/arm64 -f deploy/docker/agent.Dockerfile .
#
# BASE_IMAGE: a Debian-based Python (3.11 or newer; Raspberry Pi OS bookworm has 3.11).
# EXTRA_CA_CERTS: PEM text of extra CA certificates (see hub.Dockerfile).
ARG BASE_IMAGE=python:3.12-slim
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS pwa
ARG EXTRA_CA_CERTS=""
RUN printf '%s\n' "$EXTRA_CA_CERTS" > /tmp/extra-ca.pem
ENV NODE_EXTRA_CA_CERTS=/tmp/extra-ca.pem npm_config_update_notifier=false npm_config_fund=false
WORKDIR /src/pwa
COPY pwa/package.json pwa/package-lock.json ./
RUN npm ci --no-audit --loglevel=error
COPY pwa/ ./
RUN npm run build

FROM ${BASE_IMAGE} AS build
ARG EXTRA_CA_CERTS=""
COPY deploy/docker/install-ca.sh /usr/local/sbin/relaypacs-install-ca
RUN sh /usr/local/sbin/relaypacs-install-ca
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/relaypacs-agent
COPY deploy/docker/agent-requirements.txt /tmp/requirements.txt
RUN /opt/relaypacs-agent/bin/pip install --require-hashes --no-deps -r /tmp/requirements.txt
COPY shared/ /src/relaypacs-shared/
COPY agent/ /src/agent/
RUN /opt/relaypacs-agent/bin/pip install --no-deps /src/relaypacs-shared /src/agent \
    && /opt/relaypacs-agent/bin/pip uninstall -y pip

FROM ${BASE_IMAGE}
ARG EXTRA_CA_CERTS=""
COPY deploy/docker/install-ca.sh /usr/local/sbin/relaypacs-install-ca
RUN sh /usr/local/sbin/relaypacs-install-ca \
    && groupadd --system --gid 10001 relaypacs \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/relaypacs-agent \
       --no-create-home --shell /usr/sbin/nologin relaypacs \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/relaypacs-agent
COPY --from=build /opt/relaypacs-agent /opt/relaypacs-agent
COPY --from=pwa /src/pwa/dist /opt/relaypacs-agent/pwa
ENV PATH=/opt/relaypacs-agent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    RELAYPACS_AGENT_DATA_DIR=/var/lib/relaypacs-agent \
    RELAYPACS_AGENT_PWA_DIR=/opt/relaypacs-agent/pwa \
    RELAYPACS_AGENT_WEB_PORT=8081 \
    RELAYPACS_AGENT_DIMSE_PORT=11112
USER 10001:10001
WORKDIR /var/lib/relaypacs-agent
# 8081: LAN web app (PWA); 11112: DICOM C-STORE SCP.
EXPOSE 8081 11112
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os,urllib.request as u; u.urlopen('http://127.0.0.1:%s/api/v1/info' % os.environ.get('RELAYPACS_AGENT_WEB_PORT', '8081'), timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["relaypacs-agent", "run"]
