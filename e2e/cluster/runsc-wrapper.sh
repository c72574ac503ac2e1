#!/usr/bin/env bash
# Runs Debian's gVisor (runsc, release 20221219) under containerd's runc shim
# (io.containerd.runc.v2 with BinaryName = this script), on these test VMs. The shim calls this
# with runc's command line; four things differ from plain `runsc`:
#
# 1. Flags: always --platform=ptrace (no KVM here) --network=sandbox (gVisor's netstack in the
#    pod's network namespace); state under the shim's --root (containerd's `Root` option).
# 2. runsc decides it is in the host network namespace when /proc/sys/net/core/rmem_default
#    exists, which on kernel 6.18 it does in every namespace ("cannot run with network enabled in
#    root network namespace"). The sandbox's create/start run in a private mount namespace where
#    a tmpfs over /proc/sys binds back everything except net/ (hiding all of /proc/sys makes the
#    sandbox panic reading vm/mmap_min_addr).
# 3. For an app container, `runsc start` hands the container its own stdio (the shim gives it
#    to `create` instead) and leaves the gofer holding the shim's output pipe, so StartContainer
#    hangs; `runsc create` also reports the sandbox's PID, which never exits with the container.
#    So `create` starts a waiter that owns the container's stdio and writes its own PID to the
#    shim's --pid-file; `start` tells it to run `runsc start` (with that stdio) and `runsc wait`,
#    and the waiter exits with the container's exit code, which the shim (a subreaper) reaps.
# 4. kill/delete of a container that never started or is already gone answer the way the shim
#    treats as "already finished" instead of failing the pod's teardown.
set -euo pipefail
RUNSC=${VOLTGRID_RUNSC:-/usr/bin/runsc}
self=$(readlink -f "$0")

# runc's global flags, as the shim passes them (before the subcommand).
root='' globals=()
while [ $# -gt 0 ]; do
  case $1 in
    --root) root=$2; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --log|--log-format) globals+=("$1=$2"); shift 2 ;;
    --systemd-cgroup) globals+=("$1"); shift ;;
    --*) globals+=("$1"); shift ;;
    *) break ;;
  esac
done
sub=${1:-help}
[ $# -gt 0 ] && shift
[ -n "$root" ] || { echo "runsc-wrapper: --root is required (containerd's Root option)" >&2; exit 1; }
# $root is <Root option>/<containerd namespace>; our own files sit beside it.
base=$(dirname "$(dirname "$root")")
mkdir -p "$root" "$base/waiters"
flags=(--root="$root" --platform=ptrace --network=sandbox "${globals[@]+"${globals[@]}"}")
if [ -e "$base/debug" ]; then flags+=(--debug --debug-log="$base/debug-logs/"); fi
runsc() { "$RUNSC" "${flags[@]}" "$@"; }
note() { printf '%s %s\n' "$(date +%T.%N)" "$*" >> "$base/wrapper.log"; }
trap 'rc=$?; [ $rc = 0 ] || note "exit $rc: $sub $* (line $LINENO)"' EXIT

# The last non-flag argument of a subcommand is the container id.
container_id() {
  local id=''
  while [ $# -gt 0 ]; do
    case $1 in
      --bundle|-b|--pid-file|--console-socket|--preserve-fds|--process|-p|--format|-f) shift ;;
      -*) ;;
      *) id=$1 ;;
    esac
    shift
  done
  echo "$id"
}

# Runs "$@" in a private mount namespace whose /proc/sys has no net/ (point 2).
without_proc_sys_net() {
  unshare -m --propagation slave -- "$self" "${globals[@]+"${globals[@]}"}" --root "$root" __hide-net "$@"
}

hide_net() {
  local real="$base/procsys" e n
  mkdir -p "$real"
  mount --bind /proc/sys "$real"
  mount -t tmpfs -o mode=0555,size=64k voltgrid-procsys /proc/sys
  for e in "$real"/*; do
    n=${e##*/}
    [ "$n" = net ] && continue
    if [ -d "$e" ]; then mkdir "/proc/sys/$n"; else touch "/proc/sys/$n"; fi
    mount --bind "$e" "/proc/sys/$n"
  done
  umount -l "$real"
  exec "$RUNSC" "${flags[@]}" "$@"
}

# The waiter of an app container (point 3); runs with the container's stdio.
waiter() {
  local id=$1 wd=$2 pidfile=$3 go='' rc=0 status
  echo "$BASHPID" > "$wd/waiter.pid"
  printf %s "$BASHPID" > "$pidfile.tmp" && mv "$pidfile.tmp" "$pidfile"
  read -r go < "$wd/go" || true
  [ "$go" = start ] || exit 137
  # runsc hands its own stdio to the container: no redirection here. Its errors also go to --log.
  runsc start "$id" || rc=$?
  echo "$rc" > "$wd/started.tmp" && mv "$wd/started.tmp" "$wd/started"
  [ "$rc" = 0 ] || exit 1
  status=$(runsc wait "$id" 2>> "$wd/wait.err" | sed -n 's/.*"exitStatus": *\([0-9-]*\).*/\1/p')
  exit "${status:-255}"
}

exists() { runsc state "$1" >/dev/null 2>&1; }

# Ends the waiter of container $1 (by its recorded pid, if that is still the waiter).
end_waiter() {
  local wd=$base/waiters/$1 pid cmd
  pid=$(cat "$wd/waiter.pid" 2>/dev/null) || return 0
  cmd=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || return 0
  if [[ $cmd == *"__waiter $1 "* ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
}

case $sub in
  __hide-net) hide_net "$@" ;;
  __waiter) waiter "$@" ;;
  create)
    id=$(container_id "$@")
    args=("$@") bundle='' pidfile=''
    for ((i = 0; i < ${#args[@]}; i++)); do
      case ${args[i]} in
        --bundle|-b) bundle=${args[i + 1]} ;;
        --pid-file) pidfile=${args[i + 1]} ;;
      esac
    done
    if ! grep -q '"io.kubernetes.cri.container-type": *"container"' "$bundle/config.json" 2>/dev/null; then
      note "create sandbox $id"
      without_proc_sys_net create "$@"
      exit
    fi
    note "create container $id"
    wd=$base/waiters/$id
    rm -rf "$wd" && mkdir -p "$wd" && mkfifo "$wd/go"
    # runsc's pid file would name the sandbox: it goes to the side, the waiter's pid to the shim.
    for ((i = 0; i < ${#args[@]}; i++)); do
      [ "${args[i]}" = --pid-file ] && args[i + 1]=$wd/runsc.pid
    done
    if ! runsc create "${args[@]}" < /dev/null > "$wd/create.out" 2>&1; then
      cat "$wd/create.out" >&2
      exit 1
    fi
    "$self" "${globals[@]+"${globals[@]}"}" --root "$root" __waiter "$id" "$wd" "$pidfile" &
    for ((i = 0; i < 200; i++)); do [ -s "$pidfile" ] && exit 0; sleep 0.05; done
    echo "runsc-wrapper: waiter of $id did not start" >&2
    exit 1
    ;;
  start)
    id=$(container_id "$@")
    wd=$base/waiters/$id
    if [ ! -p "$wd/go" ]; then
      note "start sandbox $id"
      without_proc_sys_net start "$@"
      exit
    fi
    note "start container $id"
    # shellcheck disable=SC2016  # $1 is the inner shell's
    timeout 10 bash -c 'echo start > "$1"' _ "$wd/go" || { echo "runsc-wrapper: waiter of $id is gone" >&2; exit 1; }
    for ((i = 0; i < 1200; i++)); do
      if [ -s "$wd/started" ]; then
        rc=$(<"$wd/started")
        exit "$rc"
      fi
      sleep 0.05
    done
    echo "runsc-wrapper: runsc start $id timed out" >&2
    exit 1
    ;;
  kill)
    id=$(container_id "$@")
    wd=$base/waiters/$id
    note "kill $*"
    if [ -p "$wd/go" ] && [ ! -e "$wd/started" ] && [ -s "$wd/runsc.pid" ]; then
      # Created, never started: ending the waiter is ending the container for the shim.
      end_waiter "$id"
      exit 0
    fi
    if ! err=$(runsc kill "$@" 2>&1); then
      # The shim reads "not running" as "already finished"; anything else is a real failure.
      if ! exists "$id" || [[ ${err,,} =~ not\ running|no\ such\ process|already ]]; then
        echo "container not running" >&2
      else
        echo "$err" >&2
      fi
      exit 1
    fi
    ;;
  delete)
    id=$(container_id "$@")
    note "delete $*"
    wd=$base/waiters/$id
    if exists "$id" && ! runsc delete "$@" && exists "$id"; then exit 1; fi
    if [ -d "$wd" ]; then
      end_waiter "$id"
      rm -rf "$wd"
    fi
    exit 0
    ;;
  *)
    exec "$RUNSC" "${flags[@]}" "$sub" "$@"
    ;;
esac
