# Sourced by the bench scripts that run pow processes of their own (source_load.sh, utp.sh):
# `bench_start NAME` builds pow unless POW_BENCH_NO_BUILD=1, sets $pow to the binary and $work
# to a fresh /tmp/NAME.XXXXXX, and on exit kills every pid the script added to $pids and
# removes $work.
bench_start() {
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/pow-target}"
    [ "${POW_BENCH_NO_BUILD:-0}" = 1 ] || cargo build --release -p pow-cli >&2
    pow="$CARGO_TARGET_DIR/release/pow"
    work="$(mktemp -d "/tmp/$1.XXXXXX")"
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
