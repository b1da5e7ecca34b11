#!/usr/bin/env bash
# benches/swarm.sh [--pin] [interop.sh options]: pow next to the real clients in swarm-lab's
# seeder x leecher matrix, as `ext` on both sides. Prints swarm-lab's table (MiB/s min/median/max,
# CPU s/GiB, peak RSS). Default: 256 MiB payload, 3 runs per pair.
#   --pin: every seeder runs on core 0 and every leecher on core 1 (taskset), as if each had a
#          one-core machine of its own, instead of both sharing every core. Two processes sharing
#          the cores measure how each one's CPU use and threads interact with the other's: a leecher
#          whose runtime hands work between threads (rqbit) runs slower next to a seeder that
#          leaves a core idle than next to one that keeps it busy.
#   bash benches/swarm.sh                                  # full matrix
#   bash benches/swarm.sh --size 64M --repeat 1 --seeders "libtorrent aria2" --leechers "ext aria2"
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/pow-target}"
[ -n "${POW_BENCH_NO_BUILD:-}" ] || cargo build --release -p pow-cli >&2
pow="$CARGO_TARGET_DIR/release/pow"
lab="$(cd ../shared/swarm-lab && pwd)"
export SWARM_LAB_STATE="${SWARM_LAB_STATE:-$(mktemp -d /tmp/pow-bench-state.XXXXXX)}"
export LEECH_CMD="$pow download {torrent} -o {dir} --port {port} --bind 127.0.0.1"
export SEED_CMD="$pow seed {torrent} --data {dir} --port {port} --bind 127.0.0.1"
csv="${BENCH_CSV:-/tmp/pow-swarm-$(date +%Y%m%d-%H%M%S).csv}"
pin=0; args=()
for a in "$@"; do if [ "$a" = --pin ]; then pin=1; else args+=("$a"); fi; done
[ ${#args[@]} -gt 0 ] || args=(--size 256M --repeat 3)
run_lab="$lab"
if [ $pin = 1 ]; then
  [ "$(nproc)" -ge 2 ] || { echo "--pin needs 2 cores, this machine has $(nproc)" >&2; exit 2; }
  # interop.sh calls seed.sh and leech.sh in the directory it runs from, so it runs from a
  # directory of links to the lab in which those two are wrappers. A client inherits the
  # wrapper's affinity from its first instruction, and the lab itself is unchanged.
  run_lab="$(mktemp -d /tmp/pow-pinned-lab.XXXXXX)"
  trap 'rm -rf "$run_lab"' EXIT
  ln -s "$lab"/* "$run_lab/"
  for script in seed.sh:0 leech.sh:1; do
    rm "$run_lab/${script%:*}"
    printf '#!/usr/bin/env bash\nexec taskset -c %s %q "$@"\n' "${script#*:}" "$lab/${script%:*}" > "$run_lab/${script%:*}"
    chmod +x "$run_lab/${script%:*}"
  done
fi
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%Y-%m-%dT%H:%MZ)" \
  "$([ $pin = 1 ] && echo '; seeders on core 0, leechers on core 1')"
bash "$run_lab/interop.sh" "${args[@]}" --csv "$csv" # prints the summary table itself
