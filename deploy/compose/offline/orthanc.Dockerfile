# Offline stand-in for orthancteam/orthanc: Debian's Orthanc with its DICOMweb plugin.
ARG DEBIAN_IMAGE=relaypacs-offline/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        orthanc orthanc-dicomweb curl && rm -rf /var/lib/apt/lists/*
COPY orthanc.json /etc/relaypacs-orthanc/orthanc.json
RUN mkdir -p /var/lib/orthanc/db
CMD ["Orthanc", "/etc/relaypacs-orthanc/orthanc.json"]
