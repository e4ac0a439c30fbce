# Offline stand-in for redis:7: Debian's Redis 7.
ARG DEBIAN_IMAGE=relaypacs-offline/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        redis-server && rm -rf /var/lib/apt/lists/* && mkdir -p /data
CMD ["redis-server", "--protected-mode", "no"]
