#!/usr/bin/env bash
# Builds the pod sandbox image localhost/voltgrid/pause:3.10 (containerd's sandbox_image) from
# pause/pause.c: one static binary, one layer. Prints the cached archive's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ref=${1:-localhost/voltgrid/pause:3.10}
stage=$(mktemp -d "${TMPDIR:-/tmp}/vg-pause.XXXXXX")
trap 'rm -rf "$stage"' EXIT
# -static: the image has no libc; fixed flags and sources keep the binary (and the cache key) stable.
gcc -static -Os -s -o "$stage/pause" "$here/pause/pause.c"
"$here/build-image.sh" "$ref" --layer "$stage:/" --entrypoint /pause --user 65535:65535
