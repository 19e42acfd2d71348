#!/usr/bin/env bash
# Runs the power-loss tests: every scenario of tests/power_loss.rs, one at a
# time, and the randomized workload of tests/power_loss_random.rs with many
# seeds, one process per seed. slicefs's data dir lives on the power-loss
# simulator (pkg-powerloss); needs root and /dev/fuse (and python3 for the
# simulator's own SQLite tests, not run here).
#
# Usage: scripts/power-loss.sh [SEEDS [FIRST_SEED]]
#   SEEDS       random seeds to run (default: $POWERLOSS_SEEDS or 50)
#   FIRST_SEED  the first seed (default: $POWERLOSS_SEED or 1)
# Environment:
#   CARGO_PROFILE_FLAGS     e.g. --release (default: a debug build)
#   POWERLOSS_SLICEFS_ARGS  extra `slicefs mount` arguments for every start,
#                           e.g. "--writeback-cache=false"
#   POWERLOSS_SLICEFS_BIN   another slicefs binary to test (default: this build's)
#
# Prints "scenarios passed/total" and "seeds run/passed"; exits 1 if any
# scenario or seed failed. Logs of failures go to $LOG_DIR (default: a
# temporary directory, printed at the end).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec </dev/null

seeds=${1:-${POWERLOSS_SEEDS:-50}}
first=${2:-${POWERLOSS_SEED:-1}}
log_dir=${LOG_DIR:-$(mktemp -d -t power-loss.XXXXXX)}
mkdir -p "$log_dir"
# shellcheck disable=SC2206 # flags are words
profile=(${CARGO_PROFILE_FLAGS:-})

if [ "$(id -u)" != 0 ] || [ ! -e /dev/fuse ]; then
    echo "error: the power-loss tests mount with mount(2): run as root with /dev/fuse" >&2
    exit 2
fi

# The test executables (built once; cargo prints their paths as JSON).
build() {
    cargo test "${profile[@]}" --no-run --test "$1" --message-format=json |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1"
}
scenarios_bin=$(build power_loss) || exit 2
random_bin=$(build power_loss_random) || exit 2
if [ -z "$scenarios_bin" ] || [ -z "$random_bin" ]; then
    echo "error: could not build the power-loss tests" >&2
    exit 2
fi

echo "==== scenarios (tests/power_loss.rs) ===="
mapfile -t names < <("$scenarios_bin" --list 2>/dev/null | sed -n 's/: test$//p')
passed=0
failed_names=()
for name in "${names[@]}"; do
    start=$SECONDS
    if "$scenarios_bin" --exact "$name" --test-threads 1 >"$log_dir/$name.log" 2>&1; then
        passed=$((passed + 1))
        printf 'ok      %-70s %3ss\n' "$name" "$((SECONDS - start))"
    else
        failed_names+=("$name")
        printf 'FAILED  %-70s %3ss\n' "$name" "$((SECONDS - start))"
        # The assertion message: the line after "panicked at".
        grep -A1 "panicked at" "$log_dir/$name.log" | grep -v "panicked at\|^--" | head -n 2 | cut -c1-200 | sed 's/^/        /'
    fi
done

echo "==== random workload (tests/power_loss_random.rs), seeds $first..$((first + seeds - 1)) ===="
seeds_passed=0
failed_seeds=()
for ((seed = first; seed < first + seeds; seed++)); do
    if POWERLOSS_SEED=$seed POWERLOSS_SEEDS=1 "$random_bin" --test-threads 1 --nocapture \
        >"$log_dir/seed-$seed.log" 2>&1; then
        seeds_passed=$((seeds_passed + 1))
    else
        failed_seeds+=("$seed")
        if grep -q "FAILED:" "$log_dir/seed-$seed.log"; then
            msg=$(grep -m1 "FAILED:" "$log_dir/seed-$seed.log" | sed 's/^seed [0-9]*: FAILED: //')
        else
            msg=$(grep -m1 -A1 "panicked at" "$log_dir/seed-$seed.log" | tail -n 1)
        fi
        echo "seed $seed FAILED: ${msg:0:200}"
    fi
done

echo "==== summary ===="
echo "scenarios passed/total: $passed/${#names[@]}"
echo "seeds run/passed: $seeds/$seeds_passed"
if [ ${#failed_names[@]} -gt 0 ]; then
    echo "failed scenarios: ${failed_names[*]}"
fi
if [ ${#failed_seeds[@]} -gt 0 ]; then
    echo "failed seeds: ${failed_seeds[*]} (rerun: POWERLOSS_SEED=<seed> POWERLOSS_SEEDS=1 cargo test --test power_loss_random -- --nocapture)"
fi
echo "logs: $log_dir"
[ ${#failed_names[@]} -eq 0 ] && [ ${#failed_seeds[@]} -eq 0 ]
