//! The byte layout of segment files. This is the only module that knows
//! the bytes on disk; `doc/DESIGN.md` repeats the layout with the
//! invariants around it. All integers are little-endian.
//!
//! # Segment header (bytes 0..128)
//! ```text
//!  0..4    magic "DWAL"
//!  4..6    version u16 (= 1)
//!  6..8    flags u16: bit 0 COMPACTED; other bits must be zero
//!  8..16   wal_id u64      random at log creation, the same in every segment
//! 16..24   salt u64        random per segment file; seeds record checksums
//! 24..32   first_lsn u64   LSN of the first record the segment may hold
//! 32..40   end_lsn u64     COMPACTED: exclusive end of the LSN range it
//!                          replaces; otherwise 0
//! 40..48   data_end u64    COMPACTED: byte offset where its records end;
//!                          otherwise 0
//! 48..60   reserved, zero
//! 60..64   header_crc u32  crc32 of bytes 0..60
//! 64..72   watermark u64   an LSN that was durable when this was written
//! 72..76   watermark_crc   crc32 seeded with the record seed, of bytes 64..72
//! 76..128  reserved, zero
//! ```
//! The watermark slot is the only part of a file ever rewritten in place;
//! it sits in the first 512-byte sector, alone with bytes that never change.
//!
//! # Record (from byte 128, each start aligned to 8 bytes)
//! ```text
//!  0..4    crc u32   crc32 of bytes 4..len, seeded with the segment's
//!                    record seed (derived from the salt)
//!  4..8    len u32   header + payload bytes, without the padding to 8
//!  8..16   lsn u64
//! 16       type u8   1 slice, 2 remove, 3 truncate, 4 flushed
//! 17..24   reserved, zero
//! 24..     payload:
//!   slice:    file u64, slice u64, chunk u32, offset u32, data
//!   remove:   file u64
//!   truncate: file u64, size u64
//!   flushed:  file u64, upto u64, chunk u32, offset u32, len u32, zero u32
//! ```
//! A record header of 24 zero bytes marks the end of the written part (the
//! rest of the file was allocated with `fallocate` and reads as zeros). A
//! zero-filled region can never pass the checksum: `len` 0 is invalid.

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::types::{
    CHUNK_SIZE, ChunkIndex, FileId, FlushedMarker, Lsn, Record, RecordKind, SliceId, SliceWrite,
};

/// The magic at byte 0 of every segment file.
pub const MAGIC: [u8; 4] = *b"DWAL";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Header flag: the segment was written whole by a compaction.
pub const FLAG_COMPACTED: u16 = 1;
/// Bytes reserved for the header; the first record starts here.
pub const HEADER_LEN: usize = 128;
/// Offset of the watermark slot.
pub const WATERMARK_OFFSET: usize = 64;
/// Length of the watermark slot (LSN + checksum).
pub const WATERMARK_LEN: usize = 12;
/// Bytes of a record header.
pub const RECORD_HEADER_LEN: usize = 24;
/// Bytes of the fixed part of a slice payload (before the data).
pub const SLICE_PAYLOAD_LEN: usize = 24;
/// Largest record: a slice holding a whole chunk.
pub const MAX_RECORD_LEN: usize = RECORD_HEADER_LEN + SLICE_PAYLOAD_LEN + CHUNK_SIZE as usize;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// The largest LSN a log may use (2^62). Headers claiming more are
/// refused, so no LSN arithmetic can overflow on hostile input; at a
/// million appends a second the space lasts 146,000 years.
pub const MAX_LSN: u64 = 1 << 62;

const TYPE_SLICE: u8 = 1;
const TYPE_REMOVE: u8 = 2;
const TYPE_TRUNCATE: u8 = 3;
const TYPE_FLUSHED: u8 = 4;

/// The fixed fields of a segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Flags (see [`FLAG_COMPACTED`]).
    pub flags: u16,
    /// Identity of the log the segment belongs to.
    pub wal_id: u64,
    /// Per-file random salt.
    pub salt: u64,
    /// LSN of the first record the segment may hold.
    pub first_lsn: Lsn,
    /// Compacted segments: exclusive end of the LSN range covered.
    pub end_lsn: Lsn,
    /// Compacted segments: byte offset where records end.
    pub data_end: u64,
}

impl SegmentHeader {
    /// Whether the segment was written by a compaction.
    pub fn is_compacted(&self) -> bool {
        self.flags & FLAG_COMPACTED != 0
    }

    /// The checksum seed of this segment's records.
    pub fn record_seed(&self) -> u32 {
        record_seed(self.salt)
    }

    /// Encodes the first 64 bytes of the header (the watermark slot is
    /// written separately by [`encode_watermark`]).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        LE::write_u16(&mut b[4..6], VERSION);
        LE::write_u16(&mut b[6..8], self.flags);
        LE::write_u64(&mut b[8..16], self.wal_id);
        LE::write_u64(&mut b[16..24], self.salt);
        LE::write_u64(&mut b[24..32], self.first_lsn.0);
        LE::write_u64(&mut b[32..40], self.end_lsn.0);
        LE::write_u64(&mut b[40..48], self.data_end);
        let crc = crc32fast::hash(&b[0..60]);
        LE::write_u32(&mut b[60..64], crc);
        b
    }

    /// Decodes and checks a header: magic, version, flags, reserved bytes,
    /// checksum, and the ranges of compacted segments.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < HEADER_LEN {
            return Err(format!(
                "file is {} bytes, shorter than the {HEADER_LEN}-byte header",
                b.len()
            ));
        }
        if b[0..4] != MAGIC {
            return Err(format!("bad magic {:02x?}, expected \"DWAL\"", &b[0..4]));
        }
        let version = LE::read_u16(&b[4..6]);
        if version != VERSION {
            return Err(format!(
                "unknown format version {version} (this build reads {VERSION})"
            ));
        }
        let crc = LE::read_u32(&b[60..64]);
        if crc32fast::hash(&b[0..60]) != crc {
            return Err("header checksum mismatch".into());
        }
        let flags = LE::read_u16(&b[6..8]);
        if flags & !FLAG_COMPACTED != 0 {
            return Err(format!("unknown header flags {flags:#06x}"));
        }
        if b[48..60].iter().any(|&x| x != 0) {
            return Err("reserved header bytes are not zero".into());
        }
        let h = SegmentHeader {
            flags,
            wal_id: LE::read_u64(&b[8..16]),
            salt: LE::read_u64(&b[16..24]),
            first_lsn: Lsn(LE::read_u64(&b[24..32])),
            end_lsn: Lsn(LE::read_u64(&b[32..40])),
            data_end: LE::read_u64(&b[40..48]),
        };
        if h.first_lsn.0 == 0 || h.first_lsn.0 > MAX_LSN || h.end_lsn.0 > MAX_LSN {
            return Err(format!(
                "LSN range {}..{} outside 1..={MAX_LSN}",
                h.first_lsn, h.end_lsn
            ));
        }
        if h.is_compacted() {
            if h.end_lsn <= h.first_lsn {
                return Err(format!(
                    "compacted range {}..{} is empty",
                    h.first_lsn, h.end_lsn
                ));
            }
            if h.data_end < HEADER_LEN as u64 {
                return Err(format!(
                    "compacted data end {} is inside the header",
                    h.data_end
                ));
            }
        } else if h.end_lsn.0 != 0 || h.data_end != 0 {
            return Err("end LSN or data end set on a segment that is not compacted".into());
        }
        Ok(h)
    }
}

/// The checksum seed for records of a segment with `salt`.
pub fn record_seed(salt: u64) -> u32 {
    (salt ^ (salt >> 32)) as u32
}

/// Encodes the watermark slot: `lsn` and its checksum under `seed`.
pub fn encode_watermark(seed: u32, lsn: Lsn) -> [u8; WATERMARK_LEN] {
    let mut b = [0u8; WATERMARK_LEN];
    LE::write_u64(&mut b[0..8], lsn.0);
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(&b[0..8]);
    LE::write_u32(&mut b[8..12], h.finalize());
    b
}

/// Decodes a watermark slot (the [`WATERMARK_LEN`] bytes at
/// [`WATERMARK_OFFSET`] of a header); `None` when it was never written or
/// does not check (a torn sector): then nothing is known.
pub fn decode_watermark(seed: u32, slot: &[u8]) -> Option<Lsn> {
    let b = slot.get(..WATERMARK_LEN)?;
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(&b[0..8]);
    (h.finalize() == LE::read_u32(&b[8..12])).then(|| Lsn(LE::read_u64(&b[0..8])))
}

/// Rounds a record length up to [`RECORD_ALIGN`].
pub fn padded(len: usize) -> usize {
    len.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// A record ready to be written: the header plus fixed payload, followed by
/// `data` and zero padding. Total bytes on disk: [`EncodedRecord::disk_len`].
pub struct EncodedRecord<'a> {
    head: [u8; RECORD_HEADER_LEN + 32],
    head_len: usize,
    data: &'a [u8],
}

impl<'a> EncodedRecord<'a> {
    /// Encodes `kind` at `lsn` for a segment whose record seed is `seed`.
    /// Checks the argument bounds the format relies on.
    pub fn new(seed: u32, lsn: Lsn, kind: &RecordKind<'a>) -> Result<Self, String> {
        let mut head = [0u8; RECORD_HEADER_LEN + 32];
        let p = &mut head[RECORD_HEADER_LEN..];
        let (ty, payload_len, data): (u8, usize, &'a [u8]) = match *kind {
            RecordKind::Slice(w) => {
                let end = u64::from(w.offset) + w.data.len() as u64;
                if end > CHUNK_SIZE {
                    return Err(format!(
                        "slice {}+{} crosses the {CHUNK_SIZE}-byte chunk",
                        w.offset,
                        w.data.len()
                    ));
                }
                LE::write_u64(&mut p[0..8], w.file.0);
                LE::write_u64(&mut p[8..16], w.slice.0);
                LE::write_u32(&mut p[16..20], w.chunk.0);
                LE::write_u32(&mut p[20..24], w.offset);
                (TYPE_SLICE, SLICE_PAYLOAD_LEN, w.data)
            }
            RecordKind::Remove { file } => {
                LE::write_u64(&mut p[0..8], file.0);
                (TYPE_REMOVE, 8, &[])
            }
            RecordKind::Truncate { file, size } => {
                LE::write_u64(&mut p[0..8], file.0);
                LE::write_u64(&mut p[8..16], size);
                (TYPE_TRUNCATE, 16, &[])
            }
            RecordKind::Flushed(m) => {
                if u64::from(m.offset) + u64::from(m.len) > CHUNK_SIZE {
                    return Err(format!(
                        "flushed range {}+{} crosses the chunk",
                        m.offset, m.len
                    ));
                }
                LE::write_u64(&mut p[0..8], m.file.0);
                LE::write_u64(&mut p[8..16], m.upto.0);
                LE::write_u32(&mut p[16..20], m.chunk.0);
                LE::write_u32(&mut p[20..24], m.offset);
                LE::write_u32(&mut p[24..28], m.len);
                (TYPE_FLUSHED, 32, &[])
            }
        };
        let head_len = RECORD_HEADER_LEN + payload_len;
        let len = head_len + data.len();
        debug_assert!(len <= MAX_RECORD_LEN);
        LE::write_u32(&mut head[4..8], len as u32);
        LE::write_u64(&mut head[8..16], lsn.0);
        head[16] = ty;
        let mut h = crc32fast::Hasher::new_with_initial(seed);
        h.update(&head[4..head_len]);
        h.update(data);
        let crc = h.finalize();
        LE::write_u32(&mut head[0..4], crc);
        Ok(EncodedRecord {
            head,
            head_len,
            data,
        })
    }

    /// Header and fixed payload bytes.
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }

    /// The slice data (empty for other types).
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Record length without padding (the `len` field).
    pub fn len(&self) -> usize {
        self.head_len + self.data.len()
    }

    /// Always false: a record has at least a header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes the record takes in the file, padding included.
    pub fn disk_len(&self) -> usize {
        padded(self.len())
    }

    /// Zero bytes to write after the data.
    pub fn padding(&self) -> &'static [u8] {
        &[0u8; RECORD_ALIGN][..self.disk_len() - self.len()]
    }
}

/// Why a scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A zero record header or the end of the bytes: nothing more written.
    End,
    /// The bytes at the offset are not a valid record.
    Invalid(String),
}

/// Decodes the record at `offset` of a segment's bytes. Returns the record
/// and its padded length, or why there is none. Checks length bounds, the
/// checksum, the type, reserved bytes and payload bounds; never allocates.
pub fn decode_record(bytes: &[u8], offset: usize, seed: u32) -> Result<(Record<'_>, usize), Stop> {
    decode(bytes, offset, Some(seed))
}

/// [`decode_record`] without the checksum, for bytes this process already
/// verified (the scan at open) and that nobody else can write (the log
/// directory is locked and these bytes are never written again). Every
/// bound is still checked, so a bad input gives `Stop::Invalid`, never a
/// panic or an out-of-bounds read.
pub fn decode_verified_record(bytes: &[u8], offset: usize) -> Result<(Record<'_>, usize), Stop> {
    decode(bytes, offset, None)
}

fn decode(bytes: &[u8], offset: usize, seed: Option<u32>) -> Result<(Record<'_>, usize), Stop> {
    let Some(head) = bytes.get(offset..offset.saturating_add(RECORD_HEADER_LEN)) else {
        return if bytes.len().saturating_sub(offset) == 0
            || bytes[offset.min(bytes.len())..].iter().all(|&x| x == 0)
        {
            Err(Stop::End)
        } else {
            Err(Stop::Invalid(
                "a partial record header at the end of the file".into(),
            ))
        };
    };
    if head.iter().all(|&x| x == 0) {
        return Err(Stop::End);
    }
    let len = LE::read_u32(&head[4..8]) as usize;
    if !(RECORD_HEADER_LEN..=MAX_RECORD_LEN).contains(&len) {
        return Err(Stop::Invalid(format!("record length {len} out of bounds")));
    }
    let Some(rec) = bytes.get(offset..offset + len) else {
        return Err(Stop::Invalid(format!(
            "record length {len} runs past the end of the file"
        )));
    };
    if let Some(seed) = seed {
        let mut h = crc32fast::Hasher::new_with_initial(seed);
        h.update(&rec[4..]);
        if h.finalize() != LE::read_u32(&rec[0..4]) {
            return Err(Stop::Invalid("record checksum mismatch".into()));
        }
    }
    // The checksum matched: what follows is what a writer of this segment
    // wrote, so a failed check below is a bug or a hostile file.
    if rec[17..24].iter().any(|&x| x != 0) {
        return Err(Stop::Invalid("reserved record bytes are not zero".into()));
    }
    let lsn = Lsn(LE::read_u64(&rec[8..16]));
    let p = &rec[RECORD_HEADER_LEN..];
    let want = |n: usize, exact: bool| -> Result<(), Stop> {
        if p.len() < n || (exact && p.len() != n) {
            Err(Stop::Invalid(format!(
                "payload of {} bytes for record type {}",
                p.len(),
                rec[16]
            )))
        } else {
            Ok(())
        }
    };
    let kind = match rec[16] {
        TYPE_SLICE => {
            want(SLICE_PAYLOAD_LEN, false)?;
            let offset_in_chunk = LE::read_u32(&p[20..24]);
            let data = &p[SLICE_PAYLOAD_LEN..];
            if u64::from(offset_in_chunk) + data.len() as u64 > CHUNK_SIZE {
                return Err(Stop::Invalid("slice crosses its chunk".into()));
            }
            RecordKind::Slice(SliceWrite {
                file: FileId(LE::read_u64(&p[0..8])),
                slice: SliceId(LE::read_u64(&p[8..16])),
                chunk: ChunkIndex(LE::read_u32(&p[16..20])),
                offset: offset_in_chunk,
                data,
            })
        }
        TYPE_REMOVE => {
            want(8, true)?;
            RecordKind::Remove {
                file: FileId(LE::read_u64(&p[0..8])),
            }
        }
        TYPE_TRUNCATE => {
            want(16, true)?;
            RecordKind::Truncate {
                file: FileId(LE::read_u64(&p[0..8])),
                size: LE::read_u64(&p[8..16]),
            }
        }
        TYPE_FLUSHED => {
            want(32, true)?;
            let m = FlushedMarker {
                file: FileId(LE::read_u64(&p[0..8])),
                upto: Lsn(LE::read_u64(&p[8..16])),
                chunk: ChunkIndex(LE::read_u32(&p[16..20])),
                offset: LE::read_u32(&p[20..24]),
                len: LE::read_u32(&p[24..28]),
            };
            if u64::from(m.offset) + u64::from(m.len) > CHUNK_SIZE || LE::read_u32(&p[28..32]) != 0
            {
                return Err(Stop::Invalid("bad flushed marker payload".into()));
            }
            RecordKind::Flushed(m)
        }
        t => return Err(Stop::Invalid(format!("unknown record type {t}"))),
    };
    Ok((Record { lsn, kind }, padded(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_to_vec(seed: u32, lsn: Lsn, kind: &RecordKind<'_>) -> Vec<u8> {
        let r = EncodedRecord::new(seed, lsn, kind).unwrap();
        let mut v = r.head().to_vec();
        v.extend_from_slice(r.data());
        v.extend_from_slice(r.padding());
        assert_eq!(v.len(), r.disk_len());
        assert_eq!(v.len() % RECORD_ALIGN, 0);
        v
    }

    fn all_kinds(data: &[u8]) -> Vec<RecordKind<'_>> {
        vec![
            RecordKind::Slice(SliceWrite {
                file: FileId(7),
                chunk: ChunkIndex(3),
                slice: SliceId(99),
                offset: 4096,
                data,
            }),
            RecordKind::Remove {
                file: FileId(u64::MAX),
            },
            RecordKind::Truncate {
                file: FileId(1),
                size: 123_456_789_012,
            },
            RecordKind::Flushed(FlushedMarker {
                file: FileId(2),
                chunk: ChunkIndex(u32::MAX),
                offset: 4 << 20,
                len: 4 << 20,
                upto: Lsn(41),
            }),
        ]
    }

    #[test]
    fn every_record_type_round_trips() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for (i, kind) in all_kinds(&data).iter().enumerate() {
            let lsn = Lsn(1000 + i as u64);
            let bytes = encode_to_vec(0xdead_beef, lsn, kind);
            let (rec, used) = decode_record(&bytes, 0, 0xdead_beef).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(rec, Record { lsn, kind: *kind });
        }
    }

    #[test]
    fn wrong_seed_or_any_flipped_bit_fails() {
        let data = [5u8; 33];
        for kind in all_kinds(&data) {
            let bytes = encode_to_vec(1, Lsn(9), &kind);
            assert!(matches!(decode_record(&bytes, 0, 2), Err(Stop::Invalid(_))));
            let len = LE::read_u32(&bytes[4..8]) as usize;
            for bit in 0..len * 8 {
                let mut b = bytes.clone();
                b[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    matches!(decode_record(&b, 0, 1), Err(Stop::Invalid(_))),
                    "bit {bit} flipped in {kind:?} still decodes"
                );
            }
        }
    }

    #[test]
    fn zeros_are_the_end_and_never_a_record() {
        let z = vec![0u8; 4096];
        for seed in [0, 1, u32::MAX] {
            assert_eq!(decode_record(&z, 0, seed), Err(Stop::End));
        }
        assert_eq!(decode_record(&z, 4096, 0), Err(Stop::End));
        assert!(matches!(
            decode_record(&[1, 2, 3], 0, 0),
            Err(Stop::Invalid(_))
        ));
    }

    #[test]
    fn out_of_chunk_arguments_are_refused() {
        let data = [0u8; 16];
        let w = RecordKind::Slice(SliceWrite {
            file: FileId(1),
            chunk: ChunkIndex(0),
            slice: SliceId(1),
            offset: (CHUNK_SIZE - 8) as u32,
            data: &data,
        });
        assert!(EncodedRecord::new(0, Lsn(1), &w).is_err());
    }

    fn header() -> SegmentHeader {
        SegmentHeader {
            flags: 0,
            wal_id: 42,
            salt: 0x1234_5678_9abc_def0,
            first_lsn: Lsn(17),
            end_lsn: Lsn(0),
            data_end: 0,
        }
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = header();
        let b = h.encode();
        assert_eq!(&b[0..4], b"DWAL");
        assert_eq!(LE::read_u16(&b[4..6]), VERSION);
        assert_eq!(SegmentHeader::decode(&b), Ok(h));

        let mut bad = b;
        bad[0] = b'X';
        assert!(SegmentHeader::decode(&bad).unwrap_err().contains("magic"));
        let mut bad = b;
        LE::write_u16(&mut bad[4..6], 2);
        assert!(
            SegmentHeader::decode(&bad)
                .unwrap_err()
                .contains("version 2")
        );
        let mut bad = b;
        bad[20] ^= 0x10;
        assert!(
            SegmentHeader::decode(&bad)
                .unwrap_err()
                .contains("checksum")
        );
        assert!(
            SegmentHeader::decode(&b[..100])
                .unwrap_err()
                .contains("shorter")
        );
    }

    #[test]
    fn compacted_header_needs_a_range() {
        let mut h = header();
        h.flags = FLAG_COMPACTED;
        h.end_lsn = Lsn(17);
        h.data_end = HEADER_LEN as u64;
        assert!(SegmentHeader::decode(&h.encode()).is_err());
        h.end_lsn = Lsn(30);
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn watermark_round_trips_and_torn_slot_reads_as_unknown() {
        let mut b = header().encode();
        let slot = WATERMARK_OFFSET..WATERMARK_OFFSET + WATERMARK_LEN;
        assert_eq!(decode_watermark(7, &b[slot.clone()]), None);
        b[slot.clone()].copy_from_slice(&encode_watermark(7, Lsn(1234)));
        assert_eq!(decode_watermark(7, &b[slot.clone()]), Some(Lsn(1234)));
        assert_eq!(decode_watermark(8, &b[slot.clone()]), None);
        b[WATERMARK_OFFSET] ^= 1;
        assert_eq!(decode_watermark(7, &b[slot]), None);
        // The fixed header is unaffected by the slot.
        assert!(SegmentHeader::decode(&b).is_ok());
    }
}
