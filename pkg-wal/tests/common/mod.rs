//! Helpers shared by the persister's integration tests: an owned copy of
//! a record, appending one, and collecting what a log recovers.

#![allow(dead_code)] // each test crate uses a different subset

use slicefs_wal::format::padded;
use slicefs_wal::{
    ChunkIndex, FileId, FlushedMarker, Lsn, Persister, RecordKind, SliceId, SliceWrite,
};

/// An owned copy of a record's content, to compare what was appended with
/// what is recovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Slice {
        file: u64,
        chunk: u32,
        slice: u64,
        offset: u32,
        data: Vec<u8>,
    },
    Remove {
        file: u64,
    },
    Truncate {
        file: u64,
        size: u64,
    },
    Flushed {
        file: u64,
        chunk: u32,
        offset: u32,
        len: u32,
        upto: u64,
    },
}

impl Kind {
    pub fn from_record(k: &RecordKind<'_>) -> Kind {
        match *k {
            RecordKind::Slice(w) => Kind::Slice {
                file: w.file.0,
                chunk: w.chunk.0,
                slice: w.slice.0,
                offset: w.offset,
                data: w.data.to_vec(),
            },
            RecordKind::Remove { file } => Kind::Remove { file: file.0 },
            RecordKind::Truncate { file, size } => Kind::Truncate { file: file.0, size },
            RecordKind::Flushed(m) => Kind::Flushed {
                file: m.file.0,
                chunk: m.chunk.0,
                offset: m.offset,
                len: m.len,
                upto: m.upto.0,
            },
        }
    }

    /// The record's `len` field: header and payload, without padding.
    pub fn len(&self) -> u64 {
        24 + match self {
            Kind::Slice { data, .. } => 24 + data.len() as u64,
            Kind::Remove { .. } => 8,
            Kind::Truncate { .. } => 16,
            Kind::Flushed { .. } => 32,
        }
    }

    /// Bytes the record takes in its segment, padding included.
    pub fn disk_len(&self) -> u64 {
        padded(self.len() as usize) as u64
    }
}

pub fn append(p: &dyn Persister, k: &Kind) -> Lsn {
    match k {
        Kind::Slice {
            file,
            chunk,
            slice,
            offset,
            data,
        } => p.append_slice(&SliceWrite {
            file: FileId(*file),
            chunk: ChunkIndex(*chunk),
            slice: SliceId(*slice),
            offset: *offset,
            data,
        }),
        Kind::Remove { file } => p.append_remove(FileId(*file)),
        Kind::Truncate { file, size } => p.append_truncate(FileId(*file), *size),
        Kind::Flushed {
            file,
            chunk,
            offset,
            len,
            upto,
        } => p.append_flushed(&FlushedMarker {
            file: FileId(*file),
            chunk: ChunkIndex(*chunk),
            offset: *offset,
            len: *len,
            upto: Lsn(*upto),
        }),
    }
    .expect("append")
}

/// Every record the persister recovers, in order.
pub fn recovered(p: &dyn Persister) -> Vec<(u64, Kind)> {
    let mut out = Vec::new();
    let mut r = p.recover().expect("recover");
    while let Some(rec) = r.next_record() {
        let rec = rec.expect("recovered record");
        out.push((rec.lsn.0, Kind::from_record(&rec.kind)));
    }
    out
}
