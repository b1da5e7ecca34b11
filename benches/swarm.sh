#!/usr/bin/env bash
# benches/swarm.sh [interop.sh options]: pow next to the real clients in swarm-lab's
# seeder x leecher matrix, as `ext` on both sides. Prints swarm-lab's table (MiB/s min/median/max,
# CPU s/GiB, peak RSS). Default: 256 MiB payload, 3 runs per pair.
#   bash benches/swarm.sh                                  # full matrix
#   bash benches/swarm.sh --size 64M --repeat 1 --seeders "libtorrent aria2" --leechers "ext aria2"
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/pow-target}"
cargo build --release -p pow-cli >&2
pow="$CARGO_TARGET_DIR/release/pow"
lab="$(cd ../shared/swarm-lab && pwd)"
export SWARM_LAB_STATE="${SWARM_LAB_STATE:-$(mktemp -d /tmp/pow-bench-state.XXXXXX)}"
export LEECH_CMD="$pow download {torrent} -o {dir} --port {port} --bind 127.0.0.1"
export SEED_CMD="$pow seed {torrent} --data {dir} --port {port} --bind 127.0.0.1"
csv="${BENCH_CSV:-/tmp/pow-swarm-$(date +%Y%m%d-%H%M%S).csv}"
args=("$@"); [ ${#args[@]} -gt 0 ] || args=(--size 256M --repeat 3)
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%Y-%m-%dT%H:%MZ)"
bash "$lab/interop.sh" "${args[@]}" --csv "$csv" # prints the summary table itself
