#!/usr/bin/env bash
# dbgrant quickstart: builds what it needs, starts a real local control plane
# (etcd, kube-apiserver and kube-controller-manager built from Go modules), the
# MongoDB test double and the operator (authenticated with a bound
# ServiceAccount token), applies deploy/examples/, waits for Ready and prints
# what was granted. Ctrl-C stops everything. Extra arguments go to dbgrant-quickstart
# (--wait SECONDS, --exit).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in go cargo; do
  command -v "$tool" >/dev/null 2>&1 || { echo "quickstart: $tool not found in PATH (install Go and Rust first)" >&2; exit 1; }
done

echo "==> building the local control plane and helm from Go modules (several minutes the first time)"
tests/controlplane/build.sh
echo "==> building dbgrant and the quickstart with cargo"
cargo build --locked --bin dbgrant --bin dbgrant-quickstart -p dbgrant -p dbgrant-harness
exec target/debug/dbgrant-quickstart --dbgrant target/debug/dbgrant "$@"
