#!/usr/bin/env bash
# Renders charts/voltgrid into deploy/voltgrid.yaml: the single manifest for `kubectl apply -f`
# (namespace voltgrid-system, default values, CRDs included). `--stdout` prints it instead of writing
# the file; tests/chart/test_chart.py compares the two and fails on drift.
# Uses the helm built from its Go module by e2e/cluster/build-helm.sh (cached in ~/.cache/voltgrid).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
helm=$(bash "$root/e2e/cluster/build-helm.sh" | tail -n1)
# shellcheck source=manifest-values.env
source "$root/scripts/manifest-values.env"
render() {
  echo "# GENERATED from charts/voltgrid by scripts/render-manifest.sh. Do not edit."
  echo "# Install: see docs/operations.md (\"kubectl apply\"). The gateway's internal-token and sandbox"
  echo "# claim-key Secrets are not in this file (a random value cannot be stable here); create them first:"
  echo "#   kubectl create namespace $MANIFEST_NAMESPACE"
  echo "#   kubectl -n $MANIFEST_NAMESPACE create secret generic $MANIFEST_TOKEN_SECRET --from-literal=token=\$(openssl rand -hex 32)"
  echo "#   openssl genpkey -algorithm ed25519 -out claim-key.pem"
  echo "#   kubectl -n $MANIFEST_NAMESPACE create secret generic $MANIFEST_CLAIMS_SECRET --from-file=claim-key.pem"
  echo "#   kubectl apply --server-side -f deploy/voltgrid.yaml"
  "$helm" template "$MANIFEST_RELEASE" "$root/charts/voltgrid" \
    --namespace "$MANIFEST_NAMESPACE" --kube-version "$MANIFEST_KUBE_VERSION" --include-crds \
    --set namespace.create=true \
    --set gateway.internalToken.existingSecret="$MANIFEST_TOKEN_SECRET" \
    --set sandboxClaims.existingSecret="$MANIFEST_CLAIMS_SECRET"
}
if [ "${1:-}" = "--stdout" ]; then render; exit 0; fi
mkdir -p "$root/deploy"
render > "$root/deploy/voltgrid.yaml.tmp"
mv "$root/deploy/voltgrid.yaml.tmp" "$root/deploy/voltgrid.yaml"
echo "deploy/voltgrid.yaml rendered"
