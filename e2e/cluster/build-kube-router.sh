#!/usr/bin/env bash
# Builds kube-router from its Go module at the pin in versions.env with `go install` (its go.mod has no
# replace directives). The local cluster runs it in firewall-only mode as its NetworkPolicy engine:
# the bridge CNI enforces no policy, and this kernel has iptables, conntrack and ipset but no
# nftables `queue`, so an iptables/ipset engine is the one that works here. Only this pin is served
# to us; it is a test-cluster component, never shipped. Cached outside the repo, keyed by the pin, at
# ~/.cache/voltgrid/kube-router-<version>/kube-router; a second run is a no-op. Prints the path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=gobuild.sh
source "$here/gobuild.sh"
vg_go_install kube-router "${KUBE_ROUTER_VERSION:-v2.1.0}" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
