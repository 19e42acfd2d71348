//! Reference-model property test of the persister with simulated crashes.
//!
//! Random appends (all four record types), syncs, reclaims and crashes run
//! against [`MmapPersister`] on [`SimStorage`] and against a model that is
//! the list of appended records. A crash is either a power loss (synced
//! pages as synced; every unsynced page whole, torn at 512-byte sectors,
//! or lost) or a crash of the process (page cache kept).
//!
//! After every recovery:
//! - the recovered prefix reaches at least the last LSN `sync` reported
//!   durable (all of them after a process crash or in mode `Always`);
//! - the *pending state* (per file, chunk and byte: the newest un-flushed,
//!   un-removed, un-truncated write) rebuilt from the recovered records
//!   equals the model's state at the recovered LSN: byte for byte, and a
//!   gap-free prefix of the history (compaction drops dead records and
//!   trims live ones, so records are compared through their effect);
//! - no phantom record: every recovered slice is a piece of the record the
//!   model appended at that LSN, byte for byte;
//! - recovering the same storage again yields the same records.

use std::collections::HashMap;

use proptest::prelude::*;
use rand::SeedableRng;
use slicefs_wal::sim::SimStorage;
use slicefs_wal::{
    CHUNK_SIZE, ChunkIndex, Durability, FileId, FlushedMarker, Lsn, MmapPersister, Persister,
    RecordKind, SliceId, SliceWrite, WalConfig,
};

#[derive(Clone, Debug)]
enum Kind {
    Slice {
        file: u64,
        chunk: u32,
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
    /// `upto_back`: how far below the newest LSN the marker reaches.
    Flushed {
        file: u64,
        chunk: u32,
        offset: u32,
        len: u32,
        upto_back: u64,
    },
}

#[derive(Clone, Debug)]
enum Op {
    Append(Kind),
    Sync,
    Reclaim,
    Crash { seed: u64, power_loss: bool },
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => (0..3u64, 0..2u32, 0..16_000u32, 1..3000usize, any::<u8>()).prop_map(
            |(file, chunk, offset, len, seed)| Kind::Slice {
                file,
                chunk,
                offset,
                data: (0..len).map(|i| seed.wrapping_add(i as u8).wrapping_mul(31)).collect(),
            }
        ),
        1 => (0..3u64).prop_map(|file| Kind::Remove { file }),
        1 => (0..3u64, 0..2u64, 0..16_000u64).prop_map(|(file, chunk, off)| Kind::Truncate {
            file,
            size: chunk * CHUNK_SIZE + off,
        }),
        3 => (0..3u64, 0..2u32, 0..16_000u32, 0..8000u32, 0..6u64).prop_map(
            |(file, chunk, offset, len, upto_back)| Kind::Flushed {
                file,
                chunk,
                offset,
                len,
                upto_back,
            }
        ),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => kind().prop_map(Op::Append),
        2 => Just(Op::Sync),
        1 => Just(Op::Reclaim),
        1 => (any::<u64>(), any::<bool>())
            .prop_map(|(seed, power_loss)| Op::Crash { seed, power_loss }),
    ]
}

/// An owned record as the model keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    lsn: u64,
    kind: OwnedKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum OwnedKind {
    Slice {
        file: u64,
        chunk: u32,
        offset: u32,
        data: Vec<u8>,
    },
    Remove(u64),
    Truncate(u64, u64),
    Flushed(FlushedMarker),
}

impl Rec {
    fn from(lsn: Lsn, k: &RecordKind<'_>) -> Rec {
        let kind = match *k {
            RecordKind::Slice(w) => OwnedKind::Slice {
                file: w.file.0,
                chunk: w.chunk.0,
                offset: w.offset,
                data: w.data.to_vec(),
            },
            RecordKind::Remove { file } => OwnedKind::Remove(file.0),
            RecordKind::Truncate { file, size } => OwnedKind::Truncate(file.0, size),
            RecordKind::Flushed(m) => OwnedKind::Flushed(m),
        };
        Rec { lsn: lsn.0, kind }
    }
}

/// (file, chunk, byte offset) -> (lsn, value) of pending bytes.
type State = HashMap<(u64, u32, u32), (u64, u8)>;

fn state<'a>(records: impl IntoIterator<Item = &'a Rec>) -> State {
    let mut s = State::new();
    for r in records {
        match &r.kind {
            OwnedKind::Slice {
                file,
                chunk,
                offset,
                data,
            } => {
                for (i, b) in data.iter().enumerate() {
                    let key = (*file, *chunk, offset + i as u32);
                    let newer = s.get(&key).is_none_or(|(l, _)| *l <= r.lsn);
                    if newer {
                        s.insert(key, (r.lsn, *b));
                    }
                }
            }
            OwnedKind::Remove(f) => s.retain(|k, _| k.0 != *f),
            OwnedKind::Truncate(f, size) => {
                s.retain(|k, _| k.0 != *f || u64::from(k.1) * CHUNK_SIZE + u64::from(k.2) < *size)
            }
            OwnedKind::Flushed(m) => s.retain(|k, (l, _)| {
                !(k.0 == m.file.0
                    && k.1 == m.chunk.0
                    && k.2 >= m.offset
                    && k.2 < m.offset + m.len
                    && *l <= m.upto.0)
            }),
        }
    }
    s
}

fn recovered(p: &dyn Persister) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut r = p.recover().expect("recover");
    while let Some(rec) = r.next_record() {
        let rec = rec.expect("a recovered record decodes");
        out.push(Rec::from(rec.lsn, &rec.kind));
    }
    out
}

fn config(durability: Durability) -> WalConfig {
    WalConfig {
        durability,
        segment_bytes: 64 << 10,
        grow_bytes: 8 << 10,
        auto_reclaim: false,
        ..WalConfig::default()
    }
}

fn run(ops: Vec<Op>, always: bool) -> Result<(), TestCaseError> {
    let durability = if always {
        Durability::Always
    } else {
        Durability::None
    };
    let mut storage = SimStorage::new();
    let mut p = MmapPersister::open_on(storage.clone(), config(durability)).expect("open");
    let mut model: Vec<Rec> = Vec::new();
    let mut durable = 0u64;
    for op in ops {
        match op {
            Op::Append(k) => {
                let next = p.next_lsn().0;
                let kind = match &k {
                    Kind::Slice {
                        file,
                        chunk,
                        offset,
                        data,
                    } => RecordKind::Slice(SliceWrite {
                        file: FileId(*file),
                        chunk: ChunkIndex(*chunk),
                        slice: SliceId(next),
                        offset: *offset,
                        data,
                    }),
                    Kind::Remove { file } => RecordKind::Remove {
                        file: FileId(*file),
                    },
                    Kind::Truncate { file, size } => RecordKind::Truncate {
                        file: FileId(*file),
                        size: *size,
                    },
                    Kind::Flushed {
                        file,
                        chunk,
                        offset,
                        len,
                        upto_back,
                    } => RecordKind::Flushed(FlushedMarker {
                        file: FileId(*file),
                        chunk: ChunkIndex(*chunk),
                        offset: *offset,
                        len: *len,
                        upto: Lsn(next.saturating_sub(1 + upto_back)),
                    }),
                };
                let lsn = match kind {
                    RecordKind::Slice(w) => p.append_slice(&w),
                    RecordKind::Remove { file } => p.append_remove(file),
                    RecordKind::Truncate { file, size } => p.append_truncate(file, size),
                    RecordKind::Flushed(m) => p.append_flushed(&m),
                }
                .expect("append");
                prop_assert_eq!(lsn.0, next);
                if always {
                    prop_assert!(p.durable_lsn() >= lsn);
                    durable = lsn.0;
                }
                let mut rec = Rec::from(lsn, &kind);
                if let OwnedKind::Slice { .. } = rec.kind {
                    rec.lsn = lsn.0;
                }
                model.push(rec);
            }
            Op::Sync => {
                let d = p.sync().expect("sync");
                prop_assert_eq!(d.0, p.next_lsn().0 - 1);
                durable = d.0;
            }
            // Both policies: every sealed segment, or what background
            // reclaim picks (a leading run of dead segments, no copy).
            Op::Reclaim if p.next_lsn().0.is_multiple_of(2) => {
                p.reclaim_auto().expect("reclaim");
            }
            Op::Reclaim => {
                p.reclaim().expect("reclaim");
            }
            Op::Crash { seed, power_loss } => {
                drop(p);
                let appended = model.last().map_or(0, |r| r.lsn);
                storage = if power_loss {
                    storage.crash(&mut rand::rngs::StdRng::seed_from_u64(seed))
                } else {
                    storage.process_crash()
                };
                p = MmapPersister::open_on(storage.clone(), config(durability))
                    .map_err(|e| TestCaseError::fail(format!("open after crash: {e}")))?;
                let got = recovered(&p);
                let last = p.next_lsn().0 - 1;
                prop_assert!(
                    last >= durable,
                    "recovered up to {} but {} was durable",
                    last,
                    durable
                );
                if !power_loss {
                    prop_assert_eq!(last, appended, "a process crash lost appends");
                }
                prop_assert!(last <= appended, "phantom LSN {} > {}", last, appended);
                // No phantom: each recovered record is (a piece of) the
                // record appended at its LSN.
                let mut prev = 0;
                for r in &got {
                    prop_assert!(r.lsn >= prev && r.lsn <= last, "LSN order");
                    prev = r.lsn;
                    let m = &model[(r.lsn - 1) as usize];
                    match (&r.kind, &m.kind) {
                        (
                            OwnedKind::Slice {
                                file,
                                chunk,
                                offset,
                                data,
                            },
                            OwnedKind::Slice {
                                file: mf,
                                chunk: mc,
                                offset: mo,
                                data: md,
                            },
                        ) => {
                            prop_assert_eq!((file, chunk), (mf, mc));
                            prop_assert!(offset >= mo);
                            let at = (offset - mo) as usize;
                            prop_assert!(at + data.len() <= md.len());
                            prop_assert!(data[..] == md[at..at + data.len()], "bytes differ");
                        }
                        (a, b) => prop_assert_eq!(a, b),
                    }
                }
                model.truncate(last as usize);
                let (sg, sm) = (state(&got), state(&model));
                prop_assert!(
                    sg == sm,
                    "pending state differs: recovered {} bytes, model {} bytes; recovered records {:?}",
                    sg.len(),
                    sm.len(),
                    got.iter().map(|r| r.lsn).collect::<Vec<_>>()
                );
                durable = last;
                // Recovering the same storage again gives the same records.
                drop(p);
                storage = storage.process_crash();
                p = MmapPersister::open_on(storage.clone(), config(durability))
                    .map_err(|e| TestCaseError::fail(format!("second open: {e}")))?;
                prop_assert_eq!(recovered(&p), got, "second recovery differs");
            }
        }
    }
    Ok(())
}

/// Cases per property: `PROPTEST_CASES` or 96.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn proptest_wal_mode_none_with_syncs(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops, false)?;
    }

    #[test]
    fn proptest_wal_mode_always(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, true)?;
    }
}
