#!/usr/bin/env bash
# The whole test suite, as CI runs it: format, lints, then every test.
# Works on a fresh machine with Rust and Go installed and the crates.io /
# Go module registries reachable; caches (target/, GOCACHE, GOMODCACHE) are
# reused when present.
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

step "cargo fmt --check"
timed "format check" cargo fmt --all -- --check

step "cargo clippy (warnings denied)"
timed "clippy" cargo clippy --workspace --all-targets --locked -- -D warnings

step "generated CRDs are current"
timed "crdgen" cargo run --quiet --locked --bin dbgrant -- crdgen --out "${TMPDIR:-/tmp}/dbgrant-crds-check" >/dev/null 2>&1
diff -r crds "${TMPDIR:-/tmp}/dbgrant-crds-check" >/dev/null || {
  echo "crds/ is stale: run cargo run -- crdgen --out crds --out charts/dbgrant/crds --out deploy/base/crds" >&2
  exit 1
}

step "cargo test (pure, contract and integration tests)"
timed "tests" cargo test --workspace --locked
