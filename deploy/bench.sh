#!/usr/bin/env bash
# dbgrant benchmark: builds what it needs (the local control plane from Go
# modules, the operator as the image ships it — the static musl binary of
# deploy/build-binary.sh, which needs musl-gcc: apt-get install musl-tools —
# and the benchmark driver), then measures bulk
# apply, single-change latency, steady-state backend cost, footprint and
# restart at each binding count against a real local control plane, the
# operator process and the MongoDB double. Reports land in target/bench/
# (report.json, report.md). Arguments go to dbgrant-bench; see --help.
#
#   ./deploy/bench.sh                                # 1,000 and 10,000 bindings
#   ./deploy/bench.sh --bindings 200 --single 10     # a quick look
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in go cargo git; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench: $tool not found in PATH (install Go and Rust first)" >&2; exit 1; }
done
for arg in "$@"; do
  case "$arg" in -h|--help)
    [ -x target/release/dbgrant-bench ] && exec target/release/dbgrant-bench --help ;;
  esac
done

echo "==> building the local control plane and helm from Go modules (several minutes the first time)"
tests/controlplane/build.sh
echo "==> building dbgrant as the image ships it (static, musl) and dbgrant-bench"
deploy/build-binary.sh
cargo build --release --locked -p dbgrant-harness --bin dbgrant-bench
echo "==> running the benchmark"
DBGRANT_BENCH_COMMAND="deploy/bench.sh${*:+ $*}" exec target/release/dbgrant-bench \
  --dbgrant "${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/release/dbgrant" "$@"
