#!/usr/bin/env bash
# Builds localhost/voltgrid/voltgrid:dev, the Voltgrid image for the local cluster, without a registry or
# a Docker daemon, on localhost/voltgrid/python:3.11 (build-python.sh). Three layers, so that editing
# the sources re-installs only the last one:
#   deps  the runtime dependencies of pyproject.toml, pinned to the versions .venv runs the tests with
#         (`pip install --target`, bytecode compiled: components start in ~1.5 s instead of ~6 s);
#   libs  the host's shared libraries their compiled extensions link and the base image lacks (libgcc_s);
#   app   the voltgrid wheel (operator/, webhooks/, gpu_slicer/) and a `voltgrid` entrypoint script.
# Like the Dockerfile's image it runs as uid 65532 (the chart's securityContext; Functions using it pass
# the webhook's runAsNonRoot hardening).
# The chart runs it with image.repository=localhost/voltgrid/voltgrid, image.tag=dev, image.pullPolicy=Never.
# (The Dockerfile builds the same package into the published image.)
#
#   build-voltgrid-image.sh [--import]   prints the archive's path; --import also loads it into the
#                                        local cluster's containerd ($VOLTGRID_CLUSTER_DIR).
# Cached by input hash: the same scripts, base image, pins and sources skip pip and the image build
# (~1 s); the dependency layer is kept apart, keyed by the pins alone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ref=localhost/voltgrid/voltgrid:dev
site=/usr/local/lib/python3.11/dist-packages
py=/usr/bin/python3.11
pip=${VOLTGRID_PIP:-$root/.venv/bin/pip}
cache=${VOLTGRID_CACHE:-$HOME/.cache/voltgrid}/images
slug=$(printf '%s' "$ref" | tr '/:' '__')
mkdir -p "$cache"

base=$("$here/build-python.sh" | tail -n1)
requirements=$("$py" -c 'import sys, tomllib; print("\n".join(tomllib.load(sys.stdin.buffer)["project"]["dependencies"]))' \
  < "$root/pyproject.toml")
pins=$("$pip" freeze --exclude-editable --disable-pip-version-check)
deps_key=$(printf '%s\n' "$(sha256sum < "$0")" "$requirements" "$pins" | sha256sum | cut -c1-16)
sources() {  # the package's content as a stable stream
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --exclude=__pycache__ --exclude='*.pyc' \
    -C "$root" -cf - pyproject.toml README.md operator/voltgrid webhooks/voltgrid gpu_slicer/voltgrid
}
key=$( {
  cat "$0" "$here/build-image.sh" "$here/../../charts/voltgrid/Chart.yaml"
  basename "$base"
  echo "$deps_key"
  sources | sha256sum
} | sha256sum | cut -c1-16)
memo="$cache/$slug.key-$key"

if [ -s "$memo" ] && [ -s "$(<"$memo")" ]; then
  archive=$(<"$memo")
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/vg-voltgrid-image.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  deps="$cache/$slug.deps-$deps_key"
  if [ ! -d "$deps" ]; then
    printf '%s\n' "$requirements" > "$work/requirements.txt"
    printf '%s\n' "$pins" > "$work/constraints.txt"
    "$pip" install --quiet --disable-pip-version-check --no-compile --no-warn-script-location \
      --target "$work/deps" -r "$work/requirements.txt" -c "$work/constraints.txt" >&2
    rm -rf "$work/deps/bin"
    # Hash-based bytecode: valid without source mtimes, never re-checked (the root is read-only anyway).
    "$py" -m compileall -q -j0 --invalidation-mode unchecked-hash "$work/deps" >/dev/null
    rm -rf "$cache/$slug.deps-"*
    mv "$work/deps" "$deps"
  fi

  # Shared libraries the extensions link (ldd on the host: the image's interpreter is the host's) that
  # the base image, which carries what python3.11 and its stdlib link, does not have.
  mkdir -p "$work/libs"
  ldd "$py" /usr/lib/python3.11/lib-dynload/*.so 2>/dev/null | awk '/=> \//{print $3}' | sort -u > "$work/base-libs"
  { find "$deps" -name '*.so*' -type f -exec ldd {} + 2>/dev/null || true; } | awk '/=> \//{print $3}' |
    sort -u | comm -23 - "$work/base-libs" > "$work/extra-libs"
  while read -r lib; do
      case $lib in "$deps"/*) continue ;; esac  # bundled by the wheel itself (auditwheel's .libs)
      dest=$(readlink -f "$(dirname "$lib")")/$(basename "$lib")
      mkdir -p "$work/libs$(dirname "$dest")"
      cp -L "$lib" "$work/libs$dest"
  done < "$work/extra-libs"

  # The package: its wheel, installed without dependencies (they are the layer below).
  isolation=()  # the venv's hatchling, when it has one, saves fetching it into an isolated build env
  "$pip" show --quiet hatchling >/dev/null 2>&1 && isolation=(--no-build-isolation)
  "$pip" wheel --quiet --disable-pip-version-check --no-deps "${isolation[@]+"${isolation[@]}"}" --wheel-dir "$work/wheel" "$root" >&2
  "$pip" install --quiet --disable-pip-version-check --no-deps --no-compile --no-warn-script-location \
    --target "$work/app$site" "$work"/wheel/voltgrid-*.whl >&2
  rm -rf "$work/app$site/bin"
  # pip records temp paths (RECORD, direct_url.json); they say nothing about the image.
  find "$work/app$site" -path '*.dist-info/*' \( -name RECORD -o -name direct_url.json \) -delete
  "$py" -m compileall -q -j0 --invalidation-mode unchecked-hash "$work/app$site" >/dev/null
  mkdir -p "$work/app/usr/local/bin"
  cat > "$work/app/usr/local/bin/voltgrid" <<'PY'
#!/usr/bin/python3
import sys

from voltgrid.cli.main import main

sys.exit(main())
PY
  chmod 0755 "$work/app/usr/local/bin/voltgrid"
  archive=$("$here/build-python.sh" "$ref" \
    --layer "$deps:$site" --layer "$work/libs:/" --layer "$work/app:/" \
    --entrypoint /usr/local/bin/voltgrid --env HOME=/tmp --user 65532:65532 \
    --also-tag "voltgrid/voltgrid:$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$here/../../charts/voltgrid/Chart.yaml")" | tail -n1)
  rm -f "$cache/$slug.key-"* "$cache/$slug.inputs-"*
  echo "$archive" > "$memo"
fi

if [ "${1:-}" = "--import" ]; then
  dir=${VOLTGRID_CLUSTER_DIR:-/tmp/voltgrid-cluster}
  # shellcheck disable=SC1091
  source "$dir/cluster.env"
  ctr=(ctr -a "$dir/containerd/containerd.sock" -n k8s.io)
  # The archive's name carries its content key: skip the import (seconds) when containerd has it already.
  digest=$(basename "$archive")
  if [ "$("${ctr[@]}" images ls "name==$ref" 2>/dev/null | awk 'NR>1{print $1}')" != "$ref" ] ||
     [ "$(cat "$dir/run/voltgrid-image.imported" 2>/dev/null)" != "$digest" ]; then
    "${ctr[@]}" images import --snapshotter "$VG_SNAPSHOTTER" "$archive" >&2
    echo "$digest" > "$dir/run/voltgrid-image.imported"
  fi
fi
echo "$archive"
