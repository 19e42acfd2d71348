#!/usr/bin/env bash
# Shared volumes against the single-host default, in one run: metadata
# rates (ops/s, higher is better) of N files in one directory (create +
# 1 KiB write + close, stat, open + read + close, unlink) and the time of
# cp -r of a tree + sync -f (seconds, lower is better), for
#   sqlite  one mount with the embedded default (SQLite metadata);
#   pg-1    one mount of a shared volume (PostgreSQL metadata);
#   pg-1x2  one mount of a shared volume, two clients (processes) at
#           once, each on its own half of the files and its own copy of
#           the tree: the rates are the two clients' sums, the time the
#           longer one;
#   pg-2    two mounts of one shared volume at once ("two hosts"), one
#           client on each, summed as pg-1x2.
# Blocks go to a file:// store under the work directory in every case
# (the two mounts share it), so the figures are the metadata's and the
# close-to-open uploads', not a network's. PostgreSQL is a throwaway
# cluster (Debian's package, initdb as the postgres user) on 127.0.0.1
# with its defaults (fsync on). Prints a markdown table, best of RUNS.
# Needs root (mount(2)).
#
# Usage: scripts/bench-shared.sh [N]     (default 2000)
#   RUNS         runs per target (default 3)
#   SLICEFS_BIN  the slicefs binary (default: target/release/slicefs, built)
#   BENCH_DIR    where the work directory goes (default /var/tmp)
#   BENCH_TREE   the tree cp -r copies (default /usr/include)
#   SLICEFS_PG_BIN  PostgreSQL's bin directory (default: the newest
#                /usr/lib/postgresql/*/bin)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n=${1:-2000}
runs=${RUNS:-3}
base=${BENCH_DIR:-/var/tmp}
tree=${BENCH_TREE:-/usr/include}
pgbin=${SLICEFS_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
if [ -z "$pgbin" ] || [ ! -x "$pgbin/initdb" ]; then
    echo "error: no PostgreSQL (apt-get install postgresql, or set SLICEFS_PG_BIN)" >&2
    exit 1
fi
bin=${SLICEFS_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --bin slicefs >&2
    bin=target/release/slicefs
fi

work=$(mktemp -d "$base/slicefs-bench-shared.XXXXXX")
chmod 755 "$work"
pids=()
mps=()
cleanup() {
    for mp in "${mps[@]}"; do
        mountpoint -q "$mp" 2>/dev/null && { umount "$mp" 2>/dev/null || umount -l "$mp" || true; }
    done
    for p in "${pids[@]}"; do
        for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    if [ -f "$work/pg/data/postmaster.pid" ]; then
        runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL on a free port.
mkdir -p "$work/pg"
chown postgres:postgres "$work/pg"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runuser -u postgres -- "$pgbin/initdb" -A trust -U slicefs -D "$work/pg/data" >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w \
    -o "-k $work/pg -c listen_addresses=127.0.0.1 -p $port" start >/dev/null
db=0
# new_volume: a new database formatted as a volume with its own file://
# store; sets `url` (not in a subshell: `db` counts).
new_volume() {
    db=$((db + 1))
    runuser -u postgres -- "$pgbin/psql" -q -h 127.0.0.1 -p "$port" -U slicefs -d postgres \
        -c "CREATE DATABASE b$db" >/dev/null
    url="postgres://slicefs@127.0.0.1:$port/b$db"
    mkdir -p "$work/blocks-$db"
    "$bin" format --meta "$url" --store "$work/blocks-$db" vol >/dev/null
}

# mount NAME ARGS...: a fresh data dir and mountpoint; waits for the mount.
mount_one() {
    local name=$1
    shift
    local mp=$work/mp-$name data=$work/data-$name
    rm -rf "$data"
    mkdir -p "$mp"
    "$bin" mount "$mp" --data-dir "$data" --log-level warn "$@" 2>"$work/$name.log" &
    pids+=($!)
    mps+=("$mp")
    for _ in $(seq 1 300); do
        mountpoint -q "$mp" && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/$name.log" >&2; return 1; }
        sleep 0.1
    done
    echo "$name: not mounted after 30 s" >&2
    return 1
}

unmount_all() {
    for mp in "${mps[@]}"; do
        umount "$mp" 2>/dev/null || umount -l "$mp" || true
    done
    for p in "${pids[@]}"; do
        for _ in $(seq 1 1200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    pids=()
    mps=()
}

# The workload on one mountpoint: one JSON line of rates and cp time.
workload() {
    python3 - "$1" "$2" "$tree" <<'PY'
import json, os, subprocess, sys, time
mp, n, tree = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d = os.path.join(mp, "m-%d" % os.getpid())
os.mkdir(d)
names = [os.path.join(d, "f%d" % i) for i in range(n)]
data = b"x" * 1024
out = {}
def rate(key, body):
    t = time.perf_counter()
    for p in names:
        body(p)
    out[key] = n / (time.perf_counter() - t)
def create(p):
    with open(p, "wb") as f:
        f.write(data)
def read(p):
    with open(p, "rb") as f:
        f.read()
rate("create", create)
rate("stat", os.stat)
rate("read", read)
rate("unlink", os.unlink)
t = time.perf_counter()
subprocess.run(["cp", "-r", tree, os.path.join(mp, "tree-%d" % os.getpid())], check=True)
subprocess.run(["sync", "-f", mp], check=True)
out["cp"] = time.perf_counter() - t
print(json.dumps(out))
PY
}

# pair TARGET MP_A MP_B: two workloads of N/2 files at once; records the
# sums of their rates and the longer cp.
pair() {
    workload "$2" $((n / 2)) >"$work/pa.json" &
    local wa=$!
    workload "$3" $((n / 2)) >"$work/pb.json" &
    local wb=$!
    wait "$wa" && wait "$wb"
    python3 - "$1" "$work/pa.json" "$work/pb.json" <<'PY' >>"$results"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[2:4])
r = {k: a[k] + b[k] for k in ("create", "stat", "read", "unlink")}
r["cp"] = max(a["cp"], b["cp"])
print(json.dumps({"target": sys.argv[1], "r": r}))
PY
}

results=$work/results.jsonl
for run in $(seq 1 "$runs"); do
    # sqlite: the embedded default, one mount.
    mount_one s1 && workload "$work/mp-s1" "$n" | sed 's/^/{"target":"sqlite","r":/; s/$/}/' >>"$results"
    unmount_all
    # pg-1: one mount of a shared volume.
    new_volume
    mount_one p1 --meta "$url" && workload "$work/mp-p1" "$n" | sed 's/^/{"target":"pg-1","r":/; s/$/}/' >>"$results"
    unmount_all
    # pg-1x2: one mount of a shared volume, two clients at once.
    new_volume
    mount_one p1 --meta "$url" && pair pg-1x2 "$work/mp-p1" "$work/mp-p1"
    unmount_all
    # pg-2: two mounts of one shared volume, at once.
    new_volume
    mount_one pa --meta "$url" && mount_one pb --meta "$url"
    pair pg-2 "$work/mp-pa" "$work/mp-pb"
    unmount_all
    echo "run $run of $runs done" >&2
done

python3 - "$results" "$n" "$tree" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
n, tree = sys.argv[2], sys.argv[3]
targets = ["sqlite", "pg-1", "pg-1x2", "pg-2"]
def vals(t, k):
    return [r["r"][k] for r in rows if r["target"] == t]
print(f"N = {n} files in one directory per host; cp -r of {tree}; best (median) of {len(vals('sqlite', 'stat'))} runs")
print()
print("| workload | " + " | ".join(targets) + " | pg-1/sqlite | pg-2/pg-1 |")
print("|---|" + "---|" * (len(targets) + 2))
for k, unit, best in [("create", "ops/s", max), ("stat", "ops/s", max), ("read", "ops/s", max),
                      ("unlink", "ops/s", max), ("cp", "s", min)]:
    cells, b = [], {}
    for t in targets:
        v = vals(t, k)
        if not v:
            cells.append("n/a")
            continue
        b[t] = best(v)
        fmt = "{:,.0f}" if unit == "ops/s" else "{:.2f}"
        cells.append(fmt.format(b[t]) + " (" + fmt.format(statistics.median(v)) + ")")
    r1 = b.get("pg-1", 0) / b["sqlite"] if b.get("sqlite") else 0
    r2 = b.get("pg-2", 0) / b["pg-1"] if b.get("pg-1") else 0
    name = {"create": "create + 1 KiB + close", "stat": "stat", "read": "open + read + close",
            "unlink": "unlink", "cp": "cp -r + sync (s)"}[k]
    print(f"| {name} | " + " | ".join(cells) + f" | {r1:.2f} | {r2:.2f} |")
PY
