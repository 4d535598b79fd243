#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs lint,
# unit, end-to-end and fuzz checks. Run as root (it apt-installs OpenSSH and iproute2), or with
# them present.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s (%s)\n' "$1" "$(date +%T)"; }

step "system packages"
need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 && command -v scp >/dev/null 2>&1 || need+=(openssh-client)
# `ss`, which a test reads the relays' socket buffers with.
command -v ss >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing ${need[*]}: install them (apt-get install -y ${need[*]}) or run as root" >&2
    exit 1
  fi
fi
mkdir -p /run/sshd 2>/dev/null || true

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --bins --locked

step "tests (unit and end-to-end)"
log=$(mktemp)
cargo test --workspace --locked 2>&1 | tee "$log"
passed=$(awk '/^test result:/ {s += $4} END {print s+0}' "$log")
failed=$(awk '/^test result:/ {s += $6} END {print s+0}' "$log")
rm -f "$log"

step "benchmark harness, quick run (release build; figures are indicative, see benches/RESULTS.md)"
cargo build -q --release --locked -p sluice-cli -p sluice-bench
./target/release/sluice-bench --quick --out target/bench-quick

step "load: 1,000 concurrent streams through quic, tcp and tls, sha256 both ways (release build)"
# Smaller than the issue's 10 MB per stream, which is run by hand (docs/testing.md): over quic
# 1,000 streams in one session run at ~15-75 MB/s here (10 MB each took 200-700 s), and over tcp
# 10 MB per stream with autotuned buffers drives this one shared kernel into TCP memory pressure,
# where a few streams stall for good (the kernel's doing, described there; the worker's
# tcp_buffer_bytes makes it rare, not impossible).
log=$(mktemp)
SLUICE_BIN=$PWD/target/release/sluice SLUICE_LOAD_MB=${SLUICE_LOAD_MB:-1} \
  SLUICE_LOAD_QUIC_MB=${SLUICE_LOAD_QUIC_MB:-2} \
  cargo test -q --locked -p sluice-e2e --test load streams_arrive -- --ignored --nocapture 2>&1 | tee "$log"
passed=$((passed + $(awk '/^test result:/ {s += $4} END {print s+0}' "$log")))
rm -f "$log"

step "fuzz every parser of untrusted bytes (60 s per target; docs/fuzzing.md)"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked -q
fi
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build 2>&1 | tail -n 3)
for target in token_decode:token token_verify:token frames:frames cluster_frames:cluster api_body:api; do
  name=${target%%:*}
  dict=${target##*:}.dict
  work=$(mktemp -d)
  cp fuzz/corpus/"$name"/* "$work/"
  echo "--- $name"
  rc=0
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$name" "$work" -- \
    -dict="$dict" -max_total_time="${SLUICE_FUZZ_SECONDS:-60}" -print_final_stats=1) >"$work.log" 2>&1 || rc=$?
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done)" "$work.log" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$work.log" >&2
    echo "fuzz target $name failed (exit $rc): the input is under fuzz/artifacts/$name" >&2
    exit 1
  fi
  rm -f "$work.log"
  rm -rf "$work"
done

step "all checks passed"
echo "tests: $passed passed, $failed failed"
