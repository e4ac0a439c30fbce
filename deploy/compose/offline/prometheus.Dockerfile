# Offline stand-in for prom/prometheus: Debian's Prometheus, same paths as the official image.
ARG DEBIAN_IMAGE=relaypacs-offline/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        prometheus wget && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
