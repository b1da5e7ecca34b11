#!/usr/bin/env bash
# benches/micro.sh [criterion args]: the micro-benchmarks (benches/micro.rs) with openssl's SHA-1
# speed on 256 KiB buffers first, so both SHA-1 figures are in one output.
#   bash benches/micro.sh                         # default: 1 s warm-up, 3 s per benchmark
#   bash benches/micro.sh sha1                    # only benchmarks matching "sha1"
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/pow-target}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "sha_ni: $(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no), load: $(cut -d' ' -f1-3 /proc/loadavg)"
if command -v openssl >/dev/null; then
  openssl speed -evp sha1 -bytes 262144 -seconds 3 2>/dev/null | awk '
    /^sha1|^SHA1/ { v = $NF; sub(/k$/, "", v); printf "openssl sha1 256 KiB: %.2f GiB/s (%s)\n", v * 1000 / 2^30, $0 }'
else
  echo "openssl: not installed"
fi
args=("$@"); [ ${#args[@]} -gt 0 ] || args=(--warm-up-time 1 --measurement-time 3)
cargo bench --bench micro -- "${args[@]}" 2>&1 | grep -Ev '^(Benchmarking|\s*Compiling|Found [0-9]+ outliers|\s+[0-9]+ \([0-9.]+%\) (low|high))'
