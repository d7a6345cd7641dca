#!/usr/bin/env bash
# Builds the static (musl) release binary of the dbgrant operator.
#
# The one build command shared by the Dockerfile and CI, so the binary CI
# tests is the binary the image ships. Needs the Rust toolchain pinned by the
# Dockerfile, the x86_64-unknown-linux-musl target (added here via rustup when
# missing), musl-gcc (Debian/Ubuntu: apt-get install musl-tools) for the C
# parts of crypto crates, and make for jemalloc (the binary's allocator).
#
# Usage: deploy/build-binary.sh
# Output: ${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/release/dbgrant
set -euo pipefail

target=x86_64-unknown-linux-musl
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi
command -v make >/dev/null 2>&1 || {
  echo "build-binary.sh: make not found (apt-get install make); jemalloc is built with it" >&2
  exit 1
}
command -v musl-gcc >/dev/null 2>&1 || {
  echo "build-binary.sh: musl-gcc not found (apt-get install musl-tools)" >&2
  exit 1
}

cargo build --release --locked --bin dbgrant --target x86_64-unknown-linux-musl

echo "built ${CARGO_TARGET_DIR:-target}/$target/release/dbgrant"
