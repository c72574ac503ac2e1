# Configuration files of the local cluster's node components (sourced by up.sh). Each setting that
# is not a default says why: most exist because these test VMs run cgroup v1, lack
# CAP_SYS_RESOURCE and must not touch the host's own container runtime or CNI setup.
# shellcheck shell=bash

# overlayfs when the kernel lets us mount it on the state dir's filesystem, else native (copies).
vg_snapshotter() {
  local t=$VG_DIR/containerd/overlay-probe ok=native
  mkdir -p "$t"/{lower,upper,work,merged}
  if mount -t overlay overlay -o "lowerdir=$t/lower,upperdir=$t/upper,workdir=$t/work" "$t/merged" 2>/dev/null; then
    umount "$t/merged"
    ok=overlayfs
  fi
  rm -rf "$t"
  echo "$ok"
}

vg_write_configs() {
  local snapshotter=$1 c=$VG_DIR/config
  vg_write "$c/containerd.toml" <<EOF
version = 2
root = "$VG_DIR/containerd/root"
state = "$VG_DIR/containerd/state"
# The daemon's own oom_score_adj is left alone: lowering it needs CAP_SYS_RESOURCE.
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$VG_DIR/containerd/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$VG_DIR/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/voltgrid/pause:3.10"
  # Without CAP_SYS_RESOURCE runc cannot set an oom_score_adj below ours and dies with
  # "can't get final child's PID from pipe"; clamp the kubelet's values instead.
  restrict_oom_score_adj = true
  disable_apparmor = true
  # Network namespaces of pods live in the state dir, so down.sh finds them.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$snapshotter"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$VG_DIR/runc"
        SystemdCgroup = false
    # gVisor through the runc shim: the wrapper adapts Debian's runsc to it (see runsc-wrapper.sh).
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc.options]
        BinaryName = "$VG_HERE/runsc-wrapper.sh"
        Root = "$VG_DIR/runsc/root"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$VG_DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF

  # ipMasq off: pods need no NAT to reach the host, each other or Services (kube-proxy
  # masquerades those), and the bridge plugin cannot remove a pod's masquerade chain once gVisor
  # has taken the pod's addresses off its interface. So pods have no egress beyond this machine.
  vg_write "$VG_DIR/cni/net.d/10-voltgrid.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$VG_CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$VG_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$VG_POD_CIDR", "gateway": "$VG_NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$VG_DIR/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  vg_write "$c/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $VG_KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $VG_DIR/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $VG_DIR/pki/kubelet-serving.crt
tlsPrivateKeyFile: $VG_DIR/pki/kubelet-serving.key
containerRuntimeEndpoint: unix://$VG_DIR/containerd/containerd.sock
# These VMs run cgroup v1 (in maintenance mode upstream); the kubelet refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: cluster.local
podLogsDir: $VG_DIR/pod-logs
volumePluginDir: $VG_DIR/kubelet/volume-plugins
serializeImagePulls: false
# Test machines run with full disks more often than real nodes: do not evict or GC for space.
evictionHard: {memory.available: 50Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
fileCheckFrequency: 10s
maxPods: 250
EOF

  vg_write "$c/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $VG_DIR/config/kube-proxy.kubeconfig}
hostnameOverride: $VG_NODE_NAME
mode: iptables
clusterCIDR: $VG_POD_CIDR
bindAddress: 127.0.0.1
nodePortAddresses: [primary]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Masquerade all Service traffic: replies then return through the host even between two pods
# on the same bridge, whether or not br_netfilter is loaded.
iptables: {masqueradeAll: true}
# Leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}
