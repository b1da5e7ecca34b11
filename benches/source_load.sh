#!/usr/bin/env bash
# benches/source_load.sh [SIZE_MIB] [ROUNDS]: the main job's figure. `pow source load` of a
# SIZE MiB data source (default 1024) from a pow seed and a pow tracker on this machine, ROUNDS
# times (default 3) into a fresh base directory: wall time, transfer time, how much of the
# content's MD5 was computed while it downloaded, and the digest left after the transfer; next
# to `md5sum` of the same file, the second pass a load would need if it digested afterwards.
# Then the same for a record as `pow publish` writes it (with `sha256` and `info_hash`: the
# load digests SHA-256 too), and `pow publish --no-seed` of the file (SHA-1 pieces, MD5 and
# SHA-256 together). Prints figures only; nothing is asserted.
set -euo pipefail
source "$(dirname "$0")/common.sh"
bench_start pow-source-load
size=${1:-1024} rounds=${2:-3}
tracker_port=17969 seed_port=17881 load_port=17882

mkdir -p "$work/seed" "$work/store"
head -c $((size << 20)) /dev/urandom >"$work/seed/data.bin"
md5sum_s=$( { /usr/bin/time -f %e md5sum "$work/seed/data.bin" >/dev/null; } 2>&1 | tail -1)
md5=$(md5sum "$work/seed/data.bin" | cut -d' ' -f1)
"$pow" torrent create "$work/seed/data.bin" -o "$work/store/$md5.torrent" --no-date \
  --tracker "http://127.0.0.1:$tracker_port/announce" >/dev/null
export POW_DIR="$work/.pow"
"$pow" init >/dev/null
sha256=$(sha256sum "$work/seed/data.bin" | cut -d' ' -f1)
info_hash=$("$pow" torrent show --json "$work/store/$md5.torrent" | python3 -c 'import json, sys; print(json.load(sys.stdin)["info_hash"])')
for key in bench published; do
  printf '[[source]]\ntype = "ConnectomeCSVDataSource"\nkey = "%s"\ncsv_file_name = "data.bin"\ntorrent_file_name = "%s.torrent"\nmd5 = "%s"\n' \
    "$key" "$md5" "$md5"
  [ "$key" = published ] && printf 'sha256 = "%s"\ninfo_hash = "%s"\n' "$sha256" "$info_hash"
done >"$work/sources.toml"
"$pow" save "$work/sources.toml" >/dev/null
"$pow" tracker --listen "127.0.0.1:$tracker_port" >/dev/null 2>&1 & pids+=($!)
"$pow" seed "$work/store/$md5.torrent" --data "$work/seed" --port "$seed_port" --bind 127.0.0.1 2>/dev/null & pids+=($!)
for _ in $(seq 100); do ss -ltn | grep -q ":$seed_port " && break; sleep 0.1; done

for key in bench published; do
  for r in $(seq "$rounds"); do
    rm -rf "$work/base"
    /usr/bin/time -o "$work/time-$key-$r" -f "%e %U %S" "$pow" source load \
      "ConnectomeCSVDataSource:$key" --torrent-store "$work/store" --base-dir "$work/base" \
      --port "$load_port" --bind 127.0.0.1 --json >"$work/load-$key-$r.json" 2>/dev/null
  done
done
for r in $(seq "$rounds"); do
  /usr/bin/time -o "$work/time-publish-$r" -f "%e %U %S" "$pow" publish "$work/seed/data.bin" \
    --no-seed --torrent-store "$work/published" --key "p$r" --json >/dev/null
done
python3 - "$work" "$rounds" "$size" "$md5sum_s" <<'PY'
import json, statistics, sys
work, rounds, size, md5sum_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def times(name):
    wall, user, sys_ = map(float, open(f'{work}/time-{name}').read().split())
    return wall, user + sys_
for key, record in (('bench', 'md5'), ('published', 'md5, sha256 and info_hash')):
    rows = []
    for r in range(1, rounds + 1):
        d = json.load(open(f'{work}/load-{key}-{r}.json'))
        wall, cpu = times(f'{key}-{r}')
        assert d['ok'], d
        rows.append((wall, d['transfer_seconds'], d['digested_during_transfer'] / d['bytes'], d['digest_seconds'], cpu))
        print(f'{key} round {r}: wall {wall:.2f} s, transfer {d["transfer_seconds"]:.2f} s, '
              f'{100 * rows[-1][2]:.0f}% digested during it, digest left {d["digest_seconds"]:.2f} s, CPU {cpu:.2f} s')
    med = [statistics.median(c) for c in zip(*rows)]
    print(f'pow source load {size} MiB, record with {record} (median of {rounds}): wall {med[0]:.2f} s, '
          f'transfer {med[1]:.2f} s, {100 * med[2]:.0f}% of the digest done during it, {med[3]:.2f} s left '
          f'after it; CPU {med[4]:.2f} s')
publish = [times(f'publish-{r}') for r in range(1, rounds + 1)]
print(f'pow publish --no-seed {size} MiB (median of {rounds}): wall {statistics.median(w for w, _ in publish):.2f} s, '
      f'CPU {statistics.median(c for _, c in publish):.2f} s')
print(f'for reference, one MD5 pass over the file (md5sum) takes {md5sum_s:.2f} s')
PY
