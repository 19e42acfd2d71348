#!/usr/bin/env python3
"""Writes seed inputs for the recover_segment fuzz target: small valid logs
(one or two segments, normal or compacted, a leftover .tmp) in the input
layout the target reads. Checksums are left zero and the "repair" bit of
the first byte is set, so the target fills them in.

Usage: python3 make_seeds.py corpus/recover_segment
"""
import os
import struct
import sys

REPAIR = 1 << 3
NAMES_FROM_HEADERS = 1 << 2


def header(first, flags=0, end=0, data_end=0, wal_id=42, salt=0x1234_5678_9ABC_DEF0, watermark=0):
    h = b"DWAL" + struct.pack("<HHQQQQQ", 1, flags, wal_id, salt, first, end, data_end)
    h += b"\0" * 12 + b"\0" * 4  # reserved, header crc
    h += struct.pack("<Q", watermark) + b"\0" * 4  # watermark, its crc
    return h + b"\0" * (128 - len(h))


def record(lsn, kind, n):
    if kind == 1:
        data = bytes((n * 7 + i) % 251 for i in range(n % 40))
        payload = struct.pack("<QQII", 3, n, 0, n * 16) + data
    elif kind == 2:
        payload = struct.pack("<Q", 3)
    elif kind == 3:
        payload = struct.pack("<QQ", 3, 100 + n)
    else:
        payload = struct.pack("<QQIIII", 3, lsn - 1, 0, 0, 64, 0)
    body = struct.pack("<IIQB", 0, 24 + len(payload), lsn, kind) + b"\0" * 7 + payload
    return body + b"\0" * (-len(body) % 8)


def segment(first, count, kinds=(1, 1, 3, 1, 4, 2), compacted_end=0, watermark=0, gap=1):
    recs = b"".join(record(first + i * gap, kinds[i % len(kinds)], i) for i in range(count))
    if compacted_end:
        return header(first, 1, compacted_end, 128 + len(recs), watermark=watermark) + recs
    return header(first, watermark=watermark) + recs


def seed(layout, a, b=b"", tail=b""):
    return bytes([layout | REPAIR | NAMES_FROM_HEADERS]) + struct.pack("<H", len(a)) + a + b + tail


def main(out):
    os.makedirs(out, exist_ok=True)
    seeds = {
        "one": seed(0, segment(1, 6, watermark=3)),
        "one-torn": seed(0, segment(1, 5, watermark=2), tail=b"\x01\x02\x03"),
        "one-watermark-past-end": seed(0, segment(1, 3, watermark=9)),
        "two": seed(1, segment(1, 4, watermark=4), segment(5, 3, watermark=6)),
        "compacted-then-normal": seed(
            2, segment(1, 3, compacted_end=10, gap=3, watermark=9), segment(10, 3, watermark=11)
        ),
        "with-tmp": seed(3, segment(1, 3), segment(1, 2, compacted_end=4, watermark=3)),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, "seed-" + name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "corpus/recover_segment")
