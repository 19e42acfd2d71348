#!/usr/bin/env bash
# How slicefs's cost grows with the number of files written: on a slicefs
# mount with the embedded defaults (SQLite, the log, a file:// store) under
# BENCH_DIR (default /var/tmp), creates N files (default 300,000) of 100
# bytes each (open O_CREAT + write + close), 1000 to a directory, and
# reports the create rate and the daemon's RSS after every STEP files. Then
# waits for the uploads to finish (status.json: no dirty bytes, no upload in
# flight; at most UPLOAD_WAIT seconds; a plain 30 s sleep if the mount
# writes no status.json) and measures, with the files in place: the
# daemon's CPU use while idle (IDLE_SECS seconds, % of one core), its RSS,
# and the latency of statfs on the mount (median of 200 calls). Prints a
# markdown table per step and a summary with the targets of the growth
# issue (RSS under 100 MiB plus the cache size, idle CPU under 1%, statfs
# under 0.1 ms, last step's create rate within 20% of the first's). Needs
# root (mount(2)). The daemon must stay in the foreground (no --background).
#
# Usage: scripts/bench-growth.sh [N]     (default 300000)
#   STEP          files per reported step (default 50000)
#   SLICEFS_BIN   the slicefs binary (default: target/release/slicefs, built)
#   BENCH_DIR     where the data dir and the mountpoint go (/var/tmp)
#   SLICEFS_MOUNT_ARGS  extra `slicefs mount` arguments (split at spaces),
#                 e.g. "--cache-size 256MiB"
#   UPLOAD_WAIT   seconds to wait at most for the uploads (default 600)
#   IDLE_SECS     seconds over which idle CPU is measured (default 20)
#   SLICEFS_UMOUNT_WAIT seconds to wait for the daemon to exit after
#                 umount before killing it (default 120)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
n=${1:-300000}
step=${STEP:-50000}
base=${BENCH_DIR:-/var/tmp}
upload_wait=${UPLOAD_WAIT:-600}
idle_secs=${IDLE_SECS:-20}
umount_wait=${SLICEFS_UMOUNT_WAIT:-120}
for v in "$n" "$step" "$upload_wait" "$idle_secs" "$umount_wait"; do
    if ! [[ $v =~ ^[0-9]+$ ]] || [ "$v" -eq 0 ]; then
        echo "error: N, STEP, UPLOAD_WAIT, IDLE_SECS and SLICEFS_UMOUNT_WAIT must be positive integers (got $v)" >&2
        exit 1
    fi
done
bench_binary
bench_workdir "$base" slicefs-bench-growth
# shellcheck disable=SC2086 # arguments are words
"$bin" mount "$mnt" --data-dir "$work/data" --log-level warn ${SLICEFS_MOUNT_ARGS:-} 2>"$work/mount.log" &
pid=$!
for _ in $(seq 1 300); do
    mountpoint -q "$mnt" && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/mount.log" >&2; exit 1; }
    sleep 0.1
done
mountpoint -q "$mnt" || { echo "not mounted after 30 s" >&2; exit 1; }

# Create, wait for the uploads, measure idle CPU, RSS and statfs; the
# results go to result.json, progress to stderr.
python3 - "$mnt" "$work/data" "$pid" "$n" "$step" "$upload_wait" "$idle_secs" "$work/result.json" <<'PY'
import json, os, statistics, sys, time

mnt, data, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
n, step, upload_wait, idle_secs = map(int, sys.argv[4:8])
out = sys.argv[8]
tck = os.sysconf("SC_CLK_TCK")

def proc_status(key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    raise RuntimeError(f"no {key} in /proc/{pid}/status")

def cpu_ticks():
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rfind(")") + 2:].split()  # fields from 3 (state) on
    return int(rest[11]) + int(rest[12])  # utime (14) + stime (15)

def log(msg):
    print(msg, file=sys.stderr, flush=True)

res = {"steps": []}
payload = b"x" * 100
done = 0
t_all = time.perf_counter()
while done < n:
    count = min(step, n - done)
    t = time.perf_counter()
    for i in range(done, done + count):
        if i % 1000 == 0:
            os.mkdir(f"{mnt}/d{i // 1000:05d}")
        fd = os.open(f"{mnt}/d{i // 1000:05d}/f{i % 1000:03d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, payload)
        os.close(fd)
    rate = count / (time.perf_counter() - t)
    done += count
    rss = proc_status("VmRSS")
    res["steps"].append({"files": done, "rate": rate, "rss_mib": rss})
    log(f"{done} files: {rate:,.0f} files/s, RSS {rss:.1f} MiB")
res["create_s"] = time.perf_counter() - t_all
create_end = time.time()

# Uploads: status.json is rewritten every second; done when one written
# after the last create says no dirty bytes and no upload in flight, three
# times in a row.
status_path = os.path.join(data, "status.json")
t = time.monotonic()
if os.path.exists(status_path):
    ok, last = 0, None
    while time.monotonic() - t < upload_wait:
        try:
            if os.stat(status_path).st_mtime > create_end:
                with open(status_path) as f:
                    last = json.load(f)
                if last.get("dirty_bytes") == 0 and last.get("uploads_in_flight") == 0:
                    ok += 1
                    if ok >= 3:
                        break
                else:
                    ok = 0
        except (OSError, ValueError):
            pass  # replaced under us or half-read; try again
        time.sleep(1)
    res["upload_wait"] = "status.json" if ok >= 3 else f"timeout after {upload_wait} s"
    res["last_status"] = last
else:
    time.sleep(30)
    res["upload_wait"] = "no status.json: slept 30 s"
res["upload_wait_s"] = time.monotonic() - t
log(f"uploads: {res['upload_wait']} ({res['upload_wait_s']:.0f} s)")

# Idle CPU over idle_secs, then RSS, then statfs.
c0, t0 = cpu_ticks(), time.monotonic()
time.sleep(idle_secs)
c1, t1 = cpu_ticks(), time.monotonic()
res["idle_cpu_pct"] = 100.0 * (c1 - c0) / tck / (t1 - t0)
res["rss_idle_mib"] = proc_status("VmRSS")
res["rss_peak_mib"] = proc_status("VmHWM")
lat = []
for _ in range(200):
    t = time.perf_counter()
    os.statvfs(mnt)
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
res["statfs_median_ms"] = statistics.median(lat)
res["statfs_p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
with open(out, "w") as f:
    json.dump(res, f)
PY

# umount, then wait (bounded) for the daemon to finish and exit.
t0=$(date +%s)
if ! umount "$mnt"; then
    echo "umount $mnt failed; lazy unmount" >&2
    umount -l "$mnt" || true
fi
for _ in $(seq 1 $((umount_wait * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
    echo "slicefs still running ${umount_wait} s after umount; kill -9" >&2
    kill -9 "$pid" 2>/dev/null || true
    umount_note="killed after ${umount_wait} s"
else
    umount_note="exited after $(($(date +%s) - t0)) s"
fi
wait "$pid" 2>/dev/null || true
pid=
if [ -s "$work/mount.log" ]; then
    echo "slicefs log (last lines):" >&2
    tail -n 20 "$work/mount.log" >&2
fi

python3 - "$work/result.json" "$n" "$step" "${SLICEFS_MOUNT_ARGS:-}" "${SLICEFS_CACHE_SIZE:-}" "$umount_note" "$idle_secs" <<'PY'
import json, re, sys

res = json.load(open(sys.argv[1]))
n, step = int(sys.argv[2]), int(sys.argv[3])
args, env_cache, umount_note, idle_secs = sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]

def parse_size(s):  # as the bytesize crate: KiB = 1024, KB = K = 1000
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgtp]?)(i?)b?\s*", s, re.I)
    if not m:
        return None
    p = "kmgtp".find(m.group(2).lower()) + 1 if m.group(2) else 0
    return int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** p)

# The cache size as `slicefs mount` resolves it (a --config file is not read).
words, cache, src = args.split(), None, None
for i, w in enumerate(words):
    if w == "--cache-size" and i + 1 < len(words):
        cache, src = words[i + 1], "--cache-size"
    elif w.startswith("--cache-size="):
        cache, src = w.split("=", 1)[1], "--cache-size"
if cache is None and env_cache:
    cache, src = env_cache, "SLICEFS_CACHE_SIZE"
if cache is not None:
    cache_b = parse_size(cache)
else:
    ram = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
    cache_b = min(max(ram // 4, 64 << 20), 8 << 30)
    cache, src = f"{cache_b / 2**30:.2f} GiB", "default: RAM/4 within 64 MiB..8 GiB"
    if "--config" in args:
        src += "; a --config file may set another"
cache_mib = cache_b / 2**20 if cache_b else None

steps = res["steps"]
print(f"{n:,} files of 100 bytes, 1000 per directory; create + write + close, per step of {step:,} files")
print()
print("| files written | create rate (files/s) | RSS (MiB) |")
print("|---|---|---|")
for s in steps:
    print(f"| {s['files']:,} | {s['rate']:,.0f} | {s['rss_mib']:.1f} |")
print()
first, last = steps[0], steps[-1]
ratio = last["rate"] / first["rate"]
rss_limit = f"{100 + cache_mib:,.0f} MiB" if cache_mib is not None else "100 MiB + cache"
st = res.get("last_status") or {}
print(f"- mount args: `{args or '(none)'}`; cache size {cache} ({src})")
print(f"- create: {n:,} files in {res['create_s']:.1f} s")
print(f"- last/first step create rate: {last['rate']:,.0f} / {first['rate']:,.0f} = {ratio:.2f} (target >= 0.80)")
print(f"- uploads: {res['upload_wait']}, {res['upload_wait_s']:.0f} s after the last create"
      + (f"; dirty_bytes {st.get('dirty_bytes')}, uploads_in_flight {st.get('uploads_in_flight')},"
         f" uploads {st.get('uploads')}, gc_pending {st.get('gc_pending')}" if st else ""))
print(f"- RSS after uploads and {idle_secs} s idle: {res['rss_idle_mib']:.1f} MiB (peak {res['rss_peak_mib']:.1f} MiB; target < {rss_limit})")
print(f"- idle CPU over {idle_secs} s: {res['idle_cpu_pct']:.2f} % of one core (target < 1 %)")
print(f"- statfs: median {res['statfs_median_ms']:.3f} ms, p99 {res['statfs_p99_ms']:.3f} ms over 200 calls (target median < 0.1 ms)")
print(f"- unmount: daemon {umount_note}")
PY
