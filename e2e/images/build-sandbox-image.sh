#!/usr/bin/env bash
# Builds localhost/voltgrid/sandbox:dev, the code-interpreter sandbox image for the local cluster: the
# Voltgrid image (build-voltgrid-image.sh: Python 3.11, the agent, ipykernel) plus the languages of
# the sandbox agent from the host's Debian packages (e2e/cluster/install-deps.sh installs them):
# Bash, Node.js, Java (OpenJDK 17 JDK, for jshell), Ruby, PHP (CLI), R, Go, and matplotlib for Python.
# No registry, no Docker daemon: each family's package files (`dpkg -L`, their own Debian
# dependencies of the same family, docs and man pages left out) are one layer, and the shared
# libraries all of them link (found with ldd, less what the base image has) one more below them.
# One image for every language: a sandbox is claimed before its code's language is known, and one
# sandbox may run several (the agent takes the language per execution); see README.md.
#
#   build-sandbox-image.sh [--import]   prints the archive's path; --import also loads it into the
#                                       local cluster's containerd ($VOLTGRID_CLUSTER_DIR).
# Cached by input hash: the same scripts, Voltgrid image and installed package versions skip staging
# and building (~1-2 s, the Voltgrid image's own check included).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ref=localhost/voltgrid/sandbox:dev
cache=${VOLTGRID_CACHE:-$HOME/.cache/voltgrid}/images
slug=$(printf '%s' "$ref" | tr '/:' '__')
mkdir -p "$cache"

# family: root packages; their dependencies named like the pattern join them (the rest of the
# dependencies are shared libraries: the ldd closure below finds those the files really link).
families=(shell node java ruby php r go python)
declare -A roots=(
  [shell]="bash"
  [node]="nodejs"
  [java]="openjdk-17-jdk-headless"
  [ruby]="ruby"
  [php]="php-cli"
  [r]="r-base-core"
  [go]="golang-go"
  [python]="python3-matplotlib"
)
declare -A family_of=(
  [shell]='^$'
  [node]='^(nodejs|libnode[0-9]*)$'
  [java]='^openjdk-17-'
  [ruby]='^(ruby|libruby|rake$|rubygems)'
  [php]='^php'
  [r]='^r-base-core$'
  [go]='^golang'
  # What importing matplotlib and drawing a PNG needs (not the optional extras fontTools depends on:
  # scipy, sympy, pythran, the -dev packages); not the interpreter: the base image's.
  [python]='^(python3-(dateutil|pyparsing|six|numpy|contourpy|cycler|fonttools|kiwisolver|packaging|pil)|python-matplotlib-data|fonts-dejavu-core)$'
)
# What no sandbox needs: documentation, the JDK's jmods (jlink input), Go's race/dynlink archives,
# test data, API lists and the tools `go build` does not run (go vet, pprof, trace, ...), R's and
# PHP's headers.
go_tools='(addr2line|api|cover|dist|doc|fix|nm|objdump|pprof|test2json|trace|vet)'
excluded="^/usr/share/(doc|man|info|lintian|locale|bug|menu|doc-base|bash-completion)/|/jmods/|^/usr/lib/jvm/[^/]*/(demo|man)/|/pkg/linux_amd64_(race|dynlink)/|/testdata/|^/usr/share/go-[^/]*/(test|api|misc)/|/pkg/tool/linux_amd64/$go_tools\$|^/usr/share/R/include/|^/usr/include/"

for f in "${families[@]}"; do
  for p in ${roots[$f]}; do
    [ "$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null)" = installed ] ||
      { echo "build-sandbox-image.sh: package $p missing (run e2e/cluster/install-deps.sh)" >&2; exit 1; }
  done
done

base=$("$here/build-voltgrid-image.sh" | tail -n1)
# Any package installed, removed or upgraded on the host may change a file or a library copied here.
key=$( {
  cat "$0" "$here/build-image.sh"
  basename "$base"
  dpkg-query -W -f '${Package} ${Version} ${db:Status-Status}\n'
} | sha256sum | cut -c1-16)
memo="$cache/$slug.key-$key"
if [ -s "$memo" ] && [ -s "$(<"$memo")" ]; then
  archive=$(<"$memo")
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/vg-sandbox-image.XXXXXX")
  trap 'rm -rf "$work"' EXIT

  installed() { [ "$(dpkg-query -W -f '${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }
  # The family's packages: its roots and, transitively, the installed dependencies matching its pattern.
  closure() {
    local pattern=$1; shift
    local -A seen=()
    local queue=("$@") p dep
    while [ ${#queue[@]} -gt 0 ]; do
      p=${queue[0]}; queue=("${queue[@]:1}")
      [ -z "${seen[$p]:-}" ] || continue
      seen[$p]=1
      echo "$p"
      for dep in $(dpkg-query -W -f '${Depends}, ${Pre-Depends}' "$p" 2>/dev/null |
          sed 's/([^)]*)//g; s/:any//g' | tr ',|' '\n\n' | tr -d ' '); do
        [[ $dep =~ $pattern ]] || continue
        installed "$dep" && queue+=("$dep")
      done
    done
  }

  # Debian's merged /usr: /bin, /sbin, /lib are links in the base image, so files go under /usr
  # (a layer with a real /bin would hide the base's link).
  merged=(--transform 's,^(bin|sbin|usr/sbin)/,usr/bin/,xS' --transform 's,^(lib|lib64)/,usr/\1/,xS')
  stage() {  # stage DIR PACKAGE...: the packages' files (not directories) under DIR, links kept
    local dir=$1 path; shift
    mkdir -p "$dir"
    dpkg -L "$@" | grep -Ev "$excluded" | sort -u | while read -r path; do
      [ -d "$path" ] && [ ! -L "$path" ] && continue
      [ -e "$path" ] || [ -L "$path" ] || continue  # listed, but removed on the host (e.g. by a script)
      printf '%s\n' "${path#/}"
    done > "$dir.files"
    tar -C / --no-recursion -cf - -T "$dir.files" | tar -C "$dir" "${merged[@]}" -xf -
    # A link to an alternative points at what the host chose instead.
    find "$dir" -type l -lname '/etc/alternatives/*' | while read -r link; do
      ln -sfn "$(readlink -f "/${link#"$dir"/}")" "$link"
    done
  }

  for f in "${families[@]}"; do
    # shellcheck disable=SC2086
    mapfile -t pkgs < <(closure "${family_of[$f]}" ${roots[$f]})
    echo "build-sandbox-image.sh: $f: ${pkgs[*]}" >&2
    stage "$work/$f" "${pkgs[@]}"
  done
  # Commands that exist on the host only as alternatives (php, java, jshell, javac): the host's
  # /usr/bin link, pointing straight at the staged file it resolves to.
  for link in /usr/bin/*; do
    [ -L "$link" ] && [[ $(readlink "$link") == /etc/alternatives/* ]] || continue
    target=$(readlink -f "$link")
    for f in "${families[@]}"; do
      if [ -e "$work/$f$target" ] && [ ! -e "$work/$f$link" ]; then
        mkdir -p "$work/$f/usr/bin" && ln -s "$target" "$work/$f$link"
      fi
    done
  done
  # Files the packages' maintainer scripts make rather than ship: the JDK's trust store
  # (ca-certificates-java), R's Renviron (ucf, from Renviron.ucf).
  for made in java:/etc/ssl/certs/java/cacerts r:/etc/R/Renviron; do
    f=${made%%:*} path=${made#*:}
    if [ -f "$path" ]; then mkdir -p "$work/$f$(dirname "$path")" && cp "$path" "$work/$f$path"; fi
  done

  # Shared libraries: everything the staged programs and modules link that the base image lacks and
  # no family ships itself, each once, under its merged-/usr path; and the time zone database.
  ldd /usr/bin/python3.11 /usr/lib/python3.11/lib-dynload/*.so 2>/dev/null | awk '/=> \//{print $3}' |
    sort -u > "$work/base-libs"
  # (ldd fails on the scripts and static programs among them: their libraries are none.)
  { find "${families[@]/#/$work/}" -type f \( -perm -u+x -o -name '*.so*' \) -print0 |
      xargs -0 -r -n 200 ldd 2>/dev/null || true; } | awk '/=> \//{print $3}' | sort -u |
    comm -23 - "$work/base-libs" > "$work/libs-needed"
  mkdir -p "$work/libs"
  while read -r lib; do
    case $lib in "$work"/*) continue ;; esac  # a staged library, found through its program's RUNPATH
    dest=$(readlink -f "$(dirname "$lib")")/$(basename "$lib")
    shipped=
    for f in "${families[@]}"; do
      if [ -e "$work/$f$dest" ]; then shipped=1; fi
    done
    [ -n "$shipped" ] && continue
    mkdir -p "$work/libs$(dirname "$dest")"
    cp -L "$lib" "$work/libs$dest"
  done < "$work/libs-needed"
  if installed tzdata; then stage "$work/libs" tzdata; fi
  # The C.UTF-8 locale (libc-bin's; the image's LANG): R, Ruby and PHP read text as UTF-8 with it.
  if [ -d /usr/lib/locale/C.utf8 ]; then
    mkdir -p "$work/libs/usr/lib/locale" && cp -a /usr/lib/locale/C.utf8 "$work/libs/usr/lib/locale/"
  fi

  layers=(--layer "$work/libs:/")
  for f in "${families[@]}"; do layers+=(--layer "$work/$f:/"); done
  du -sm "$work/libs" "${families[@]/#/$work/}" | sed "s,$work/,," | tr '\n' ' ' >&2
  echo "(MiB per layer)" >&2
  archive=$("$here/build-image.sh" "$ref" --base "$base" "${layers[@]}" | tail -n1)
  rm -f "$cache/$slug.key-"*
  echo "$archive" > "$memo"
fi

if [ "${1:-}" = "--import" ]; then
  dir=${VOLTGRID_CLUSTER_DIR:-/tmp/voltgrid-cluster}
  # shellcheck disable=SC1091
  source "$dir/cluster.env"
  ctr=(ctr -a "$dir/containerd/containerd.sock" -n k8s.io)
  digest=$(basename "$archive")
  if [ "$("${ctr[@]}" images ls "name==$ref" 2>/dev/null | awk 'NR>1{print $1}')" != "$ref" ] ||
     [ "$(cat "$dir/run/sandbox-image.imported" 2>/dev/null)" != "$digest" ]; then
    "${ctr[@]}" images import --snapshotter "$VG_SNAPSHOTTER" "$archive" >&2
    echo "$digest" > "$dir/run/sandbox-image.imported"
  fi
fi
echo "$archive"
