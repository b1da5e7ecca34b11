#!/usr/bin/env bash
# benches/utp.sh [SIZE_MIB] [ROUNDS]: peer connections over uTP (BEP 29) on loopback, pow next
# to libtorrent 2.0 (its Python binding, TCP off in both directions, so every connection is
# uTP). SIZE MiB (default 256) of random data, ROUNDS runs per pair (default 3): pow seed ->
# pow download (--utp prefer), pow seed -> libtorrent, libtorrent -> pow download, and
# libtorrent -> libtorrent. Prints, per pair, MiB/s from the first byte on disk to the last
# (min / median / max; for pow its report's `seconds`, which also count the connection) and
# the leecher's CPU s/GiB; then the same for pow over TCP, for scale.
# Figures only; nothing is asserted. libtorrent's own uTP takes tens of seconds at 256 MiB
# here, so its pair runs on a quarter of the data.
set -euo pipefail
source "$(dirname "$0")/common.sh"
bench_start pow-utp-bench
size=${1:-256} rounds=${2:-3}
seed_port=17891 leech_port=17892

# A libtorrent session with TCP off: seeds, or leeches from 127.0.0.1:PEER and prints the
# seconds from the first byte it had to the last.
cat >"$work/lt.py" <<'EOF'
import libtorrent as lt, sys, time
mode, torrent, path, port, peer = sys.argv[1:6]
ses = lt.session({'listen_interfaces': '127.0.0.1:' + port, 'enable_dht': False,
                  'enable_lsd': False, 'enable_upnp': False, 'enable_natpmp': False,
                  'enable_incoming_tcp': False, 'enable_outgoing_tcp': False,
                  'enable_incoming_utp': True, 'enable_outgoing_utp': True})
atp = lt.add_torrent_params(); atp.ti = lt.torrent_info(torrent); atp.save_path = path
h = ses.add_torrent(atp)
if peer != '0':
    h.connect_peer(('127.0.0.1', int(peer)))
first, started = None, time.time()
while time.time() - started < 300:
    st = h.status()
    if mode == 'seed' and st.is_seeding:
        print('seeding', flush=True)
        while True:
            time.sleep(1)
    if first is None and st.total_wanted_done > 0:
        first = time.time()
    if mode == 'leech' and st.is_seeding:
        print(time.time() - first, flush=True)
        sys.exit(0)
    time.sleep(0.01)
sys.exit(1)
EOF

make_payload() { # NAME MIB
  mkdir -p "$work/data"
  head -c $(($2 << 20)) /dev/urandom >"$work/data/$1"
  "$pow" torrent create "$work/data/$1" -o "$work/$1.torrent" --no-date >/dev/null
}

wait_port() { for _ in $(seq 100); do ss -ltun | grep -q ":$1 " && return; sleep 0.1; done; }

start_seed() { # CLIENT NAME
  if [ "$1" = pow ]; then
    "$pow" seed "$work/$2.torrent" --data "$work/data" --port $seed_port --bind 127.0.0.1 \
      --utp "${utp_mode:-on}" 2>/dev/null & pids+=($!)
    wait_port $seed_port
  else
    /usr/bin/python3 "$work/lt.py" seed "$work/$2.torrent" "$work/data" $seed_port 0 >"$work/lt-seed.out" & pids+=($!)
    for _ in $(seq 200); do grep -q seeding "$work/lt-seed.out" 2>/dev/null && break; sleep 0.1; done
  fi
  seed_pid=$!
}

# Prints "SECONDS CPU_SECONDS" of one leech into a fresh directory.
leech() { # CLIENT NAME
  rm -rf "$work/out"; mkdir -p "$work/out"
  if [ "$1" = pow ]; then
    /usr/bin/time -f '%U %S' -o "$work/time" "$pow" download "$work/$2.torrent" -o "$work/out" \
      --peer 127.0.0.1:$seed_port --port $leech_port --utp "${utp_mode:-prefer}" --json >"$work/report.json"
    local secs cpu
    secs=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["seconds"])' "$work/report.json")
    cpu=$(awk '{print $1 + $2}' "$work/time")
    echo "$secs $cpu"
  else
    local secs cpu
    secs=$(/usr/bin/time -f '%U %S' -o "$work/time" /usr/bin/python3 "$work/lt.py" leech "$work/$2.torrent" "$work/out" $leech_port $seed_port)
    cpu=$(awk '{print $1 + $2}' "$work/time")
    echo "$secs $cpu"
  fi
  cmp -s "$work/data/$2" "$work/out/$2" || echo "MISMATCH" >&2
}

pair() { # SEEDER LEECHER NAME MIB LABEL
  local runs=()
  for _ in $(seq "$rounds"); do
    start_seed "$1" "$3"
    runs+=("$(leech "$2" "$3")")
    kill "$seed_pid" 2>/dev/null; wait "$seed_pid" 2>/dev/null || true
  done
  printf '%s\n' "${runs[@]}" | python3 -c '
import sys, statistics
mib, label = int(sys.argv[1]), sys.argv[2]
runs = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
speeds = sorted(mib / s for s, _ in runs)
cpu = statistics.median(c / (mib / 1024) for _, c in runs)
print(f"| {label} | {len(runs)} | {speeds[0]:.0f} / {statistics.median(speeds):.0f} / {speeds[-1]:.0f} | {cpu:.2f} |")
' "$4" "$5"
}

make_payload big "$size"
small=$((size / 4))
make_payload small "$small"
cat "$work/data/big" "$work/data/small" >/dev/null
echo "uTP on loopback ($rounds runs per pair; MiB/s from the first byte on disk to the last; leecher CPU):"
echo
echo "| seeder -> leecher | runs | MiB/s min / med / max | leech CPU s/GiB |"
echo "|---|---|---|---|"
pair pow pow big "$size" "pow -> pow, $size MiB"
pair pow lt big "$size" "pow -> libtorrent, $size MiB"
pair lt pow big "$size" "libtorrent -> pow, $size MiB"
pair lt lt small "$small" "libtorrent -> libtorrent, $small MiB"
utp_mode=off pair pow pow big "$size" "pow -> pow over TCP, $size MiB"
