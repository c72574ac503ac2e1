#!/usr/bin/env bash
# Builds localhost/voltgrid/voltgrid:dev, the Voltgrid image for the local cluster, without a registry or
# a Docker daemon: the voltgrid wheel and its dependencies (`pip install --target`) become one layer on
# localhost/voltgrid/python:3.11 (build-python.sh), plus a `voltgrid` entrypoint script. The chart runs
# it with image.repository=localhost/voltgrid/voltgrid, image.tag=dev, image.pullPolicy=Never.
# (The Dockerfile builds the same package into the published image.)
#
#   build-voltgrid-image.sh [--import]   prints the archive's path; --import also loads it into the
#                                        local cluster's containerd ($VOLTGRID_CLUSTER_DIR).
# Cached like every image here: same sources and dependencies, no rebuild.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ref=localhost/voltgrid/voltgrid:dev
pip=${VOLTGRID_PIP:-$root/.venv/bin/pip}

work=$(mktemp -d "${TMPDIR:-/tmp}/vg-voltgrid-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The wheel: operator/, webhooks/ and gpu_slicer/ as the one `voltgrid` namespace package.
"$pip" wheel --quiet --no-deps --wheel-dir "$work/wheel" "$root" >&2
# Dependencies resolved for CPython 3.11 on Linux (the image's interpreter); no bytecode, so the
# layer's content, and so the cache key, depends only on the installed files.
"$pip" install --quiet --no-compile --no-warn-script-location --target "$work/site" "$work"/wheel/voltgrid-*.whl >&2
rm -rf "$work/site/bin"
find "$work/site" -name '__pycache__' -type d -prune -exec rm -rf {} +
# pip records the absolute temp path in RECORD files: normalise it so the cache key is stable.
find "$work/site" -name RECORD -path '*.dist-info/*' -exec sed -i "s|$work/site|/usr/local/lib/python3.11/dist-packages|g" {} +
mkdir -p "$work/bin"
cat > "$work/bin/voltgrid" <<'PY'
#!/usr/bin/python3
import sys

from voltgrid.cli.main import main

sys.exit(main())
PY
chmod 0755 "$work/bin/voltgrid"
archive=$("$here/build-python.sh" "$ref" \
  --layer "$work/site:/usr/local/lib/python3.11/dist-packages" \
  --layer "$work/bin:/usr/local/bin" \
  --entrypoint /usr/local/bin/voltgrid --env HOME=/tmp | tail -n1)
if [ "${1:-}" = "--import" ]; then
  dir=${VOLTGRID_CLUSTER_DIR:-/tmp/voltgrid-cluster}
  # shellcheck disable=SC1091
  source "$dir/cluster.env"
  ctr -a "$dir/containerd/containerd.sock" -n k8s.io images import --snapshotter "$VG_SNAPSHOTTER" "$archive" >&2
fi
echo "$archive"
