#!/usr/bin/env bash
# Builds target/pgo/sluice: the release binary, optimised with a profile of its own run
# (profile-guided optimisation). Use it where speed matters: benches/RESULTS.md's full runs of
# 2026-12-03 05:47 and 05:50 measure it (each run's header names its binary). `cargo build
# --release` stays the plain build.
#
# Three steps, about 9 minutes on two cores (8 min 52 s from clean here; 7 min 20 s with the
# instrumented build's dependencies already built):
#   1. an instrumented release build (target/pgo/gen), which records what its code does;
#   2. the benchmark harness's Sluice paths through that build (`sluice-bench --only sluice`:
#      bulk, round trips and new connections over quic, tls and tcp, authorize, cancel, 10,000
#      idle connections), each process writing its counts under target/pgo/data;
#   3. the release build again with those counts (target/pgo/use), copied to target/pgo/sluice.
# Measured against the plain build (docs/tuning.md).
#
# Needs llvm-profdata from the same LLVM as rustc: `rustup component add llvm-tools`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$sysroot/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
  echo "error: llvm-profdata is not at $profdata; install it with \`rustup component add llvm-tools\` and run this again" >&2
  exit 1
fi

dir=$PWD/target/pgo
rm -rf "$dir/data" "$dir/train"
mkdir -p "$dir/data"
step() { printf '\n==> %s (%s)\n' "$1" "$(date +%T)"; }

step "instrumented build"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$dir/data" \
  cargo build --release --locked -p sluice-cli --bin sluice --target-dir "$dir/gen"

step "training run (sluice-bench --only sluice)"
cargo build --release --locked -p sluice-bench
./target/release/sluice-bench --sluice "$dir/gen/release/sluice" --only sluice --out "$dir/train" \
  > "$dir/train.txt"
"$profdata" merge -o "$dir/sluice.profdata" "$dir/data"

step "optimised build"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$dir/sluice.profdata" \
  cargo build --release --locked -p sluice-cli --bin sluice --target-dir "$dir/use"
cp "$dir/use/release/sluice" "$dir/sluice"
echo "built $dir/sluice"
