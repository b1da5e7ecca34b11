#!/usr/bin/env bash
# benches/many_files.sh [FILES] [ROUNDS]: a dataset of many small files, the shape of a
# microscopy archive of one image a slice or a connectome of one CSV a neuron: FILES files
# (default 100,000) of 50 to 249 bytes in 100 directories, 32 KiB pieces. Figures, next to
# the real clients on the same data in the same run; nothing is asserted:
#   - `pow torrent create` against mktorrent (wall seconds; both must give one info-hash);
#   - from a pow seed and from a libtorrent seed (swarm-lab's seed.sh, tiny tracker), every
#     real leecher (aria2, libtorrent, rqbit) and pow, ROUNDS times (default 3) each, each
#     into a fresh directory: launch-to-complete seconds, CPU seconds, peak RSS; median;
#   - `pow verify` of the download.
# Outputs are removed only at the end: ext4 is slow to reuse inodes it has just freed, and
# removing one client's files would slow the next client's creates.
set -euo pipefail
source "$(dirname "$0")/common.sh"
bench_start pow-many-files
files=${1:-100000} rounds=${2:-3}
lab="$(cd ../shared/swarm-lab && pwd)"
export SWARM_LAB_STATE="$work/lab"
export LEECH_CMD="$pow download {torrent} -o {dir} --port {port} --bind 127.0.0.1"
export SEED_CMD="$pow seed {torrent} --data {dir} --port {port} --bind 127.0.0.1"
trap 'bash "$lab/seed.sh" stop all >/dev/null 2>&1; bash "$lab/tracker.sh" stop >/dev/null 2>&1; bench_cleanup' EXIT
leechers="aria2 libtorrent ext"
{ [ -x /tmp/rqbit-install/bin/rqbit ] || command -v rqbit >/dev/null; } && leechers="aria2 libtorrent rqbit ext"

python3 - "$work/data/slices" "$files" <<'EOF'
import os, random, sys
root, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(count):
    d = os.path.join(root, f'd{i % 100:03}')
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f'slice-{i:06}.csv'), 'wb') as f:
        f.write(rng.randbytes(50 + rng.randrange(200)))
EOF
bytes=$(du -s -b --apparent-size "$work/data/slices" | cut -f1)
echo "machine: $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ); $files files, $bytes bytes (with directories)"
announce="http://127.0.0.1:6969/announce"
( cd "$work/data" && /usr/bin/time -o "$work/time-mktorrent" -f %e \
    mktorrent -l 15 -a "$announce" -o "$work/mk.torrent" slices >/dev/null )
/usr/bin/time -o "$work/time-pow-create" -f %e "$pow" torrent create "$work/data/slices" \
  -o "$work/pow.torrent" --piece-length 32768 --tracker "$announce" >/dev/null
mk_hash=$(python3 "$lab/torrentinfo.py" "$work/mk.torrent" infohash)
pow_hash=$(python3 "$lab/torrentinfo.py" "$work/pow.torrent" infohash)
echo "torrent create: pow $(cat "$work/time-pow-create") s, mktorrent $(cat "$work/time-mktorrent") s;" \
  "info-hash pow $pow_hash, mktorrent $mk_hash $([ "$mk_hash" = "$pow_hash" ] && echo '(same)' || echo '(DIFFERENT)')"

bash "$lab/tracker.sh" start --impl tiny >/dev/null
for seeder in ext libtorrent; do
  bash "$lab/seed.sh" "$seeder" "$work/mk.torrent" "$work/data" >/dev/null 2>&1 ||
    { echo "seed.sh $seeder failed"; tail -5 "$SWARM_LAB_STATE/seed-$seeder"/*.log; continue; }
  for r in $(seq "$rounds"); do
    for leecher in $leechers; do
      out="$work/out-$seeder-$leecher-$r"
      line=$(bash "$lab/leech.sh" "$leecher" "$work/mk.torrent" "$out" --timeout 600 2>/dev/null | grep '^RESULT' || true)
      verified=no
      diff -rq "$work/data/slices" "$out/slices" >/dev/null 2>&1 && verified=yes
      echo "$seeder $leecher $r $verified $line" >>"$work/results"
    done
  done
  bash "$lab/seed.sh" stop "$seeder" >/dev/null 2>&1
done
/usr/bin/time -o "$work/time-verify" -f "%e %M" "$pow" verify "$work/mk.torrent" --data "$work/out-ext-ext-1" >/dev/null || true
read -r verify_s verify_rss <"$work/time-verify"
python3 - "$work/results" "$files" <<'EOF'
import statistics, sys
names = {'ext': 'pow'}
rows = {}
for line in open(sys.argv[1]):
    seeder, leecher, _, verified, *result = line.split()
    fields = dict(f.split('=', 1) for f in result if '=' in f)
    ok = verified == 'yes' and fields.get('rc') == '0'
    rows.setdefault((seeder, leecher), []).append(
        (float(fields['total_s']), float(fields['cpu_s']), int(fields['peak_rss_kib']) / 1024) if ok else None)
print(f'| seeder -> leecher, {int(sys.argv[2]):,} files | ok/runs | seconds min / med / max | CPU s med | peak RSS MiB med |')
print('|---|---|---|---|---|')
for (seeder, leecher), runs in rows.items():
    good = [r for r in runs if r]
    pair = f'{names.get(seeder, seeder)} -> {names.get(leecher, leecher)}'
    if not good:
        print(f'| {pair} | 0/{len(runs)} | | | |')
        continue
    secs = sorted(r[0] for r in good)
    print(f'| {pair} | {len(good)}/{len(runs)} | {secs[0]:.2f} / {statistics.median(secs):.2f} / {secs[-1]:.2f} '
          f'| {statistics.median(r[1] for r in good):.2f} | {statistics.median(r[2] for r in good):.0f} |')
EOF
echo "pow verify of pow's download: $verify_s s, peak RSS $((verify_rss / 1024)) MiB"
