#!/usr/bin/env bash
# Metadata rates through a real mount: create (open O_CREAT + 4 KiB write
# + close), rename and unlink of N files (default 10,000) in one
# directory, on the raw local file system and on a slicefs mount with the
# embedded defaults (SQLite, the log, a file:// store), both under the
# same directory (default /var/tmp), in one run. Prints a markdown table
# of operations per second. Needs root (mount(2)).
#
# Usage: scripts/bench-meta.sh [N]
#   SLICEFS_BIN   the slicefs binary (default: target/release/slicefs, built)
#   BENCH_DIR     where the raw directory and the data dir go (/var/tmp)
#   SLICEFS_MOUNT_ARGS  extra `slicefs mount` arguments (split at spaces),
#                 e.g. "--upload-delay 1h" to keep uploads out of the run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
n=${1:-10000}
base=${BENCH_DIR:-/var/tmp}
bench_binary
bench_workdir "$base" slicefs-bench-meta
mkdir -p "$work/raw" "$mnt"
# shellcheck disable=SC2086 # arguments are words
"$bin" mount "$mnt" --data-dir "$work/data" --log-level warn ${SLICEFS_MOUNT_ARGS:-} 2>"$work/mount.log" &
pid=$!
for _ in $(seq 1 300); do
    mountpoint -q "$mnt" && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/mount.log" >&2; exit 1; }
    sleep 0.1
done
mountpoint -q "$mnt" || { echo "not mounted after 30 s" >&2; exit 1; }

rates() {
    python3 - "$1" "$n" <<'PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(os.path.join(d, "b"))
d = os.path.join(d, "b")
data = b"x" * 4096
t = time.perf_counter()
for i in range(n):
    fd = os.open(f"{d}/f{i:06d}", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(fd, data)
    os.close(fd)
c = time.perf_counter() - t
t = time.perf_counter()
for i in range(n):
    os.rename(f"{d}/f{i:06d}", f"{d}/g{i:06d}")
r = time.perf_counter() - t
t = time.perf_counter()
for i in range(n):
    os.unlink(f"{d}/g{i:06d}")
u = time.perf_counter() - t
print(f"{n / c:,.0f} | {n / r:,.0f} | {n / u:,.0f}")
PY
}
fs=$(df -T "$work/raw" | awk 'NR==2 {print $2}')
echo "$n files of 4 KiB in one directory; operations per second"
echo
echo "| target | create + write + close | rename | unlink |"
echo "|---|---|---|---|"
echo "| raw $fs ($base) | $(rates "$work/raw") |"
echo "| slicefs (sqlite, log, file://) | $(rates "$mnt") |"
