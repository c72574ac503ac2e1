#!/usr/bin/env bash
# Builds the helm CLI from its Go module (helm.sh/helm/v3 at the pin in versions.env) with `go install`:
# helm's go.mod has no replace directives, so no wrapper module is needed. The binary is cached
# outside the repo, keyed by the pin, at ~/.cache/voltgrid/helm-<version>/helm (the chart tests look
# for it there); a second run with the same pin is a no-op. Prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=gobuild.sh
source "$here/gobuild.sh"
version=${HELM_VERSION:-v3.22.0}
vg_go_install helm "$version" helm.sh/helm/v3/cmd/helm \
  "-s -w -X helm.sh/helm/v3/internal/version.version=$version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
