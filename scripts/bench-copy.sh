#!/bin/bash
# `cp` of one large file inside a slicefs mount (copy_file_range: whole
# uploaded 4 MiB blocks are cloned, no bytes move) against `cp` of the same
# file on the raw disk that holds the data dir, in one run.
#
#   scripts/bench-copy.sh [MIB]        (root; default 1024 MiB; in /var/tmp)
#
# Each copy starts with a cold page cache and ends with `sync -f` of the
# copy. The slicefs source is uploaded (nothing dirty) before the copy.
# Prints a markdown table; speed is never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
mib=${1:-1024}
base=${BENCH_DIR:-/var/tmp}
bench_binary
bench_workdir "$base" slicefs-bench-copy

raw=$work/raw
mkdir -p "$raw"
dd if=/dev/urandom of="$raw/big" bs=1M count="$mib" conv=fsync status=none
sync; echo 3 > /proc/sys/vm/drop_caches
s=${EPOCHREALTIME/./}
cp "$raw/big" "$raw/copy"
sync -f "$raw/copy"
raw_us=$((${EPOCHREALTIME/./} - s))

"$bin" mount "$mnt" --data-dir "$work/data" --upload-delay 1s > "$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
cp "$raw/big" "$mnt/big"
sync -f "$mnt/big"
for _ in $(seq 1 1200); do
    d=$("$bin" status --json "$mnt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["dirty_bytes"])')
    [ "$d" = 0 ] && break
    sleep 0.5
done
if [ "$d" != 0 ]; then
    echo "error: the source was not uploaded in 10 minutes ($d bytes dirty)" >&2
    exit 1
fi
sync; echo 3 > /proc/sys/vm/drop_caches
s=${EPOCHREALTIME/./}
cp "$mnt/big" "$mnt/copy"
sync -f "$mnt/copy"
fs_us=$((${EPOCHREALTIME/./} - s))
cmp "$raw/big" "$mnt/copy"

echo
echo "| cp of a $mib MiB file | raw ext4 | slicefs | slicefs/raw (time) |"
echo "|---|---|---|---|"
awk -v r="$raw_us" -v f="$fs_us" \
    'BEGIN { printf "| seconds | %.3f | %.3f | %.3f |\n", r / 1e6, f / 1e6, f / r }'
