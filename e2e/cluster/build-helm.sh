#!/usr/bin/env bash
# Builds the helm CLI from its Go module (helm.sh/helm/v3 at the pin below) with `go install`:
# helm's go.mod has no replace directives, so no wrapper module is needed. The binary is cached
# outside the repo, keyed by the pin, at ~/.cache/voltgrid/helm-<version>/helm (the chart tests look
# for it there); a second run with the same pin is a no-op. Prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
version=${HELM_VERSION:-v3.22.0}
cache=${VOLTGRID_CACHE:-$HOME/.cache/voltgrid}
dir="$cache/helm-$version"
if [ -x "$dir/helm" ]; then echo "$dir/helm"; exit 0; fi
mkdir -p "$dir"
echo "building helm $version" >&2
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Module mode outside any module: `go install pkg@version` resolves helm's own go.mod, pinned.
(cd "$tmp" && CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$version")
mv "$tmp/helm" "$dir/helm"
echo "$dir/helm"
