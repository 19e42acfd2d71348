#!/usr/bin/env bash
# Counts the fsync and fdatasync calls of a slicefs mount process (strace)
# while N files are renamed over others, truncated, and unlinked, and
# while one file (durable before) takes N appends of 4 KiB each followed
# by fdatasync, then by fsync; each phase apart: shows whether a namespace
# operation costs an fsync, and how many device flushes a file sync costs
# (one per fdatasync is the floor: the log's). Uploads
# are held (--upload-delay 1h). Needs root and strace.
#
# Usage: scripts/count-fsyncs.sh BIN N   (EXTRA="--durability none" adds
# mount arguments)
set -uo pipefail
bin=$1; n=$2
w=$(mktemp -d /var/tmp/fc.XXXX); mkdir $w/mnt
$bin mount $w/mnt --data-dir $w/data --upload-delay 1h ${EXTRA:-} 2>$w/log & pid=$!
for i in $(seq 100); do mountpoint -q $w/mnt && break; sleep 0.1; done
python3 -c "
import os,sys
d=sys.argv[1]; n=int(sys.argv[2])
for i in range(n):
    open(f'{d}/f{i}','wb').write(b'x'*4096)
    open(f'{d}/t{i}','wb').write(b'y'*4096)
fd=os.open(f'{d}/db', os.O_CREAT|os.O_WRONLY, 0o644); os.fsync(fd); os.close(fd)
" $w/mnt $n
sync_count() { strace -f -qq -c -e trace=fsync,fdatasync -p $pid -o $w/st 2>/dev/null & sp=$!; sleep 1; python3 -c "$1" $w/mnt $n; sleep 0.5; kill -INT $sp; wait $sp 2>/dev/null; awk '/fsync|fdatasync/ {s+=$4} END {print s+0}' $w/st; }
echo "rename over: $(sync_count 'import os,sys
d=sys.argv[1]; n=int(sys.argv[2])
[os.rename(f"{d}/t{i}", f"{d}/f{i}") for i in range(n)]') fsync+fdatasync for $n"
echo "truncate: $(sync_count 'import os,sys
d=sys.argv[1]; n=int(sys.argv[2])
[os.truncate(f"{d}/f{i}", 100) for i in range(n)]') for $n"
echo "unlink: $(sync_count 'import os,sys
d=sys.argv[1]; n=int(sys.argv[2])
[os.unlink(f"{d}/f{i}") for i in range(n)]') for $n"
echo "append + fdatasync: $(sync_count 'import os,sys
d=sys.argv[1]; n=int(sys.argv[2])
fd=os.open(f"{d}/db", os.O_WRONLY|os.O_APPEND)
for i in range(n):
    os.write(fd, b"z"*4096); os.fdatasync(fd)') for $n"
echo "append + fsync: $(sync_count 'import os,sys
d=sys.argv[1]; n=int(sys.argv[2])
fd=os.open(f"{d}/db", os.O_WRONLY|os.O_APPEND)
for i in range(n):
    os.write(fd, b"z"*4096); os.fsync(fd)') for $n"
umount $w/mnt; wait $pid; rm -rf $w
