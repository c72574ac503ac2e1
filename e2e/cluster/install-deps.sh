#!/usr/bin/env bash
# Installs the Debian 12 packages the local cluster runs on (up.sh, e2e/images): etcd, containerd,
# runc, gVisor (runsc), the CNI plugins, the image tools (umoci, skopeo, gcc for the static pause
# binary, busybox-static and python3 for the Python image), the network tools the kubelet and
# kube-proxy call, and the message brokers the trigger tests consume from (rabbitmq-server,
# redis-server: tests/brokers.py starts private ones on loopback; the packages' own services, if
# the package starts them, use other ports and are left alone), and what bench/bench_proxies.py
# compares the gateway with and loads it by (nginx-light, haproxy, wrk: the benchmark starts private
# ones on loopback from configurations in a temp dir; nginx's own service, if the package starts it,
# listens on :80, which nothing here uses, and is left alone), and the sandbox agent's languages
# (bash, nodejs, openjdk-17-jdk-headless for jshell, ruby, php-cli, r-base-core, golang-go,
# python3-matplotlib): tests/sandbox_agent runs each against them, and build-sandbox-image.sh copies
# them into localhost/voltgrid/sandbox:dev. Only missing packages are installed;
# `apt-get update` runs once, when needed.
# The Kubernetes binaries themselves come from build-k8s.sh (Go module), not from here. Services the
# packages may start (etcd on :2379, containerd on /run/containerd) do not clash with the harness's
# own ports, sockets and state dir, so they are left alone.
set -euo pipefail

packages=(
  etcd-server containerd runc runsc containernetworking-plugins
  umoci skopeo gcc libc6-dev busybox-static python3.11 ca-certificates
  ipset conntrack iptables iproute2 socat util-linux mount curl openssl
  rabbitmq-server redis-server
  nginx-light haproxy wrk
  bash nodejs openjdk-17-jdk-headless ruby php-cli r-base-core golang-go python3-matplotlib
)
[ "$(id -u)" = 0 ] || { echo "install-deps.sh: needs root (apt-get)" >&2; exit 1; }

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps.sh: all ${#packages[@]} packages present" >&2
  exit 0
fi
echo "install-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# An index is needed on a fresh machine (empty lists) or when a package is unknown to the cached one.
if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
