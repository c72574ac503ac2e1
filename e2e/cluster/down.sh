#!/usr/bin/env bash
# Stops the local cluster of up.sh and removes every trace of it: processes (by the pids in the
# state dir, then the containerd shims, containers and gVisor sandboxes left behind), mounts under
# the state dir (kubelet volumes, container rootfs and shm, pod network namespaces), the CNI
# iptables chains of our network, kube-proxy's and kube-router's rules and ipsets, the pod bridge and
# the pods' cgroups.
# The state dir is deleted except logs/, cluster.env and lock (kept for post-mortems; up.sh starts
# fresh next to them). Safe to run twice and when nothing is up. Ends with check-clean.sh.
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

if [ ! -d "$VG_DIR" ]; then vg_log "nothing to stop in $VG_DIR"; exit 0; fi
[ "$(id -u)" = 0 ] || vg_die "down.sh needs root"
VG_BIN=
vg_load_env
# One up.sh/down.sh at a time per state dir (the lock file survives down.sh).
mkdir -p "$VG_DIR"
exec 9>> "$VG_DIR/lock"
flock -w 600 9 || vg_die "another up.sh/down.sh holds $VG_DIR/lock"

# Control plane and node agents first, so nothing restarts the pods being killed below.
# They keep no state of their own (etcd does): a short grace is enough.
VG_STOP_GRACE=3 vg_stop kube-router kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver

# Whatever still names the state dir: containerd shims (-address <state dir socket>), gVisor
# sandboxes and gofers (--root <state dir>), runsc-wrapper waiters; with all their descendants,
# which are the containers' processes. containerd and etcd are stopped last, gracefully.
descendants() {
  local p
  for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    descendants "$p"
    echo "$p"
  done
}
keep=" $(vg_pid containerd || true) $(vg_pid etcd || true) "
for round in 1 2 3; do
  victims=()
  for p in $(vg_dir_pids); do
    [[ $keep == *" $p "* ]] && continue
    victims+=("$p")
    mapfile -t -O "${#victims[@]}" victims < <(descendants "$p")
  done
  [ ${#victims[@]} -gt 0 ] || break
  vg_log "killing ${#victims[@]} leftover pod processes (round $round)"
  kill -KILL "${victims[@]}" 2>/dev/null || true
  sleep 0.3
done
vg_stop containerd
vg_stop etcd

# Mounts, deepest first; a lazy unmount only if a plain one fails.
for round in 1 2 3; do
  mapfile -t mounts < <(vg_mounts)
  [ ${#mounts[@]} -gt 0 ] || break
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
done

# Host-wide leftovers, only for a state dir that up.sh really used (cluster.env names them).
if [ -f "$VG_DIR/cluster.env" ]; then
  # iptables: chains the CNI plugins made for our network (portmap's per-pod chains), the
  # portmap plugin's shared chains once empty; then kube-proxy's rules and the kubelet's canaries.
  for table in nat filter; do
    for chain in $(vg_cni_chains "$table"); do
      vg_ipt_unref "$table" "$chain"
      iptables -t "$table" -F "$chain" 2>/dev/null || true
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  for chain in $(iptables -t nat -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^CNI-HOSTPORT-/ { print $2 }'); do
    rules=$(iptables -t nat -S "$chain" 2>/dev/null || true)
    if [[ $rules != *"-A $chain "* ]]; then
      vg_ipt_unref nat "$chain"
      iptables -t nat -X "$chain" 2>/dev/null || true
    fi
  done
  nat_rules=$(iptables -t nat -S 2>/dev/null || true)
  if [ -n "$VG_BIN" ] && [ -x "$VG_BIN/kube-proxy" ] && [[ $nat_rules == *"-N KUBE-"* ]]; then
    "$VG_BIN/kube-proxy" --cleanup >> "$VG_DIR/logs/kube-proxy.log" 2>&1 || true
  fi
  for table in mangle nat filter; do
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }'); do
      vg_ipt_unref "$table" "$chain"
      iptables -t "$table" -F "$chain" 2>/dev/null || true
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done

  # kube-router's ipsets (pod and policy address sets), free once no rule names them.
  for set in $(vg_kube_router_ipsets); do ipset destroy "$set" 2>/dev/null || true; done

  if ip link show "$VG_BRIDGE" >/dev/null 2>&1; then ip link del "$VG_BRIDGE"; fi

  # Pod cgroups (cgroupfs driver): empty now, removed leaves first.
  for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$root" ] || continue
    for round in 1 2 3 4 5; do
      find "$root" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$root" ] || break
      sleep 0.2
    done
  done

  # Paths the components hardcode outside the state dir. The kubelet links container logs into
  # /var/log/containers and serves device plugins at /var/lib/kubelet/device-plugins/kubelet.sock.
  for link in /var/log/containers/*; do
    if [ -L "$link" ] && [[ $(readlink "$link") == "$VG_DIR/"* ]]; then rm -f "$link"; fi
  done
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  # containerd's shims listen on /run/containerd/s/<sha256 of address/namespace/id>; a shim that
  # was killed, or exited on its own after its sandbox died, leaves its socket. With all of ours
  # dead, any socket there that nothing listens on is such a leftover.
  listening=$(ss -xlH 2>/dev/null | awk '{ print $5 }')
  for sock in /run/containerd/s/*; do
    if [ -S "$sock" ] && ! grep -qxF "$sock" <<< "$listening"; then rm -f "$sock"; fi
  done
  # libcni caches each attachment's result in /var/lib/cni/results: ours, and their loopbacks.
  for result in /var/lib/cni/results/"$VG_CNI_NETWORK"-*; do
    [ -e "$result" ] || continue
    id=${result#/var/lib/cni/results/"$VG_CNI_NETWORK"-}
    rm -f "$result" "/var/lib/cni/results/cni-loopback-${id%-*}-lo"
  done
  # The directories holding those go too, when nothing else uses them.
  rmdir /var/log/containers /var/lib/kubelet/device-plugins /var/lib/kubelet /run/containerd/s \
    /run/containerd /var/lib/cni/results /var/lib/cni 2>/dev/null || true
fi

if [ -n "$(vg_mounts)" ]; then vg_die "mounts remain under $VG_DIR, not deleting it"; fi
find "$VG_DIR" -mindepth 1 -maxdepth 1 ! -name logs ! -name cluster.env ! -name lock -exec rm -rf --one-file-system {} +
vg_log "cluster in $VG_DIR is down"
exec "$VG_HERE/check-clean.sh"
