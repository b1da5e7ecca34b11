#!/usr/bin/env bash
# benches/swarm8.sh [SIZE] [LEECHERS]: one `pow seed` and LEECHERS (default 8) `pow download`s
# started together on one torrent through a local `pow tracker`, all on 127.0.0.1. Prints how
# much the seed uploaded as a multiple of the payload (issue #6 target: <= 1.5x, so the
# leechers must trade pieces among themselves), whether every leecher finished with the same
# bytes, and the wall time. Default SIZE 256M. Needs swarm-lab's make-payload.sh (openssl).
#   bash benches/swarm8.sh            # 256 MiB, 8 leechers
#   bash benches/swarm8.sh 64M 4
#   SUPER_SEED=1 bash benches/swarm8.sh   # the seed runs with --super-seed (BEP 16)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/pow-target}"
size="${1:-256M}"
count="${2:-8}"
seed_mode=plain
seed_flags=()
if [ -n "${SUPER_SEED:-}" ]; then
  seed_mode="--super-seed"
  seed_flags=(--super-seed)
fi
# POW_BIN: a pow already built (the tests pass theirs); else build it.
if [ -n "${POW_BIN:-}" ]; then
  pow="$POW_BIN"
else
  [ -n "${POW_BENCH_NO_BUILD:-}" ] || cargo build --release -p pow-cli >&2
  pow="$CARGO_TARGET_DIR/release/pow"
fi
lab="$(cd ../shared/swarm-lab && pwd)"
work="$(mktemp -d /tmp/pow-swarm8.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

tracker_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
announce="http://127.0.0.1:$tracker_port/announce"
"$pow" tracker --listen "127.0.0.1:$tracker_port" --interval 5 >"$work/tracker.log" 2>&1 &
pids+=($!)
made=$(bash "$lab/make-payload.sh" "$size" "$work/payload" --announce "$announce")
torrent=$(head -1 <<<"$made")
name=$(python3 "$lab/torrentinfo.py" "$torrent" name)
bytes=$(python3 "$lab/torrentinfo.py" "$torrent" length)

"$pow" seed "$torrent" --data "$work/payload/data" --port 52100 --bind 127.0.0.1 --json "${seed_flags[@]}" \
  >"$work/seed.out" 2>"$work/seed.err" &
seed_pid=$!
pids+=($seed_pid)
for _ in $(seq 1 600); do grep -q seeding "$work/seed.out" 2>/dev/null && break; sleep 0.1; done
grep -q seeding "$work/seed.out" || { echo "seed did not start: $(cat "$work/seed.err")"; exit 1; }

echo "machine: $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ); payload $size ($bytes bytes), $count pow leechers, 1 pow seed ($seed_mode)"
start=$(date +%s.%N)
leech_pids=()
for i in $(seq 1 "$count"); do
  "$pow" download "$torrent" -o "$work/leech$i" --port $((52100 + i)) --bind 127.0.0.1 --json \
    >"$work/leech$i.json" 2>"$work/leech$i.err" &
  leech_pids+=($!)
  pids+=($!)
done
failed=0
for i in $(seq 1 "$count"); do
  if ! wait "${leech_pids[$((i - 1))]}"; then
    echo "leecher $i failed: $(tail -2 "$work/leech$i.err")"
    failed=$((failed + 1))
  fi
done
wall=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
kill -TERM "$seed_pid"
wait "$seed_pid" 2>/dev/null || true
uploaded=$(sed -n 's/^stopped: \([0-9]*\) bytes uploaded$/\1/p' "$work/seed.err")
same=0
for i in $(seq 1 "$count"); do
  cmp -s "$work/payload/data/$name" "$work/leech$i/$name" && same=$((same + 1))
done
python3 - "$uploaded" "$bytes" "$count" "$same" "$failed" "$wall" "$work" <<'EOF'
import json, sys
uploaded, size, count, same, failed, wall, work = sys.argv[1:]
uploaded, size, count = int(uploaded or 0), int(size), int(count)
ratio = uploaded / size
from_peers = []
for i in range(1, count + 1):
    try:
        j = json.loads(open(f'{work}/leech{i}.json').read().strip().splitlines()[-1])
        from_peers.append(j.get('uploaded', 0))
    except Exception:
        from_peers.append(None)
print(f'finished with identical bytes: {same}/{count} (failed: {failed}), wall {wall} s')
print(f'seed uploaded {uploaded} bytes = {ratio:.2f}x the payload (target <= 1.5x: {"MET" if ratio <= 1.5 else "MISSED"})')
print('leechers uploaded (bytes):', ', '.join('?' if u is None else str(u) for u in from_peers))
EOF
[ "$same" = "$count" ]
