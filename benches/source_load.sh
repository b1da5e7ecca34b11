#!/usr/bin/env bash
# benches/source_load.sh [SIZE_MIB] [ROUNDS]: the main job's figure. `pow source load` of a
# SIZE MiB data source (default 1024) from a pow seed and a pow tracker on this machine, ROUNDS
# times (default 3) into a fresh base directory: wall time, transfer time, how much of the
# content's MD5 was computed while it downloaded, and the digest left after the transfer; next
# to `md5sum` of the same file, the second pass a load would need if it digested afterwards.
# Prints figures only; nothing is asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/pow-target}"
[ "${POW_BENCH_NO_BUILD:-0}" = 1 ] || cargo build --release -p pow-cli >&2
pow="$CARGO_TARGET_DIR/release/pow"
size=${1:-1024} rounds=${2:-3}
tracker_port=17969 seed_port=17881 load_port=17882
work="$(mktemp -d /tmp/pow-source-load.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/seed" "$work/store"
head -c $((size << 20)) /dev/urandom >"$work/seed/data.bin"
md5sum_s=$( { /usr/bin/time -f %e md5sum "$work/seed/data.bin" >/dev/null; } 2>&1 | tail -1)
md5=$(md5sum "$work/seed/data.bin" | cut -d' ' -f1)
"$pow" torrent create "$work/seed/data.bin" -o "$work/store/$md5.torrent" --no-date \
  --tracker "http://127.0.0.1:$tracker_port/announce" >/dev/null
export POW_DIR="$work/.pow"
"$pow" init >/dev/null
printf '[[source]]\ntype = "ConnectomeCSVDataSource"\nkey = "bench"\ncsv_file_name = "data.bin"\ntorrent_file_name = "%s.torrent"\nmd5 = "%s"\n' \
  "$md5" "$md5" >"$work/sources.toml"
"$pow" save "$work/sources.toml" >/dev/null
"$pow" tracker --listen "127.0.0.1:$tracker_port" >/dev/null 2>&1 & pids+=($!)
"$pow" seed "$work/store/$md5.torrent" --data "$work/seed" --port "$seed_port" --bind 127.0.0.1 2>/dev/null & pids+=($!)
for _ in $(seq 100); do ss -ltn | grep -q ":$seed_port " && break; sleep 0.1; done

for r in $(seq "$rounds"); do
  rm -rf "$work/base"
  /usr/bin/time -o "$work/time" -f "%e %U %S" "$pow" source load ConnectomeCSVDataSource:bench \
    --torrent-store "$work/store" --base-dir "$work/base" --port "$load_port" --bind 127.0.0.1 \
    --json >"$work/load-$r.json" 2>/dev/null
  echo "$(cat "$work/time")" >"$work/time-$r"
done
python3 - "$work" "$rounds" "$size" "$md5sum_s" <<'PY'
import json, statistics, sys
work, rounds, size, md5sum_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rows = []
for r in range(1, rounds + 1):
    d = json.load(open(f'{work}/load-{r}.json'))
    wall, user, sys_ = map(float, open(f'{work}/time-{r}').read().split())
    assert d['ok'], d
    rows.append((wall, d['transfer_seconds'], d['digested_during_transfer'] / d['bytes'], d['digest_seconds'], user + sys_))
    print(f'round {r}: wall {wall:.2f} s, transfer {d["transfer_seconds"]:.2f} s, '
          f'{100 * rows[-1][2]:.0f}% digested during it, digest left {d["digest_seconds"]:.2f} s, CPU {user + sys_:.2f} s')
med = [statistics.median(c) for c in zip(*rows)]
print(f'pow source load {size} MiB (median of {rounds}): wall {med[0]:.2f} s, transfer {med[1]:.2f} s, '
      f'{100 * med[2]:.0f}% of the MD5 done during it, {med[3]:.2f} s left after it; '
      f'CPU {med[4]:.2f} s; for reference, one MD5 pass over the file (md5sum) takes {md5sum_s:.2f} s')
PY
