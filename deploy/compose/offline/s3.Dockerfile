# Offline stand-in for MinIO: moto's S3 server (keeps objects in memory: a restart empties it).
ARG PYTHON_IMAGE=relaypacs-offline/python:3.12-slim
FROM ${PYTHON_IMAGE}
ARG EXTRA_CA_CERTS=""
COPY deploy/docker/install-ca.sh /tmp/install-ca.sh
RUN sh /tmp/install-ca.sh && python3 -m venv /opt/moto \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/moto/bin/pip install --no-cache-dir \
       --disable-pip-version-check "moto[server]==5.2.5"
ENV PATH=/opt/moto/bin:$PATH
CMD ["moto_server", "-H", "0.0.0.0", "-p", "9000"]
