#!/usr/bin/env bash
# make cluster: a real single-node Kubernetes on this machine, built from Go modules
# (cluster/build.sh), with containerd + runc and CNI plugins from Debian, CoreDNS, metrics-server,
# the KubeRay operator and kube-network-policies (NetworkPolicy enforcement). Idempotent: every step
# checks what is already there, so running it on a live cluster changes nothing and on a half-started
# one finishes the job.
#
# The node lives in a network namespace of its own ($NETNS), linked to the host by one veth pair:
# the API server listens on $NODE_IP:$APISERVER_PORT, pods and Services have addresses only inside
# that namespace, and kube-proxy's iptables rules are written there, not on the host. Clients on the
# host use .cluster/kubeconfig and reach workloads with `kubectl port-forward` on 127.0.0.1.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "needs root (network namespace, mounts, cgroups)"
for tool in ip nsenter iptables conntrack containerd runc ctr envsubst go; do
  command -v "$tool" >/dev/null || die "'$tool' not found: run cluster/install-deps.sh"
done
[ -x /usr/lib/cni/bridge ] || die "CNI plugins not found in /usr/lib/cni: run cluster/install-deps.sh"

T0=$(now)
mkdir -p "$STATE" "$LOGS" "$PIDS" "$PKI" "$ETC" "$STATE/run" "$CACHE"
timing() { echo "$1 $(since "$2")" >> "$LOGS/timings.log"; log "$1: $(since "$2") s"; }

# --- binaries ------------------------------------------------------------------------------------
t=$(now); bash cluster/build.sh; timing build "$t"

# --- network -------------------------------------------------------------------------------------
network_up() {
  if [ ! -e "/run/netns/$NETNS" ]; then
    # `ip netns add` makes /run/netns a mount point the first time; remember whether we did.
    mountpoint -q /run/netns 2>/dev/null || touch "$STATE/run/made-run-netns-mount"
    ip netns add "$NETNS"
  fi
  netx ip link set lo up
  if ! ip link show "$HOST_VETH" >/dev/null 2>&1; then
    ip link add "$HOST_VETH" type veth peer name "$NODE_VETH" netns "$NETNS"
  fi
  ip addr replace "$HOST_LINK_IP/$LINK_PREFIX" dev "$HOST_VETH"
  ip link set "$HOST_VETH" up
  netx ip addr replace "$NODE_IP/$LINK_PREFIX" dev "$NODE_VETH"
  netx ip link set "$NODE_VETH" up
  # Nothing addressed to a pod or Service may leave the machine, even before kube-proxy has written
  # its rules: on the host these ranges are unreachable; in the node namespace too, except what the
  # pod bridge's more specific route (added by the CNI plugin) covers. The node has no default route.
  local cidr
  for cidr in "$POD_CIDR" "$SERVICE_CIDR"; do
    ip route replace unreachable "$cidr"
    netx ip route replace unreachable "$cidr"
  done
  netx sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
}
network_up

# --- certificates and kubeconfigs (kubeadm's own phases; offline with a pinned version) ----------
K8S_VERSION=$(module_version kubernetes k8s.io/kubernetes)
if [ ! -f "$ETC/admin.conf" ]; then
  cat > "$ETC/kubeadm.yaml" <<EOF
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint: {advertiseAddress: $NODE_IP, bindPort: $APISERVER_PORT}
nodeRegistration: {name: $NODE_NAME}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
clusterName: classifier
kubernetesVersion: $K8S_VERSION
certificatesDir: $PKI
controlPlaneEndpoint: $NODE_IP:$APISERVER_PORT
apiServer: {certSANs: [127.0.0.1, localhost, $NODE_IP]}
etcd: {external: {endpoints: [http://127.0.0.1:2379]}}
networking: {serviceSubnet: $SERVICE_CIDR, podSubnet: $POD_CIDR, dnsDomain: $CLUSTER_DOMAIN}
EOF
  "$BIN/kubeadm" init phase certs all --config "$ETC/kubeadm.yaml" >"$LOGS/kubeadm.log" 2>&1
  "$BIN/kubeadm" init phase kubeconfig all --config "$ETC/kubeadm.yaml" --kubeconfig-dir "$ETC" \
    >>"$LOGS/kubeadm.log" 2>&1
  "$BIN/kubeadm" kubeconfig user --config "$ETC/kubeadm.yaml" --client-name system:kube-proxy \
    > "$ETC/kube-proxy.conf" 2>>"$LOGS/kubeadm.log"
fi

# --- containerd (its own instance: socket, state and config under .cluster) -----------------------
mkdir -p "$STATE/cni/net.d" "$STATE/run/runc" "$CONTAINERD_ROOT"
write_config "$ETC/containerd.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$STATE/run/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/run/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # This machine withholds CAP_SYS_RESOURCE even from root, so the negative oom_score_adj the
  # kubelet asks for (-998 for every pod sandbox) fails in runc ("failed to update
  # /proc/self/oom_score_adj: Permission denied"); clamp to containerd's own score instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$STATE/run/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
# One bridge, addresses from the node's pod range, no masquerading (there is nowhere to go).
write_config "$STATE/cni/net.d/10-classifier.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "classifier",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
              "ranges": [[{"subnet": "$NODE_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
# Network namespaces that exist before containerd starts are not this cluster's pods'.
[ -f "$STATE/run/netns-before" ] || ls /run/netns > "$STATE/run/netns-before" 2>/dev/null || true
t=$(now)
daemon_start containerd containerd --config "$ETC/containerd.toml"
wait_until 60 containerd ctr --address "$CONTAINERD_SOCK" version || { tail -20 "$LOGS/containerd.log" >&2; exit 1; }
timing containerd "$t"

t=$(now); bash cluster/images.sh; timing images "$t"

# --- control plane ---------------------------------------------------------------------------------
t=$(now)
daemon_start etcd "$BIN/etcd" --name classifier --data-dir "$STATE/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster classifier=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
  --unsafe-no-fsync --quota-backend-bytes 2147483648
wait_until 60 etcd netx "$BIN/etcdctl" --endpoints http://127.0.0.1:2379 endpoint health \
  || { tail -20 "$LOGS/etcd.log" >&2; exit 1; }

daemon_start kube-apiserver "$BIN/kube-apiserver" \
  --advertise-address="$NODE_IP" --secure-port="$APISERVER_PORT" \
  --etcd-servers=http://127.0.0.1:2379 \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --service-account-issuer=https://kubernetes.default.svc."$CLUSTER_DOMAIN" \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --enable-aggregator-routing=true --profiling=false
wait_until 120 kube-apiserver "$BIN/kubectl" --kubeconfig "$ETC/super-admin.conf" get --raw /readyz \
  || { tail -30 "$LOGS/kube-apiserver.log" >&2; exit 1; }
# kubeadm's admin.conf is in group kubeadm:cluster-admins, which kubeadm init would bind.
"$BIN/kubectl" --kubeconfig "$ETC/super-admin.conf" create clusterrolebinding kubeadm:cluster-admins \
  --clusterrole=cluster-admin --group=kubeadm:cluster-admins --dry-run=client -o yaml \
  | "$BIN/kubectl" --kubeconfig "$ETC/super-admin.conf" apply --server-side -f - >/dev/null
cp "$ETC/admin.conf" "$KUBECONFIG_ADMIN.tmp" && mv "$KUBECONFIG_ADMIN.tmp" "$KUBECONFIG_ADMIN"

daemon_start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$ETC/controller-manager.conf" --authentication-kubeconfig="$ETC/controller-manager.conf" \
  --authorization-kubeconfig="$ETC/controller-manager.conf" --bind-address=127.0.0.1 \
  --leader-elect=false --use-service-account-credentials=true --cluster-name=classifier \
  --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/sa.key" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --service-cluster-ip-range="$SERVICE_CIDR" --cluster-cidr="$POD_CIDR" --allocate-node-cidrs=true \
  --node-cidr-mask-size=24 --controllers='*,bootstrapsigner,tokencleaner' --profiling=false
daemon_start kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig="$ETC/scheduler.conf" --authentication-kubeconfig="$ETC/scheduler.conf" \
  --authorization-kubeconfig="$ETC/scheduler.conf" --bind-address=127.0.0.1 --leader-elect=false \
  --profiling=false
timing control-plane "$t"

# --- node: kubelet and kube-proxy ------------------------------------------------------------------
t=$(now)
# No upstream resolvers: pods with dnsPolicy Default get none, cluster-first pods only CoreDNS.
: | write_config "$ETC/resolv.conf"
write_config "$ETC/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $ETC/resolv.conf
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
rotateCertificates: false
podLogsDir: $LOGS/pods
# Images cannot be pulled again here: never garbage-collect them, never evict for disk pressure.
imageGCHighThresholdPercent: 100
evictionHard: {nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%", memory.available: "200Mi"}
serializeImagePulls: false
containerLogMaxSize: 20Mi
EOF
daemon_start kubelet "$BIN/kubelet" --config="$ETC/kubelet.yaml" --kubeconfig="$ETC/kubelet.conf" \
  --node-ip="$NODE_IP" --hostname-override="$NODE_NAME" --root-dir="$STATE/kubelet" \
  --cert-dir="$STATE/kubelet/pki" --v=1
write_config "$ETC/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $ETC/kube-proxy.conf}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the conntrack table size alone (a host-wide setting; kind does the same).
conntrack: {maxPerCore: 0}
EOF
daemon_start kube-proxy "$BIN/kube-proxy" --config="$ETC/kube-proxy.yaml"
wait_until 180 "node $NODE_NAME Ready" \
  kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s \
  || { tail -30 "$LOGS/kubelet.log" >&2; exit 1; }
timing node "$t"

# --- add-ons: CRDs, DNS, metrics-server, KubeRay operator ------------------------------------------
t=$(now)
KUBERAY_DIR=$(module_dir kuberay github.com/ray-project/kuberay/ray-operator)
GATEWAY_DIR=$(module_dir crds sigs.k8s.io/gateway-api)
apply() { kc apply --server-side --force-conflicts "$@" >/dev/null; }
# Prometheus operator (PodMonitor, ServiceMonitor, PrometheusRule) and Gateway API CRDs: only the
# API types (no controllers run here), so the project's manifests are checked by this API server.
for crd in "$SHARED_DIR"/crds/monitoring.coreos.com_*.yaml; do apply -f "$crd"; done
apply -f "$GATEWAY_DIR/config/crd/standard"

export COREDNS_IMAGE="$COREDNS_IMAGE_REPO:$(module_version coredns github.com/coredns/coredns)"
export METRICS_SERVER_IMAGE="$METRICS_SERVER_IMAGE_REPO:$(module_version metrics-server sigs.k8s.io/metrics-server)"
export KUBERAY_IMAGE_REPO KUBERAY_VERSION=$(module_version kuberay github.com/ray-project/kuberay/ray-operator)
export DNS_SERVICE_IP CLUSTER_DOMAIN
envsubst '$COREDNS_IMAGE $DNS_SERVICE_IP $CLUSTER_DOMAIN' < cluster/manifests/coredns.yaml | apply -f -
envsubst '$METRICS_SERVER_IMAGE' < cluster/manifests/metrics-server.yaml | apply -f -

rm -rf "$STATE/kuberay" && mkdir -p "$STATE/kuberay"
cp -r "$KUBERAY_DIR/config" "$STATE/kuberay/config" && chmod -R u+w "$STATE/kuberay"
cp cluster/manifests/kuberay-operator/namespace.yaml "$STATE/kuberay/"
envsubst '$KUBERAY_IMAGE_REPO $KUBERAY_VERSION' < cluster/manifests/kuberay-operator/kustomization.yaml \
  > "$STATE/kuberay/kustomization.yaml"
apply -k "$STATE/kuberay"

kc -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
kc -n kube-system rollout status deployment/metrics-server --timeout=180s >/dev/null
kc -n "$KUBERAY_NAMESPACE" rollout status deployment/kuberay-operator --timeout=180s >/dev/null
wait_until 120 "resource metrics (metrics.k8s.io)" kc top node "$NODE_NAME"
# NetworkPolicy enforcement: the bridge CNI plugins enforce none (cluster/netpol.sh).
bash cluster/netpol.sh start
timing add-ons "$t"

timing cluster-up "$T0"
log "ready: export KUBECONFIG=$KUBECONFIG_ADMIN (Kubernetes $K8S_VERSION, KubeRay $KUBERAY_VERSION)"
