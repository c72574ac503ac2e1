#!/usr/bin/env bash
# Starts a real single-node Kubernetes on this machine for the end-to-end tests: etcd,
# containerd (runc, plus gVisor's runsc as RuntimeClass `gvisor`), kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kube-router (firewall-only: the
# NetworkPolicy engine the bridge CNI lacks), as plain background processes.
# Everything (pids, config, certificates, data, logs) lives in $VOLTGRID_CLUSTER_DIR (default
# /tmp/voltgrid-cluster); the admin kubeconfig is $VOLTGRID_CLUSTER_DIR/kubeconfig. Idempotent:
# components already running are kept, missing ones (re)started. down.sh undoes all of it.
#
# Needs root, the Debian packages of install-deps.sh and the binaries of build-k8s.sh (built on
# first use). No network access: images are built locally (e2e/images) and imported.
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
# shellcheck source=certs.sh
source "$VG_HERE/certs.sh"
# shellcheck source=config.sh
source "$VG_HERE/config.sh"

t0=$(date +%s.%N)
timeout=${VOLTGRID_UP_TIMEOUT:-180}
[ "$(id -u)" = 0 ] || vg_die "up.sh needs root (containerd, kubelet, bridge, iptables)"
for tool in etcd containerd runc runsc ctr openssl curl iptables ip umoci skopeo gcc; do
  command -v "$tool" >/dev/null || vg_die "$tool not found: run $VG_HERE/install-deps.sh"
done
[ -x /usr/lib/cni/bridge ] || vg_die "CNI plugins missing: run $VG_HERE/install-deps.sh"

mkdir -p "$VG_DIR"
# One up.sh/down.sh at a time per state dir (the lock file survives down.sh).
exec 9>> "$VG_DIR/lock"
flock -w 600 9 || vg_die "another up.sh/down.sh holds $VG_DIR/lock"
bin=$("$VG_HERE/build-k8s.sh")
kube_router=$("$VG_HERE/build-kube-router.sh")
mkdir -p "$VG_DIR"/{run,logs,config,pki,etcd,containerd,cni/net.d,cni/ipam,kubelet,pod-logs,runsc/root,images}
chmod 700 "$VG_DIR/etcd"
sock=$VG_DIR/containerd/containerd.sock
kubectl() { "$bin/kubectl" --kubeconfig "$VG_DIR/kubeconfig" "$@"; }

# Images build (or come from the cache) while the control plane starts.
(
  "$VG_HERE/../images/build-pause.sh" > "$VG_DIR/images/pause.path"
  "$VG_HERE/../images/build-python.sh" > "$VG_DIR/images/python.path"
) >> "$VG_DIR/logs/images.log" 2>&1 &
images_pid=$!

vg_certs
if vg_pid containerd >/dev/null && [ -f "$VG_DIR/cluster.env" ]; then
  # shellcheck disable=SC1091
  snapshotter=$(. "$VG_DIR/cluster.env" && echo "$VG_SNAPSHOTTER")
else
  snapshotter=$(vg_snapshotter)
fi
vg_write "$VG_DIR/cluster.env" <<EOF
# Written by up.sh; read by down.sh and check-clean.sh. The names this cluster created.
VG_BIN=$bin
VG_BRIDGE=$VG_BRIDGE
VG_POD_CIDR=$VG_POD_CIDR
VG_NODE_IP=$VG_NODE_IP
VG_CNI_NETWORK=$VG_CNI_NETWORK
VG_SNAPSHOTTER=$snapshotter
VG_APISERVER_PORT=$VG_APISERVER_PORT
EOF
vg_write_configs "$snapshotter"

# The pod bridge exists before the first pod so that its address can be the node IP.
ip link show "$VG_BRIDGE" >/dev/null 2>&1 || ip link add "$VG_BRIDGE" type bridge
ip -4 addr show dev "$VG_BRIDGE" | grep -q "inet $VG_NODE_IP/" ||
  ip addr add "$VG_NODE_IP/${VG_POD_CIDR#*/}" dev "$VG_BRIDGE"
ip link set "$VG_BRIDGE" up
# Pods reach Services (DNAT to other pods) through the host.
sysctl -qw net.ipv4.ip_forward=1
# Bridged pod-to-pod traffic must traverse iptables, or no NetworkPolicy applies between pods.
if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
else
  vg_log "warning: no br_netfilter: NetworkPolicies will not apply between pods on the bridge"
fi

peer=$((VG_ETCD_PORT + 1))
vg_start etcd etcd --name voltgrid --data-dir "$VG_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$VG_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$VG_ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "voltgrid=http://127.0.0.1:$peer" --log-level warn
vg_start containerd containerd --config "$VG_DIR/config/containerd.toml"
vg_wait etcd 30 curl -sf "http://127.0.0.1:$VG_ETCD_PORT/health" || vg_die "etcd: see $VG_DIR/logs/etcd.log"

pki=$VG_DIR/pki
vg_start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$VG_ETCD_PORT" \
  --bind-address 0.0.0.0 --secure-port "$VG_APISERVER_PORT" --advertise-address "$VG_NODE_IP" \
  --service-cluster-ip-range "$VG_SERVICE_CIDR" \
  --client-ca-file "$pki/ca.crt" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$pki/ca.crt" \
  --kubelet-preferred-address-types Hostname,InternalIP \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --authorization-mode Node,RBAC --allow-privileged=true \
  --enable-aggregator-routing=true --profiling=false \
  --cert-dir "$VG_DIR/pki/apiserver-generated"

vg_wait containerd 30 ctr -a "$sock" version || vg_die "containerd: see $VG_DIR/logs/containerd.log"

vg_start kubelet "$bin/kubelet" --config "$VG_DIR/config/kubelet.yaml" \
  --kubeconfig "$VG_DIR/config/kubelet.kubeconfig" \
  --hostname-override "$VG_NODE_NAME" --node-ip "$VG_NODE_IP" \
  --root-dir "$VG_DIR/kubelet" --cert-dir "$VG_DIR/kubelet/pki"

apiserver_ready() {
  curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$VG_APISERVER_PORT/readyz"
}
vg_wait kube-apiserver 60 apiserver_ready || vg_die "kube-apiserver: see $VG_DIR/logs/kube-apiserver.log"

vg_start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$VG_DIR/config/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$VG_DIR/config/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$VG_DIR/config/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --service-cluster-ip-range "$VG_SERVICE_CIDR" \
  --flex-volume-plugin-dir "$VG_DIR/kubelet/volume-plugins"
vg_start kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig "$VG_DIR/config/scheduler.kubeconfig" \
  --authentication-kubeconfig "$VG_DIR/config/scheduler.kubeconfig" \
  --authorization-kubeconfig "$VG_DIR/config/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false
vg_start kube-proxy "$bin/kube-proxy" --config "$VG_DIR/config/kube-proxy.yaml"

wait "$images_pid" || vg_die "image build failed: see $VG_DIR/logs/images.log"
for img in pause python; do
  ctr -a "$sock" -n k8s.io images import --snapshotter "$snapshotter" "$(<"$VG_DIR/images/$img.path")" >/dev/null ||
    vg_die "importing the $img image failed"
done

node_ready() {
  [ "$(kubectl get node "$VG_NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
vg_wait "node $VG_NODE_NAME Ready" "$timeout" node_ready || vg_die "node not Ready: see $VG_DIR/logs/kubelet.log"
kubectl apply -f "$VG_HERE/manifests/" >/dev/null
# NetworkPolicies enforced with iptables and ipsets, from the node object's InternalIP (the bridge
# address): pod egress is matched in INPUT/FORWARD/OUTPUT and, for same-bridge pods, with physdev.
vg_start kube-router "$kube_router" --kubeconfig "$VG_DIR/kubeconfig" --hostname-override "$VG_NODE_NAME" \
  --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
  --enable-ipv4=true --enable-ipv6=false --service-cluster-ip-range "$VG_SERVICE_CIDR" \
  --health-port "$VG_KUBE_ROUTER_HEALTH_PORT" --metrics-port 0
kube_router_ready() {
  curl -sf "http://127.0.0.1:$VG_KUBE_ROUTER_HEALTH_PORT/healthz" >/dev/null &&
    iptables -S FORWARD 2>/dev/null | grep -q -- '-j KUBE-ROUTER-FORWARD'
}
vg_wait kube-router 60 kube_router_ready || vg_die "kube-router: see $VG_DIR/logs/kube-router.log"
vg_wait "default serviceaccount" 60 kubectl get serviceaccount default -n default ||
  vg_die "no default serviceaccount: see $VG_DIR/logs/kube-controller-manager.log"

vg_log "cluster up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s"
vg_log "export KUBECONFIG=$VG_DIR/kubeconfig; kubectl is $bin/kubectl"
