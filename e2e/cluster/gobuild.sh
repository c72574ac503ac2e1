# shellcheck shell=bash
# vg_go_install NAME VERSION PACKAGE [LDFLAGS]: `go install PACKAGE@VERSION` (module mode, outside any
# module, so the module's own go.mod pins everything; only for modules without replace directives),
# static, into ~/.cache/voltgrid/NAME-VERSION/NAME ($VOLTGRID_CACHE overrides the root). A second call
# with the same version is a no-op. Prints the binary's path.
vg_go_install() {
  local name=$1 version=$2 package=$3 ldflags=${4:--s -w}
  local dir="${VOLTGRID_CACHE:-$HOME/.cache/voltgrid}/$name-$version" tmp
  if [ -x "$dir/$name" ]; then echo "$dir/$name"; return 0; fi
  mkdir -p "$dir"
  echo "building $name $version" >&2
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "$ldflags" "$package@$version"); then
    rm -rf "$tmp"
    return 1
  fi
  mv "$tmp/$name" "$dir/$name"
  rm -rf "$tmp"
  echo "$dir/$name"
}
