#!/usr/bin/env bash
# Builds the test tools from Go modules into one directory:
#   controlplane  etcd (embedded), kube-apiserver and kube-controller-manager
#                 in one process (this module); with --node also a node:
#   kubelet, kube-scheduler  from the same k8s.io/kubernetes
#   pause         the pod sandbox's process (./pause)
#   helm          the helm CLI pinned by ../tools/go.mod
#
# Usage: tests/controlplane/build.sh [OUT_DIR]   (default: <repo>/target/tools)
#
# Needs only Go and the Go module proxy. Uses the default GOCACHE/GOMODCACHE,
# so only the first build on a machine is slow (several minutes on 2 cores);
# a binary newer than its module's go.mod, go.sum and *.go files is not rebuilt.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tools="$repo/tests/tools"
out="${1:-$repo/target/tools}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

command -v go >/dev/null 2>&1 || { echo "build.sh: go not found in PATH" >&2; exit 1; }

export CGO_ENABLED=0
goflags=(-trimpath -buildvcs=false)

# mod_version MODDIR MODULE: the version of MODULE required in MODDIR/go.mod
mod_version() {
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$1/go.mod"
}

# up_to_date BIN MODDIR [EXTRA...]: BIN exists and is newer than the module's
# go.mod, go.sum, *.go files and the EXTRA files.
up_to_date() {
  local bin="$1" dir="$2"; shift 2
  [[ -x "$bin" ]] || return 1
  local newer
  newer="$(find "$dir" -maxdepth 1 \( -name go.mod -o -name go.sum -o -name '*.go' \) -newer "$bin" -print -quit)"
  [[ -z "$newer" ]] || return 1
  local f
  for f in "$@"; do
    [[ "$f" -nt "$bin" ]] && return 1
  done
  return 0
}

# build NAME MODDIR PACKAGE LDFLAGS
build() {
  local name="$1" dir="$2" pkg="$3" ldflags="$4"
  local bin="$out/$name" start=$SECONDS
  # -v names each package as it is compiled: show a running count as
  # progress, and pass every other line (compiler errors) through as is.
  (cd "$dir" && go build -v "${goflags[@]}" -ldflags "$ldflags" -o "$bin.tmp.$$" "$pkg" 2>&1) |
    awk '/^[^ #]+$/ { n++; if (n % 100 == 0) { printf "    %d packages compiled (%s)\n", n, $0; fflush() }; next }
         { print; fflush() }
         END { if (n) printf "    %d packages compiled\n", n }'
  mv -f "$bin.tmp.$$" "$bin"
  echo "built $bin in $((SECONDS - start))s"
}

# --- control plane -----------------------------------------------------------
cp_bin="$out/controlplane"
# its own packages in subdirectories (cpuprofile/) count as its sources too
if up_to_date "$cp_bin" "$here" "$here/build.sh" "$here"/cpuprofile/*.go; then
  echo "controlplane is up to date: $cp_bin"
else
  kver="$(mod_version "$here" k8s.io/kubernetes)"
  kmajor="${kver#v}"; kmajor="${kmajor%%.*}"
  kminor="${kver#v*.}"; kminor="${kminor%%.*}"
  echo "building kube-apiserver control plane $kver (first build takes several minutes)..."
  build controlplane "$here" . "-s -w \
    -X k8s.io/component-base/version.gitVersion=$kver \
    -X k8s.io/component-base/version.gitMajor=$kmajor \
    -X k8s.io/component-base/version.gitMinor=$kminor \
    -X k8s.io/component-base/version.gitTreeState=clean"
fi

# --- the node: kubelet, kube-scheduler (same k8s.io/kubernetes), pause --------
kver="$(mod_version "$here" k8s.io/kubernetes)"
kmajor="${kver#v}"; kmajor="${kmajor%%.*}"
kminor="${kver#v*.}"; kminor="${kminor%%.*}"
kldflags="-s -w \
  -X k8s.io/component-base/version.gitVersion=$kver \
  -X k8s.io/component-base/version.gitMajor=$kmajor \
  -X k8s.io/component-base/version.gitMinor=$kminor \
  -X k8s.io/component-base/version.gitTreeState=clean"
for node_bin in kubelet kube-scheduler; do
  if up_to_date "$out/$node_bin" "$here" "$here/build.sh"; then
    echo "$node_bin is up to date: $out/$node_bin"
  else
    echo "building $node_bin $kver..."
    build "$node_bin" "$here" "k8s.io/kubernetes/cmd/$node_bin" "$kldflags"
  fi
done
if up_to_date "$out/pause" "$here/pause" "$here/build.sh"; then
  echo "pause is up to date: $out/pause"
else
  build pause "$here" ./pause "-s -w"
fi

# --- helm ----------------------------------------------------------------------
helm_bin="$out/helm"
if up_to_date "$helm_bin" "$tools" "$here/build.sh"; then
  echo "helm is up to date: $helm_bin"
else
  hver="$(mod_version "$tools" helm.sh/helm/v3)"
  # like helm's Makefile: the default .Capabilities.KubeVersion comes from the
  # client-go it was built with (v0.X.Y -> 1.X)
  cgo="$(cd "$tools" && go list -m -f '{{.Version}}' k8s.io/client-go)"
  cminor="${cgo#v0.}"; cminor="${cminor%%.*}"
  echo "building helm $hver (first build takes a few minutes)..."
  build helm "$tools" helm.sh/helm/v3/cmd/helm "-s -w \
    -X helm.sh/helm/v3/internal/version.version=$hver \
    -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$cminor \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$cminor"
fi
