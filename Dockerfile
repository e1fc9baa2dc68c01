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
# Behind a TLS-intercepting proxy, pip must trust the proxy's CA during the build only: pass the CA bundle
# as the build secret `build-ca` and point PIP_CERT at it (docker and podman take the same flags; see
# docs/deploy.md, "Building behind a TLS-intercepting proxy"):
#
#   docker build --secret id=build-ca,src=/etc/ssl/certs/ca-certificates.crt \
#     --build-arg PIP_CERT=/run/secrets/build-ca -t ehpc-image-exporter:0.1.0 .
#
# tests/test_image.py builds this file with podman and runs the image as built.

# Both stages use the same exact base tag: the venv's interpreter symlink points into /usr/local, so the
# runtime stage must carry the very Python the venv was built with.
FROM python:3.11.14-slim-bookworm AS builder

WORKDIR /src

# A venv makes "the application and its dependencies" one directory that the runtime stage copies whole.
RUN python -m venv /opt/venv

# Only what the wheel needs (see .dockerignore): dependency metadata and pins, the README it embeds, the
# package. The simulator (simulator/, a distribution of its own) and the tests' oracle never enter the
# build context: the image carries no /_sim/ admin API and no cryptography.
COPY pyproject.toml README.md requirements.lock ./
COPY exporter ./exporter

# What `--version` and ehpc_exporter_build_info report (exporter/buildinfo.py); the build context has no
# .git, so the builder passes them: --build-arg REVISION=$(git rev-parse HEAD)
# --build-arg BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ).
ARG REVISION=unknown
ARG BUILD_DATE=unknown
RUN printf '{"revision": "%s", "build_date": "%s"}\n' "$REVISION" "$BUILD_DATE" > exporter/build_info.json

# Path of a CA bundle pip trusts during the build (a TLS-intercepting proxy's CA), normally the `build-ca`
# secret mounted by the next step. An ARG, not an ENV: pip reads it from the RUN environment of this stage
# only, and neither the value nor the file reaches the runtime stage. Declared here, after the steps that
# do not need it, so passing it does not invalidate their cache.
ARG PIP_CERT

# Runtime dependencies only (no dependency groups: no test or bench tools), at the versions of
# requirements.lock, the set tests/test_audit.py audits, so the image ships what was tested. pip
# compiles the .pyc files here, so the read-only runtime never needs to write bytecode. pip and
# setuptools are removed afterwards because nothing imports them at runtime and they are the usual
# source of scanner findings. The `build-ca` secret is mounted for this step only and is never in a layer
# (an engine given no such secret mounts nothing).
RUN --mount=type=secret,id=build-ca \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -c requirements.lock . \
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
