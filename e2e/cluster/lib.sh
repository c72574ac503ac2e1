# Shared settings and helpers of the local cluster scripts (sourced by up.sh, down.sh,
# check-clean.sh; not run on its own). Everything the cluster writes lives in ONE state dir so
# that down.sh can find and remove all of it; the names below are recorded in $VG_DIR/cluster.env
# by up.sh and read back from there by down.sh, so a teardown acts on what was really set up.
# shellcheck shell=bash
# shellcheck disable=SC2034  # the settings are used by the scripts that source this file

VG_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VG_DIR=${VOLTGRID_CLUSTER_DIR:-/tmp/voltgrid-cluster}
VG_DIR=${VG_DIR%/}

# Network plan. The bridge's own address is the node IP: the apiserver advertises it (pods reach
# it there and through the `kubernetes` Service), the kubelet registers it as InternalIP.
VG_BRIDGE=${VOLTGRID_BRIDGE:-vg0}
VG_POD_CIDR=10.88.0.0/16
VG_NODE_IP=10.88.0.1
VG_SERVICE_CIDR=10.96.0.0/12
VG_SERVICE_IP=10.96.0.1
VG_CNI_NETWORK=voltgrid
VG_NODE_NAME=localhost
VG_APISERVER_PORT=${VOLTGRID_APISERVER_PORT:-6443}
VG_ETCD_PORT=${VOLTGRID_ETCD_PORT:-12379}
VG_KUBELET_PORT=10250
# kube-router's health endpoint (its default, 20244; loopback-only use by up.sh).
VG_KUBE_ROUTER_HEALTH_PORT=${VOLTGRID_KUBE_ROUTER_HEALTH_PORT:-20244}

# Components in start order; down.sh stops them in reverse.
VG_COMPONENTS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router)

vg_load_env() {
  # shellcheck disable=SC1091
  if [ -f "$VG_DIR/cluster.env" ]; then source "$VG_DIR/cluster.env"; fi
}

# vg_write FILE < content: replaces FILE only when the content differs (kube-proxy exits when its
# config file changes, so a second up.sh must not touch identical files).
vg_write() {
  cat > "$1.new"
  if cmp -s "$1.new" "$1"; then rm -f "$1.new"; else mv -f "$1.new" "$1"; fi
}

vg_log() { printf '[voltgrid-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
vg_die() { vg_log "ERROR: $*"; exit 1; }

# The pid recorded for a component, if that process is alive and still that component.
vg_pid() {
  local name=$1 pidfile="$VG_DIR/run/$1.pid" pid cmd
  [ -s "$pidfile" ] || return 1
  pid=$(<"$pidfile")
  [ -r "/proc/$pid/cmdline" ] || return 1
  cmd=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || return 1
  # Guard against pid reuse: our processes always name the state dir on their command line.
  [[ $cmd == *"$VG_DIR"* ]] || return 1
  case $name in containerd|etcd) [[ $cmd == *"$name"* ]] || return 1 ;; esac
  echo "$pid"
}

# vg_start NAME CMD...: run CMD in its own session, stdio to logs/NAME.log, pid to run/NAME.pid.
vg_start() {
  local name=$1; shift
  if vg_pid "$name" >/dev/null; then vg_log "$name already running"; return 0; fi
  printf '\n==== %s start %s\n' "$name" "$(date -Is)" >> "$VG_DIR/logs/$name.log"
  setsid "$@" >> "$VG_DIR/logs/$name.log" 2>&1 < /dev/null 9>&- &
  echo $! > "$VG_DIR/run/$name.pid"
  vg_log "started $name (pid $!)"
}

# vg_stop NAME...: TERM them all, KILL what is left after $VG_STOP_GRACE seconds (default 10).
vg_stop() {
  local name pid i pids=() alive
  for name in "$@"; do
    if pid=$(vg_pid "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      vg_log "stopping $name (pid $pid)"
    fi
    rm -f "$VG_DIR/run/$name.pid"
  done
  for ((i = 0; i < ${VG_STOP_GRACE:-10} * 10; i++)); do
    alive=0
    for pid in "${pids[@]+"${pids[@]}"}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

# vg_wait DESCRIPTION TIMEOUT_SECONDS CMD...: poll CMD until it succeeds.
vg_wait() {
  local what=$1 timeout=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then vg_log "timed out after ${timeout}s waiting for $what"; return 1; fi
    sleep 0.2
  done
}

# Mount points at or below the state dir, deepest first (mountinfo escapes spaces as \040).
vg_mounts() {
  awk -v d="$VG_DIR" '{ m = $5; gsub(/\\040/, " ", m); if (m == d || index(m, d "/") == 1) print m }' \
    /proc/self/mountinfo | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-
}

# Pids of processes (other than this shell and its parents) whose command line names the state dir.
vg_dir_pids() {
  local a=$$ ancestors=" $$ $BASHPID "
  while [ "$a" -gt 1 ] 2>/dev/null; do
    a=$(awk '/^PPid:/{print $2}' "/proc/$a/status" 2>/dev/null || echo 0)
    ancestors+="$a "
  done
  # The dir goes through the environment: awk's own command line must not contain it.
  ps -eo pid=,args= | VG_D="$VG_DIR/" VG_A="$ancestors" \
    awk 'index($0, ENVIRON["VG_D"]) && index(ENVIRON["VG_A"], " " $1 " ") == 0 { print $1 }'
}

# Deletes every rule of iptables table $1 that jumps to chain $2.
vg_ipt_unref() {
  local table=$1 chain=$2 parent n rules
  rules=$(iptables -t "$table" -S 2>/dev/null) || return 0
  for parent in $(awk -v c="$chain" '$1 == "-A" { for (i = 3; i < NF; i++) if ($i == "-j" && $(i + 1) == c) print $2 }' <<< "$rules" | sort -u); do
    for n in $(awk -v p="$parent" -v c="$chain" '$1 == "-A" && $2 == p { k++; for (i = 3; i < NF; i++) if ($i == "-j" && $(i + 1) == c) print k }' <<< "$rules" | sort -rn); do
      iptables -t "$table" -D "$parent" "$n" 2>/dev/null || true
    done
  done
}

# ipsets kube-router made: KUBE-SRC-/KUBE-DST- (policy peers, pods), their TMP- swaps, IPv6 twins.
vg_kube_router_ipsets() {
  command -v ipset >/dev/null || return 0
  ipset list -n 2>/dev/null | grep -E '^(inet6:)?(KUBE-SRC-|KUBE-DST-|TMP-)' || true
}

# Chains in iptables table $1 that CNI created for our network (rules carry its name in a comment).
vg_cni_chains() {
  iptables -t "$1" -S 2>/dev/null |
    awk -v net="name: \\\\\"$VG_CNI_NETWORK\\\\\"" 'index($0, net) && $1 == "-A" { print $2 }
      index($0, net) { for (i = 1; i < NF; i++) if ($i == "-j" && $(i + 1) ~ /^CNI-/) print $(i + 1) }' |
    grep -v -E '^CNI-HOSTPORT-|^(POSTROUTING|PREROUTING|OUTPUT|INPUT|FORWARD)$' | sort -u
}
