#!/usr/bin/env bash
# Build the images the test cluster runs and import them into the node's containerd (no registry is
# reachable, so nothing is ever pulled): the pod sandbox, CoreDNS, metrics-server, the KubeRay
# operator and kube-network-policies (each one static binary from cluster/build.sh on an empty
# filesystem), and the app image (scripts/image/build.sh, offline profile) under the chart's default
# reference. An image already in
# containerd with the same content is not imported again.
#   images.sh            all of them (containerd must be running: cluster/up.sh calls this)
#   images.sh app        only the app image
source "$(dirname "$0")/lib.sh"

DOCKER=${DOCKER:-/usr/bin/docker}
APP_IMAGE=${APP_IMAGE:-$(chart_default_image)}

# containerd names images fully: ray-serve-image-classifier:0.1.0 is docker.io/library/...
full_ref() {
  case $1 in
    */*) case ${1%%/*} in
           *.*|*:*|localhost) echo "$1" ;;
           *) echo "docker.io/$1" ;;
         esac ;;
    *) echo "docker.io/library/$1" ;;
  esac
}

# The label an imported image carries: what it was made from (a binary's or docker image's digest).
imported_from() { ctr_node images ls "name==$(full_ref "$1")" 2>/dev/null | awk 'NR > 1 { print $NF }' | tr ',' '\n' \
  | sed -n 's/^classifier.source=//p'; }

# A Docker daemon this script starts, it stops when it is done (by the pid dockerd.sh recorded); one
# that was already running stays.
ensure_docker() {
  local out
  out=$(bash scripts/image/dockerd.sh start) || { echo "$out" >&2; return 1; }
  echo "$out" >&2
  case $out in *started*) trap 'bash scripts/image/dockerd.sh stop >&2' EXIT ;; esac
}

target_of() { ctr_node images ls "name==$1" 2>/dev/null | awk 'NR > 1 { print $3 }'; }

import_docker_image() {  # REF SOURCE-ID
  local start ref old stale; start=$(now)
  ref=$(full_ref "$1")
  old=$(target_of "$ref")
  "$DOCKER" save "$1" | ctr_node images import - >/dev/null
  ctr_node images label "$ref" "classifier.source=$2" >/dev/null
  # The image this one replaces stays referenced by the runtime's own sha256:<id> name (the kubelet
  # never garbage-collects here): drop those names so its layers are freed.
  if [ -n "$old" ] && [ "$old" != "$(target_of "$ref")" ]; then
    stale=$(ctr_node images ls 2>/dev/null | awk -v d="$old" 'NR > 1 && $3 == d && $1 ~ /^sha256:/ { print $1 }')
    [ -z "$stale" ] || ctr_node images rm $stale >/dev/null
  fi
  log "imported $1 in $(since "$start") s"
}

# binary_image REF BINARY PATH-IN-IMAGE: a one-binary image running as an unprivileged user.
binary_image() {
  local ref=$1 binary=$2 path=$3 sum root
  sum=$(sha256sum "$(readlink -f "$binary")" | cut -c1-32)
  if [ "$(imported_from "$ref")" = "$sum" ]; then return 0; fi
  ensure_docker
  root=$(mktemp -d)
  install -D -m 0755 "$(readlink -f "$binary")" "$root$path"
  mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"
  tar -C "$root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -c . \
    | "$DOCKER" import --change "ENTRYPOINT [\"$path\"]" --change 'USER 65532:65532' - "$ref" >/dev/null
  rm -rf "$root"
  import_docker_image "$ref" "$sum"
}

app_image() {
  ensure_docker
  IMAGE=$APP_IMAGE IMAGE_PROFILE=offline bash scripts/image/build.sh >&2
  # Earlier builds of the app image, untagged by this one, are only disk use (6 GB each).
  "$DOCKER" image prune -f --filter "label=org.opencontainers.image.title=ray-serve-image-classifier" >/dev/null
  local id; id=$("$DOCKER" image inspect -f '{{.Id}}' "$APP_IMAGE" | cut -d: -f2 | cut -c1-32)
  if [ "$(imported_from "$APP_IMAGE")" = "$id" ]; then log "$APP_IMAGE already imported"; return 0; fi
  import_docker_image "$APP_IMAGE" "$id"
}

case "${1:-all}" in
  all)
    binary_image "$PAUSE_IMAGE" "$BIN/pause" /pause
    binary_image "$COREDNS_IMAGE_REPO:$(module_version coredns github.com/coredns/coredns)" "$BIN/coredns" /coredns
    binary_image "$METRICS_SERVER_IMAGE_REPO:$(module_version metrics-server sigs.k8s.io/metrics-server)" \
      "$BIN/metrics-server" /metrics-server
    binary_image "$KUBERAY_IMAGE_REPO:$(module_version kuberay github.com/ray-project/kuberay/ray-operator)" \
      "$BIN/ray-operator" /manager
    binary_image "$NETPOL_IMAGE_REPO:$(module_version netpol sigs.k8s.io/kube-network-policies)" \
      "$BIN/kube-network-policies" /bin/netpol
    app_image ;;
  app) app_image ;;
  *) die "usage: $0 [all|app]" ;;
esac
