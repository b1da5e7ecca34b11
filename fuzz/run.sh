#!/usr/bin/env bash
# fuzz/run.sh SECONDS [TARGET...]: run each cargo-fuzz target for SECONDS (default 30), seeded
# from the fixtures. Needs a nightly toolchain (or RUSTC_BOOTSTRAP=1) and cargo-fuzz.
# FUZZ_RUNS=N also stops a target after N executions (for the long runs: 10000000 and 3600 s).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(bencode metainfo wire tracker_response magnet peer_session krpc mse mse_initiator utp)
toolchain=+nightly; rustup toolchain list 2>/dev/null | grep -q nightly || { toolchain=""; export RUSTC_BOOTSTRAP=1; }
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  case "$t" in
    bencode) cp ../fixtures/bencode/valid/* ../fixtures/bencode/invalid/* "corpus/$t/" 2>/dev/null || true ;;
    metainfo) cp ../fixtures/torrents/valid/* ../fixtures/torrents/invalid/* "corpus/$t/" 2>/dev/null || true ;;
    tracker_response) cp ../fixtures/tracker/* "corpus/$t/" 2>/dev/null || true ;;
    magnet) cp ../fixtures/magnet/*.uri "corpus/$t/" 2>/dev/null || true ;;
    peer_session) cp ../fixtures/peer_session/* "corpus/$t/" 2>/dev/null || true ;;
    krpc) cp ../fixtures/krpc/* "corpus/$t/" 2>/dev/null || true ;;
  esac
  echo "fuzz: $t for ${secs}s"
  log="$(mktemp)"
  if ! cargo $toolchain fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} -max_len=65536 -rss_limit_mb=2048 >"$log" 2>&1; then
    # The cause first (CI's log keeps only the tail, which holds the reproduction hints).
    grep -m 1 -A 3 -E 'panicked at|ERROR: (AddressSanitizer|libFuzzer)' "$log" || true
    grep -v '^ *Compiling' "$log" | tail -n 40; echo "fuzz: $t FAILED"; exit 1
  fi
  grep -E '^(#[0-9]+ *DONE|Done [0-9]+ runs)' "$log" | tail -n 1
  rm -f "$log"
done
