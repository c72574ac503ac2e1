#!/usr/bin/env bash
# Proves that the local cluster left nothing behind after down.sh: no process naming the state
# dir (components, shims, sandboxes), no mount under it, no pod bridge, no CNI chain of our
# network, no kube-proxy or kube-router chain or ipset, no pod cgroup. Prints each leftover; exit status 1 if any.
# Read-only: CI runs it after `down.sh` (down.sh also ends with it).
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
vg_load_env

problems=0
leftover() { echo "leftover: $*" >&2; problems=$((problems + 1)); }

for name in "${VG_COMPONENTS[@]}"; do
  if pid=$(vg_pid "$name"); then leftover "process $name (pid $pid)"; fi
done
for pid in $(vg_dir_pids); do
  leftover "process $pid: $(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | cut -c1-160)"
done
while read -r m; do [ -n "$m" ] && leftover "mount $m"; done < <(vg_mounts)
# Host-wide names are ours to check only where up.sh recorded them.
if [ -f "$VG_DIR/cluster.env" ]; then
  if ip link show "$VG_BRIDGE" >/dev/null 2>&1; then leftover "bridge $VG_BRIDGE"; fi
  for table in mangle nat filter; do
    for chain in $(vg_cni_chains "$table"); do leftover "iptables -t $table chain $chain"; done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-HOSTPORT-)/ { print $2 }'); do
      leftover "iptables -t $table chain $chain"
    done
  done
  for set in $(vg_kube_router_ipsets); do leftover "ipset $set"; done
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    if [ -d "$d" ]; then leftover "cgroup $d"; fi
  done
  for link in /var/log/containers/*; do
    if [ -L "$link" ] && [[ $(readlink "$link") == "$VG_DIR/"* ]]; then leftover "log link $link"; fi
  done
  for result in /var/lib/cni/results/"$VG_CNI_NETWORK"-*; do
    if [ -e "$result" ]; then leftover "CNI result cache $result"; fi
  done
  listening=$(ss -xlH 2>/dev/null | awk '{ print $5 }')
  for sock in /run/containerd/s/*; do
    if [ -S "$sock" ] && ! grep -qxF "$sock" <<< "$listening"; then leftover "dead shim socket $sock"; fi
  done
  if [ -S /var/lib/kubelet/device-plugins/kubelet.sock ]; then
    leftover "kubelet socket /var/lib/kubelet/device-plugins/kubelet.sock"
  fi
fi

if [ "$problems" -gt 0 ]; then
  echo "check-clean: $problems leftovers of the cluster in $VG_DIR" >&2
  exit 1
fi
echo "check-clean: nothing of the cluster in $VG_DIR is left" >&2
