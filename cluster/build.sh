#!/usr/bin/env bash
# Build every binary of the test cluster from the Go modules pinned in cluster/go/*/go.mod (or take
# it from the cache) and link them into .cluster/bin. A module's binaries are cached under a key made
# of its go.mod, go.sum and sources, the Go version and this script, so they rebuild only when one
# of those changes. Third-party source comes from the module proxy into Go's module cache.
source "$(dirname "$0")/lib.sh"

GO_VERSION=$(go env GOVERSION)
SCRIPT_SUM=$(sha256sum "$0" | cut -c1-16)

# build_module DIR NAME=PACKAGE... : build each PACKAGE of module cluster/go/DIR as bin/NAME.
build_module() {
  local dir=$1; shift
  local key out start
  key=$( { echo "$GO_VERSION $SCRIPT_SUM $*"
    for f in "cluster/go/$dir"/go.mod "cluster/go/$dir"/go.sum "cluster/go/$dir"/*.go; do
      if [ -f "$f" ]; then cat "$f"; fi
    done; } | sha256sum | cut -c1-16)
  out=$CACHE/bin/$dir-$key
  if [ ! -f "$out/.complete" ]; then
    start=$(now)
    log "building $dir ($*) into $out"
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    local spec name pkg ldflags
    for spec in "$@"; do
      name=${spec%%=*} pkg=${spec#*=}
      ldflags=$(ldflags_for "$dir")
      (cd "cluster/go/$dir" && CGO_ENABLED=0 go build -trimpath -p "$(nproc)" -ldflags "$ldflags" \
        -o "$out.tmp/$name" "$pkg")
    done
    touch "$out.tmp/.complete"
    rm -rf "$out" && mv "$out.tmp" "$out"
    echo "$dir $(since "$start")" >> "$CACHE/build-times.log"
    log "built $dir in $(since "$start") s"
  fi
  mkdir -p "$BIN"
  for spec in "$@"; do ln -sfn "$out/${spec%%=*}" "$BIN/${spec%%=*}"; done
}

# Version stamps the upstream builds set (hack/lib/version.sh for Kubernetes); without them the
# binaries report v0.0.0 and version checks (helm's kubeVersion, kubeadm) go wrong.
ldflags_for() {
  local flags="-s -w" v
  case $1 in
    kubernetes)
      v=$(module_version kubernetes k8s.io/kubernetes)
      local minor=${v#v1.}; minor=${minor%%.*}
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
        flags+=" -X $p.buildDate=1970-01-01T00:00:00Z"
      done ;;
    metrics-server)
      v=$(module_version metrics-server sigs.k8s.io/metrics-server)
      flags+=" -X k8s.io/client-go/pkg/version.gitVersion=$v" ;;  # as its Makefile does
  esac
  echo "$flags"
}

start=$(now)
build_module pause pause=.
build_module etcd etcd=go.etcd.io/etcd/server/v3 etcdctl=go.etcd.io/etcd/etcdctl/v3
build_module coredns coredns=.
build_module metrics-server metrics-server=sigs.k8s.io/metrics-server/cmd/metrics-server
build_module kuberay ray-operator=github.com/ray-project/kuberay/ray-operator
build_module netpol kube-network-policies=sigs.k8s.io/kube-network-policies/cmd
build_module kubernetes \
  kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
  kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
  kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
  kubelet=k8s.io/kubernetes/cmd/kubelet \
  kube-proxy=k8s.io/kubernetes/cmd/kube-proxy \
  kubectl=k8s.io/kubernetes/cmd/kubectl \
  kubeadm=k8s.io/kubernetes/cmd/kubeadm
log "binaries ready in $(since "$start") s: $BIN"
