#!/usr/bin/env bash
# Builds kube-router from its Go module at the pin below with `go install` (its go.mod has no
# replace directives). The local cluster runs it in firewall-only mode as its NetworkPolicy engine:
# the bridge CNI enforces no policy, and this kernel has iptables, conntrack and ipset but no
# nftables `queue`, so an iptables/ipset engine is the one that works here. Only this pin is served
# to us; it is a test-cluster component, never shipped. Cached outside the repo, keyed by the pin, at
# ~/.cache/voltgrid/kube-router-<version>/kube-router; a second run is a no-op. Prints the path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
version=${KUBE_ROUTER_VERSION:-v2.1.0}
cache=${VOLTGRID_CACHE:-$HOME/.cache/voltgrid}
dir="$cache/kube-router-$version"
if [ -x "$dir/kube-router" ]; then echo "$dir/kube-router"; exit 0; fi
mkdir -p "$dir"
echo "building kube-router $version" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "-s -w" \
  "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$version")
mv "$tmp/kube-router" "$dir/kube-router"
echo "$dir/kube-router"
