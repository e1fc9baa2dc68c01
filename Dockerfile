# syntax=docker/dockerfile:1
#
# ehpc-image-exporter container image.
#
#   docker build -t ehpc-image-exporter:0.1.0 \
#     --build-arg SOURCE_URL="$(git remote get-url origin)" .
#   docker run --rm -p 9765:9765 --read-only --tmpfs /tmp \
#     -v "$PWD/config.yaml:/etc/ehpc-image-exporter/config.yaml:ro" \
#     -e ALIBABA_CLOUD_ACCESS_KEY_ID -e ALIBABA_CLOUD_ACCESS_KEY_SECRET ehpc-image-exporter:0.1.0
#
# tests/test_dockerfile.py replays the builder stage's RUN steps below in a fresh venv (there is no Docker
# engine on the build machines), so keep every install step in RUN lines of the `builder` stage.

# Both stages use the same exact base tag: the venv's interpreter symlink points into /usr/local, so the
# runtime stage must carry the very Python the venv was built with.
FROM python:3.11.14-slim-bookworm AS builder

WORKDIR /src

# A venv makes "the application and its dependencies" one directory that the runtime stage copies whole.
RUN python -m venv /opt/venv

# Only what the wheel needs (see .dockerignore): dependency metadata and pins, the README it embeds, the
# package.
COPY pyproject.toml README.md requirements.lock ./
COPY exporter ./exporter

# Runtime dependencies only (no dependency groups: no test or bench tools), at the versions of
# requirements.lock, the set tests/test_audit.py audits, so the image ships what was tested. pip
# compiles the .pyc files here, so the read-only runtime never needs to write bytecode. pip and
# setuptools are removed afterwards because nothing imports them at runtime and they are the usual
# source of scanner findings.
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -c requirements.lock . \
    && /opt/venv/bin/pip uninstall --yes --disable-pip-version-check pip setuptools


FROM python:3.11.14-slim-bookworm

ARG VERSION=0.1.0
ARG SOURCE_URL=""

LABEL org.opencontainers.image.title="ehpc-image-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the health and cross-region replication of Alibaba Cloud E-HPC Instant images" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}"

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only at runtime.
# HOME=/tmp: UID 65532 has no passwd entry, and alibabacloud-credentials looks for profile files under
# $HOME (~/.alibabacloud/credentials.ini, ~/.aliyun/config.json); /tmp is the one writable path (an emptyDir
# or tmpfs) and is normally empty, so the default chain falls through to env, RRSA/OIDC or ECS RAM role.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

COPY --from=builder /opt/venv /opt/venv

# A numeric non-root UID:GID, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532

EXPOSE 9765

# The slim image has no curl; the venv's Python does the probe. HEALTHCHECK_URL lets a run that moves the
# port (or enables TLS via --web.config.file) keep the probe meaningful. /healthz never needs auth.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('HEALTHCHECK_URL', 'http://127.0.0.1:9765/healthz'), timeout=3)"]

ENTRYPOINT ["ehpc-image-exporter"]
CMD ["run", "--config", "/etc/ehpc-image-exporter/config.yaml"]
