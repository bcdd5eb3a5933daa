#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 20) on its corpus in tests/fuzz/corpus/<target>.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). A crash stops the
# run; its input is saved under tests/fuzz/artifacts/<target>/ — turn it into a regression
# test and fix it.
#
#   tests/fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-20}"
# The instrumented build is long (wasmtime, iroh): keep it in a cache outside the clone so a
# clean checkout rebuilds only what changed.
export CARGO_TARGET_DIR="${LATTICE_FUZZ_TARGET:-$HOME/.cache/lattice-fuzz-target}"
cargo +nightly fuzz build --fuzz-dir tests/fuzz -O
for target in $(cargo +nightly fuzz list --fuzz-dir tests/fuzz); do
  mkdir -p "tests/fuzz/corpus/$target"
  echo "-- $target (${seconds}s)"
  cargo +nightly fuzz run --fuzz-dir tests/fuzz -O "$target" "tests/fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -len_control=0 2>&1 | tail -n 30
done
echo "every fuzz target ran clean"
