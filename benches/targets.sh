#!/usr/bin/env bash
# benches/targets.sh [--quick]: every figure issue #6 sets a target for, in one run on this
# machine, each next to its reference measured in the same run. Nothing is asserted.
#   1. openssl's one-core SHA-1 speed (`openssl speed -evp sha1`, 256 KiB buffers)
#   2. `pow verify` of a 1 GiB payload (page cache warm): GiB/s and its ratio to (1), target >= 0.9x
#   3. loading a torrent with 2,000,000 pieces (`pow torrent show`, whole process): target < 1 s
#   4. the swarm-lab matrix with pow as `ext` (benches/swarm.sh) at 256 MiB and 1 GiB, --repeat 3,
#      then the ratios of benches/targets.py (leech speed and CPU, seed speed, peak RSS, leech
#      speed against (1) and against what the seeder's and pow's CPU per GiB allow on these
#      cores, since the seeder runs on the same machine). Transmission is left out by default
#      (SEEDERS/LEECHERS to change): its seed serves 5-10 MiB/s here and its leecher waits 15-20 s to be dialled, so its
#      rows measure Transmission and would triple the run time.
#   4b. the same matrix with every seeder on core 0 and every leecher on core 1 (`swarm.sh --pin`):
#      each process as if on a one-core machine of its own, so a leecher's figures no longer
#      depend on how much of the shared cores the seeder leaves idle
#   4c. libtorrent's seed again at the first payload (256 MiB), shared and pinned, with its
#      `high_performance_seed()` settings (swarm-lab's LT_HP=1, which libtorrent's leecher gets
#      too): a figure, no target. The default seed reads ahead at most
#      `send_buffer_low_watermark` (10 KiB) for a peer until it has measured a second of upload
#      to it, and a 256 MiB transfer is over in about that second; this shows what the 4/4b
#      rows from libtorrent's seed at 256 MiB measure
#   5. 1 pow seed + 8 pow leechers on 256 MiB (benches/swarm8.sh): seed upload <= 1.5x payload,
#      with a plain seed and with `--super-seed`
#   6. the main job, `pow source load` of 1 GiB from a pow seed (benches/source_load.sh): wall
#      and transfer time, and how much of the content's MD5 was done while it downloaded; the
#      same for a record as `pow publish` writes it (SHA-256 too), and `pow publish` itself
#   7. uTP on loopback, pow and libtorrent each way (benches/utp.sh): a figure, no target
#   8. a dataset of 100,000 small files (benches/many_files.sh): create against mktorrent,
#      download from a pow and a libtorrent seed against the real leechers; figures, no target
# --ci: a shorter run: the 256 MiB matrix once per pair (about 10 min in all); `scripts/test-all`
#   runs the full script.
# --quick: 64 MiB matrix, one run per pair, 256 MiB verify (a smoke run of the same script).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/pow-target}"
quick=0; ci=0
case "${1:-}" in --quick) quick=1 ;; --ci) ci=1 ;; esac
cargo build --release -p pow-cli >&2
export POW_BENCH_NO_BUILD=1
pow="$CARGO_TARGET_DIR/release/pow"
lab="$(cd ../shared/swarm-lab && pwd)"
work="$(mktemp -d /tmp/pow-targets.XXXXXX)"
trap 'rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "sha_ni: $(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no); $(date -u +%Y-%m-%dT%H:%MZ)"

echo "## 1. openssl SHA-1, one core"
openssl_gib=$(openssl speed -evp sha1 -bytes 262144 -seconds 3 2>/dev/null |
  awk '/^sha1|^SHA1/ { v = $NF; sub(/k$/, "", v); printf "%.3f", v * 1000 / 2^30 }')
echo "openssl sha1 (256 KiB blocks): $openssl_gib GiB/s"

echo "## 2. pow verify"
verify_size=1G; [ $quick = 1 ] && verify_size=256M
made=$(bash "$lab/make-payload.sh" "$verify_size" "$work/verify")
torrent=$(head -1 <<<"$made")
name=$(python3 "$lab/torrentinfo.py" "$torrent" name)
cat "$work/verify/data/$name" >/dev/null # warm: we measure hashing, not this VM's disk
bytes=$(stat -c %s "$work/verify/data/$name")
python3 - "$pow" "$torrent" "$work/verify/data" "$bytes" "$openssl_gib" <<'EOF'
import subprocess, sys, time, resource
pow, torrent, data, size, openssl = sys.argv[1:]
best = None
for _ in range(3):
    t = time.perf_counter()
    subprocess.run([pow, 'verify', torrent, '--data', data, '--json'], check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
gib = int(size) / 2**30 / best
ratio = gib / float(openssl)
cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f'pow verify {int(size) >> 20} MiB: best of 3 {best:.2f} s = {gib:.2f} GiB/s = {ratio:.2f}x openssl '
      f'(target >= 0.9x: {"MET" if ratio >= 0.9 else "MISSED"}); CPU of the 3 runs {cpu.ru_utime + cpu.ru_stime:.1f} s')
EOF

echo "## 3. a torrent with 2,000,000 pieces"
python3 - "$work/big.torrent" <<'EOF'
import os, sys
def b(s): return b'%d:%s' % (len(s), s)
pieces = 2_000_000
info = (b'd' + b(b'length') + b'i%de' % (pieces * 16384) + b(b'name') + b(b'big.data')
        + b(b'piece length') + b'i16384e' + b(b'pieces') + b(os.urandom(pieces * 20)) + b'e')
open(sys.argv[1], 'wb').write(b'd' + b(b'announce') + b(b'http://127.0.0.1:6969/announce') + b(b'info') + info + b'e')
EOF
python3 - "$pow" "$work/big.torrent" <<'EOF'
import subprocess, sys, time, os
pow, torrent = sys.argv[1:]
times = []
for _ in range(5):
    t = time.perf_counter()
    subprocess.run([pow, 'torrent', 'show', torrent, '--json'], check=True, stdout=subprocess.DEVNULL)
    times.append(time.perf_counter() - t)
times.sort()
print(f'pow torrent show ({os.path.getsize(torrent) >> 20} MiB file, 2,000,000 pieces): median of 5 '
      f'{times[2]:.3f} s (target < 1 s: {"MET" if times[2] < 1 else "MISSED"})')
EOF

echo "## 4. the swarm-lab matrix"
csvs=()
if [ $quick = 1 ]; then sizes=(64M); repeat=1
elif [ $ci = 1 ]; then sizes=(256M); repeat=1
else sizes=(256M 1G); repeat=3; fi
for size in "${sizes[@]}"; do
  csv="$work/matrix-$size.csv"
  BENCH_CSV="$csv" bash benches/swarm.sh --size "$size" --repeat "$repeat" --tracker tiny \
    --seeders "${SEEDERS:-aria2 libtorrent rqbit ext}" --leechers "${LEECHERS:-aria2 libtorrent rqbit ext}" || true
  csvs+=("$csv")
  cp "$csv" "/tmp/pow-targets-matrix-$size.csv"
done
OPENSSL_SHA1_GIB="$openssl_gib" python3 benches/targets.py "${csvs[@]}"

echo "## 4b. the same matrix with the seeder on core 0 and the leecher on core 1"
pinned=()
for size in "${sizes[@]}"; do
  csv="$work/matrix-pinned-$size.csv"
  BENCH_CSV="$csv" bash benches/swarm.sh --pin --size "$size" --repeat "$repeat" --tracker tiny \
    --seeders "${SEEDERS:-aria2 libtorrent rqbit ext}" --leechers "${LEECHERS:-aria2 libtorrent rqbit ext}" || true
  pinned+=("$csv")
  cp "$csv" "/tmp/pow-targets-matrix-pinned-$size.csv"
done
OPENSSL_SHA1_GIB="$openssl_gib" python3 benches/targets.py --pinned "${pinned[@]}"

echo "## 4c. libtorrent's seed with high_performance_seed() settings (figures, no target)"
for pin in "" --pin; do
  csv="$work/lt-hp$pin.csv"
  LT_HP=1 BENCH_CSV="$csv" bash benches/swarm.sh $pin --size "${sizes[0]}" --repeat "$repeat" \
    --tracker tiny --seeders libtorrent --leechers "libtorrent ext" || true
  how="sharing the cores"; [ -n "$pin" ] && how="one core each"
  [ -f "$csv" ] || { echo "no rows: the lab run failed"; continue; }
  python3 - "$csv" "$openssl_gib" "$how" <<'EOF' || true
import csv, statistics, sys
path, openssl_gib, how = sys.argv[1:]
rows = [r for r in csv.DictReader(open(path)) if r['leecher'] == 'ext' and r['verified'] == 'yes']
if rows:
    xfer = statistics.median(float(r['xfer_mib_s']) for r in rows)
    sha1 = float(openssl_gib) * 1024
    print(f'pow from libtorrent\'s high-performance seed ({how}): median xfer {xfer:.0f} MiB/s = '
          f'{xfer / sha1:.2f}x one-core SHA-1 ({sha1:.0f} MiB/s); a figure, not a target row')
EOF
done

echo "## 5. one pow seed, eight pow leechers"
swarm8_size=256M; [ $quick = 1 ] && swarm8_size=64M
bash benches/swarm8.sh "$swarm8_size" 8 || true
super_seed_status=0
SUPER_SEED=1 bash benches/swarm8.sh "$swarm8_size" 8 || super_seed_status=$?

echo "## 6. pow source load (the main job) and pow publish"
bash benches/source_load.sh "$([ $quick = 1 ] && echo 256 || echo 1024)" 3 || true

echo "## 7. uTP: pow and libtorrent over BEP 29 on loopback"
bash benches/utp.sh "$([ $quick = 1 ] && echo 64 || echo 256)" 3 || true

echo "## 8. a dataset of many small files"
bash benches/many_files.sh "$([ $quick = 1 ] && echo 10000 || echo 100000)" "$([ $quick = 1 ] && echo 1 || echo 3)" || true
exit "$super_seed_status"
