#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl and kube-proxy from the
# Go module k8s.io/kubernetes at the pin in versions.env, through the wrapper module in k8sbuild/
# (k8s.io/kubernetes cannot be `go install`ed directly: its go.mod replaces the staging modules).
# Binaries are cached outside the repo, keyed by the pin; a second run with the same pin is a no-op.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${VOLTGRID_CACHE:-$HOME/.cache/voltgrid}
bin="$cache/k8s-$K8S_VERSION/bin"
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)

missing=0
for c in "${components[@]}"; do [ -x "$bin/$c" ] || missing=1; done
if [ "$missing" = 0 ]; then echo "$bin"; exit 0; fi

mkdir -p "$bin"
ver=${K8S_VERSION#v}
major=${ver%%.*}; rest=${ver#*.}; minor=${rest%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
cd "$here/k8sbuild"
# Go >= 1.27 makes encoding/json v2 the default, which breaks the apiserver's OpenAPI handler.
export GOEXPERIMENT=nojsonv2 CGO_ENABLED=0 GOFLAGS=-mod=mod
for c in "${components[@]}"; do
  [ -x "$bin/$c" ] && continue
  echo "building $c $K8S_VERSION" >&2
  go build -trimpath -ldflags "$ldflags" -o "$bin/$c.tmp" "k8s.io/kubernetes/cmd/$c"
  mv "$bin/$c.tmp" "$bin/$c"
done
echo "$bin"
