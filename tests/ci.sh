#!/usr/bin/env bash
# The whole test suite, as CI runs it: format, lints, then every test.
# Works on a fresh machine with Rust and Go installed and the crates.io /
# Go module registries reachable; caches (target/, GOCACHE, GOMODCACHE) are
# reused when present. The end-to-end tests start the control plane built
# here (etcd, kube-apiserver, kube-controller-manager) and run the dbgrant
# binary against it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
timed() {
  local label=$1; shift
  local start=$SECONDS
  "$@"
  printf '    %s took %ss\n' "$label" $((SECONDS - start))
}

for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    step "installing rust component ${component}"
    rustup component add "${component}"
  fi
done

# jemalloc (the operator binary's allocator) is built from C with make.
if ! command -v make >/dev/null 2>&1; then
  step "installing make (Debian) for jemalloc's build"
  sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq make >/dev/null
fi

# A full build of the workspace with its tests takes about 6 GiB under
# target/, and the Go caches about 2 more; a disk that fills mid-build makes
# cargo fail with a bare exit code, so say it up front (a warning: a warm
# target/ needs far less).
step "free disk"
df -h . | tail -1
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if (( free_kib < 8 * 1024 * 1024 )); then
  echo "WARNING: only $((free_kib / 1024)) MiB free here; a fresh build and the tests need about 8 GiB" >&2
fi

step "cargo fmt --check"
timed "format check" cargo fmt --all -- --check

step "cargo clippy (warnings denied)"
timed "clippy" cargo clippy --workspace --all-targets --locked -- -D warnings

step "generated CRDs are current"
crd_check=$(mktemp -d "${TMPDIR:-/tmp}/dbgrant-crds-check.XXXXXX")
trap 'rm -rf "$crd_check"' EXIT
timed "crdgen" cargo run --quiet --locked --bin dbgrant -- crdgen --out "$crd_check" >/dev/null
diff -r crds "$crd_check" >/dev/null || {
  echo "crds/ is stale: run cargo run -- crdgen --out crds --out charts/dbgrant/crds --out deploy/base/crds" >&2
  exit 1
}

step "local control plane and helm, built from Go modules (tests/controlplane/build.sh)"
timed "control-plane build" tests/controlplane/build.sh
timed "control-plane profile summary" bash -c 'cd tests/controlplane && go vet ./cpuprofile && go test ./cpuprofile'

step "helm lint and template (pinned helm built above)"
timed "helm lint" target/tools/helm lint --strict charts/dbgrant
timed "helm template" target/tools/helm template dbgrant charts/dbgrant --namespace dbgrant-system >/dev/null

step "Argo CD health script under gopher-lua (tests/health)"
timed "health script" bash -c 'cd tests/health && go vet ./... && go test ./...'

# The end-to-end node test packages this binary as the operator image and
# helm-installs the chart on a real kubelet, so it is built before the tests.
step "release binary, built as the Dockerfile builds it (deploy/build-binary.sh)"
if ! command -v musl-gcc >/dev/null 2>&1; then
  echo "installing musl-tools (Debian) for the static build"
  sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq musl-tools >/dev/null
fi
timed "release build" deploy/build-binary.sh
release=target/x86_64-unknown-linux-musl/release/dbgrant
"$release" version
if ldd "$release" 2>&1 | grep -q '=>'; then
  echo "$release is dynamically linked; the distroless static image needs a static binary" >&2
  exit 1
fi

step "node prerequisites: containerd, runc, CNI plugins (Debian packages)"
# The end-to-end node test runs a kubelet with Debian's containerd and runc
# and the CNI bridge plugin. It fails, saying what is missing, rather than
# skip; DBGRANT_E2E_NODE=skip opts out explicitly.
node_missing=()
for bin in containerd containerd-shim-runc-v2 ctr runc ip iptables; do
  command -v "$bin" >/dev/null 2>&1 || node_missing+=("$bin")
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || node_missing+=(cni-plugins)
if [[ ${#node_missing[@]} -gt 0 && ${DBGRANT_E2E_NODE:-} != skip ]]; then
  echo "installing containerd runc containernetworking-plugins iptables iproute2 (missing: ${node_missing[*]})"
  sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  timed "node packages" bash -c "$sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends containerd runc containernetworking-plugins iptables iproute2 >/dev/null"
fi

step "cargo test: pure, contract (MongoDB and ARM doubles) and end-to-end (real kube-apiserver)"
timed "tests" cargo test --workspace --locked

printf '\nall checks passed in %ss\n' "$SECONDS"
