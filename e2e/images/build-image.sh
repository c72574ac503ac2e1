#!/usr/bin/env bash
# Builds a container image from local directories, with no registry and no Docker daemon:
# each --layer DIR[:TARGET] becomes one layer (umoci insert), the config comes from the flags, and
# skopeo writes a docker-archive tar that `ctr images import` (and `skopeo`, `podman load`) accept.
#
# The archive is cached under $VOLTGRID_CACHE/images (default ~/.cache/voltgrid/images), keyed by a
# hash of this script, the flags and the content of every layer directory: same inputs, no rebuild.
# Prints the archive's path on stdout. --base starts from an archive this script built (its name
# carries its content key, so the name stands for the content in this image's key) instead of an
# empty image: its layers and config, then the new layers and config on top.
#
#   build-image.sh NAME:TAG [--base ARCHIVE] [--layer DIR[:TARGET]]... [--entrypoint ARG]... [--cmd ARG]...
#                  [--env K=V]... [--workdir DIR] [--user UID[:GID]] [--also-tag NAME:TAG]...
set -euo pipefail

usage() { sed -n '12,13p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
ref=$1; shift
case $ref in *:*) ;; *) echo "build-image.sh: $ref: give NAME:TAG" >&2; exit 2 ;; esac

layers=()
tags=() cfg=() base=
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case $1 in
    --base) base=$2 ;;
    --layer) layers+=("$2") ;;
    --entrypoint) cfg+=(--config.entrypoint "$2") ;;
    --cmd) cfg+=(--config.cmd "$2") ;;
    --env) cfg+=(--config.env "$2") ;;
    --workdir) cfg+=(--config.workingdir "$2") ;;
    --user) cfg+=(--config.user "$2") ;;
    --also-tag) tags+=(--additional-tag "$2") ;;
    *) usage ;;
  esac
  shift 2
done

# A layer's content, as a stable stream: names sorted, times and owners normalised.
layer_stream() {
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --hard-dereference \
    -C "$1" -cf - .
}

key=$( {
  sha256sum < "$0"
  printf '%s\n' "$ref" "${cfg[@]+"${cfg[@]}"}"
  [ -z "$base" ] || echo "base $(basename "$base")"
  # Each layer by its target and content; the source path (often a temp dir) does not count.
  for l in "${layers[@]+"${layers[@]}"}"; do
    [ "${l%%:*}" = "$l" ] && echo / || echo "${l#*:}"
    layer_stream "${l%%:*}" | sha256sum
  done
} | sha256sum | cut -c1-16)

cache=${VOLTGRID_CACHE:-$HOME/.cache/voltgrid}/images
slug=$(printf '%s' "$ref" | tr '/:' '__')
out="$cache/$slug-$key.tar"
if [ -s "$out" ]; then echo "$out"; exit 0; fi

mkdir -p "$cache"
work=$(mktemp -d "${TMPDIR:-/tmp}/vg-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
if [ -n "$base" ]; then
  skopeo --insecure-policy copy --quiet "docker-archive:$base" "oci:$work/oci:img" >&2
else
  umoci init --layout "$work/oci" >&2
  umoci new --image "$work/oci:img" >&2
fi
for l in "${layers[@]+"${layers[@]}"}"; do
  src=${l%%:*} target=/
  [ "$src" = "$l" ] || target=${l#*:}
  umoci insert --image "$work/oci:img" "$src" "$target" >&2
done
if [ ${#cfg[@]} -gt 0 ]; then umoci config --image "$work/oci:img" "${cfg[@]}" >&2; fi
# Extra tags are short names on purpose: `ctr images import` normalises them the way the kubelet
# resolves a pod's image, so the chart's default image name finds this local build.
skopeo --insecure-policy copy --quiet ${tags[@]+"${tags[@]}"} "oci:$work/oci:img" "docker-archive:$work/image.tar:$ref" >&2
# Keep one archive per image name: drop the ones built from older inputs.
find "$cache" -maxdepth 1 -name "$slug-*.tar" ! -name "$slug-$key.tar" -delete
mv "$work/image.tar" "$out"
echo "$out"
