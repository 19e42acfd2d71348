# Shared by the bench-*.sh scripts (sourced, not run): the slicefs binary
# to measure and a work directory whose mount and daemon are cleaned up on
# exit, even when the script fails.

# Sets `bin`: $SLICEFS_BIN, else a fresh release build.
bench_binary() {
    bin=${SLICEFS_BIN:-}
    if [ -z "$bin" ]; then
        cargo build --release --bin slicefs >&2
        bin=target/release/slicefs
    elif [ ! -x "$bin" ]; then
        echo "error: SLICEFS_BIN=$bin is not executable" >&2
        exit 1
    fi
}

# Sets `work` (a new directory under $1 named after $2), `mnt` (created
# inside it) and `pid` (empty: the caller sets it to the daemon's), and
# installs an EXIT trap that unmounts, waits up to 30 s for the daemon,
# kills it, and removes `work`.
bench_workdir() {
    work=$(mktemp -d "$1/$2.XXXXXX")
    mnt=$work/mnt
    pid=
    trap bench_cleanup EXIT
    mkdir -p "$mnt"
}

bench_cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    fi
    if [ -n "$pid" ]; then
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
