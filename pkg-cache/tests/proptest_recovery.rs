//! The cache through the persister, with crashes: random writes,
//! truncates, removes, flushes (upload + flushed marker) and syncs go to
//! an [`MmapPersister`] on the crash-simulating storage and into a
//! [`SliceCache`]; a `Crash` drops both, simulates a power loss (or a
//! process crash) and rebuilds the cache with [`recover`].
//!
//! After every recovery, for every file: the recovered cache, with the
//! bytes it does not hold read from the object-store model, equals the
//! model file as of the recovered LSN, which is at least the last durable
//! LSN (and every appended LSN after a process crash).
//!
//! As in the file system, a flush syncs the log before it uploads (the
//! store never holds bytes the log could lose), and a truncate or remove
//! is made durable at once (the metadata store commits it synchronously).

use proptest::prelude::*;
use rand::SeedableRng;
use slicefs_cache::{BLOCK_SIZE, CHUNK_SIZE, CacheConfig, SliceCache, chunk_ranges, recover};
use slicefs_wal::sim::SimStorage;
use slicefs_wal::{
    Durability, FileId, FlushedMarker, MmapPersister, Persister, SliceWrite, WalConfig,
};

#[derive(Clone, Debug)]
enum Op {
    Write {
        file: u64,
        offset: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        file: u64,
        size: u64,
    },
    Remove {
        file: u64,
    },
    Flush {
        file: u64,
    },
    Sync,
    Reclaim,
    Crash {
        seed: u64,
        power_loss: bool,
    },
}

fn offset() -> impl Strategy<Value = u64> {
    // Offsets near a chunk boundary make 64 MiB model files: rarer.
    prop_oneof![
        8 => 0..20_000u64,
        4 => (0..8_000u64).prop_map(|d| BLOCK_SIZE - 4_000 + d),
        1 => (0..8_000u64).prop_map(|d| CHUNK_SIZE - 4_000 + d),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..3u64, offset(), 1..6_000usize, any::<u8>())
            .prop_map(|(file, offset, len, seed)| Op::Write { file, offset, len, seed }),
        1 => (0..3u64, offset()).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (0..3u64).prop_map(|file| Op::Remove { file }),
        3 => (0..3u64).prop_map(|file| Op::Flush { file }),
        2 => Just(Op::Sync),
        1 => Just(Op::Reclaim),
        1 => (any::<u64>(), any::<bool>())
            .prop_map(|(seed, power_loss)| Op::Crash { seed, power_loss }),
    ]
}

/// What happened at an LSN, to rebuild the model at any LSN.
#[derive(Clone, Debug)]
enum Event {
    Write {
        file: u64,
        offset: u64,
        data: Vec<u8>,
    },
    Truncate {
        file: u64,
        size: u64,
    },
    Remove {
        file: u64,
    },
}

const FILES: usize = 3;

/// File contents after the events with LSN <= `upto`.
fn model_at(history: &[(u64, Event)], upto: u64) -> Vec<Vec<u8>> {
    let mut files = vec![Vec::new(); FILES];
    for (lsn, ev) in history {
        if *lsn > upto {
            break;
        }
        match ev {
            Event::Write { file, offset, data } => {
                let f = &mut files[*file as usize];
                let end = *offset as usize + data.len();
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[*offset as usize..end].copy_from_slice(data);
            }
            Event::Truncate { file, size } => files[*file as usize].resize(*size as usize, 0),
            Event::Remove { file } => files[*file as usize].clear(),
        }
    }
    files
}

fn wal_config(always: bool) -> WalConfig {
    WalConfig {
        durability: if always {
            Durability::Always
        } else {
            Durability::None
        },
        segment_bytes: 64 << 10,
        grow_bytes: 16 << 10,
        auto_reclaim: false,
        ..WalConfig::default()
    }
}

fn cache() -> SliceCache {
    SliceCache::new(CacheConfig {
        capacity_bytes: 256 << 20,
        dirty_max_bytes: 256 << 20,
        ..CacheConfig::default()
    })
    .expect("cache")
}

fn check(cache: &SliceCache, store: &[Vec<u8>], model: &[Vec<u8>]) -> Result<(), TestCaseError> {
    for f in 0..FILES {
        let len = model[f].len().max(store[f].len()) + 100;
        let mut buf = vec![0u8; len];
        for m in cache.read(FileId(f as u64), 0, &mut buf).expect("readable") {
            let (a, b) = (m.start as usize, m.end as usize);
            let s = &store[f];
            let have = b.min(s.len()).max(a);
            if have > a {
                buf[a..have].copy_from_slice(&s[a..have]);
            }
            buf[have..b].fill(0);
        }
        let mut want = model[f].clone();
        want.resize(len, 0);
        if buf != want {
            let first = buf.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(TestCaseError::fail(format!(
                "file {f} differs first at byte {first}: got {} want {}",
                buf[first], want[first]
            )));
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>, always: bool) -> Result<(), TestCaseError> {
    let mut storage = SimStorage::new();
    let mut wal = MmapPersister::open_on(storage.clone(), wal_config(always)).expect("open");
    let mut cache = cache();
    let mut history: Vec<(u64, Event)> = Vec::new();
    let mut store: Vec<Vec<u8>> = vec![Vec::new(); FILES];
    let mut durable = 0u64;
    for op in ops {
        match op {
            Op::Write {
                file,
                offset,
                len,
                seed,
            } => {
                let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add((i / 7) as u8)).collect();
                let mut reservation = cache.reserve(len as u64).expect("reserve");
                for r in chunk_ranges(offset, len as u64) {
                    let lsn = wal
                        .append_slice(&SliceWrite {
                            file: FileId(file),
                            chunk: r.chunk,
                            slice: cache.next_slice_id(),
                            offset: r.offset,
                            data: &data[r.buf.clone()],
                        })
                        .expect("append");
                    let at = u64::from(r.chunk.0) * CHUNK_SIZE + u64::from(r.offset);
                    cache.insert(
                        FileId(file),
                        at,
                        &data[r.buf.clone()],
                        lsn,
                        Some(&mut reservation),
                    );
                    history.push((
                        lsn.0,
                        Event::Write {
                            file,
                            offset: at,
                            data: data[r.buf.clone()].to_vec(),
                        },
                    ));
                }
            }
            Op::Truncate { file, size } => {
                let lsn = wal.append_truncate(FileId(file), size).expect("truncate");
                cache.truncate(FileId(file), size);
                history.push((lsn.0, Event::Truncate { file, size }));
                durable = wal.sync().expect("sync").0;
                store[file as usize].truncate(size as usize);
            }
            Op::Remove { file } => {
                let lsn = wal.append_remove(FileId(file)).expect("remove");
                cache.remove(FileId(file));
                history.push((lsn.0, Event::Remove { file }));
                durable = wal.sync().expect("sync").0;
                store[file as usize].clear();
            }
            Op::Flush { file } => {
                durable = wal.sync().expect("sync").0;
                for snap in cache.dirty_blocks(FileId(file)) {
                    // The upload: the snapshot's bytes over the committed block.
                    let base = u64::from(snap.chunk.0) * CHUNK_SIZE;
                    let s = &mut store[file as usize];
                    for (off, bytes) in &snap.ranges {
                        let at = (base + u64::from(*off)) as usize;
                        if s.len() < at + bytes.len() {
                            s.resize(at + bytes.len(), 0);
                        }
                        s[at..at + bytes.len()].copy_from_slice(bytes);
                    }
                    wal.append_flushed(&FlushedMarker {
                        file: FileId(file),
                        chunk: snap.chunk,
                        offset: snap.block_offset(),
                        len: BLOCK_SIZE as u32,
                        upto: snap.lsn,
                    })
                    .expect("flushed marker");
                    cache.mark_flushed(&snap);
                }
            }
            Op::Sync => durable = wal.sync().expect("sync").0,
            Op::Reclaim => {
                wal.reclaim().expect("reclaim");
                durable = wal.durable_lsn().0;
            }
            Op::Crash { seed, power_loss } => {
                let appended = wal.next_lsn().0 - 1;
                drop(wal);
                drop(cache);
                storage = if power_loss {
                    storage.crash(&mut rand::rngs::StdRng::seed_from_u64(seed))
                } else {
                    storage.process_crash()
                };
                wal = MmapPersister::open_on(storage.clone(), wal_config(always))
                    .map_err(|e| TestCaseError::fail(format!("open after crash: {e}")))?;
                cache = self::cache();
                let report = recover(&wal, &cache)
                    .map_err(|e| TestCaseError::fail(format!("recover: {e}")))?;
                let last = wal.next_lsn().0 - 1;
                prop_assert!(
                    last >= durable,
                    "recovered to {} < durable {}",
                    last,
                    durable
                );
                if !power_loss || always {
                    prop_assert_eq!(last, appended);
                }
                prop_assert!(report.last_lsn <= last);
                history.retain(|(l, _)| *l <= last);
                check(&cache, &store, &model_at(&history, last))?;
                durable = last;
            }
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn proptest_cache_recovery_mode_none(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, false)?;
    }

    #[test]
    fn proptest_cache_recovery_mode_always(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, true)?;
    }
}

#[test]
fn recovered_cache_holds_only_unflushed_bytes() {
    let storage = SimStorage::new();
    let wal = MmapPersister::open_on(storage.clone(), wal_config(false)).expect("open");
    let c = cache();
    let data = vec![9u8; 10_000];
    for (i, file) in [1u64, 2].iter().enumerate() {
        let lsn = wal
            .append_slice(&SliceWrite {
                file: FileId(*file),
                chunk: slicefs_wal::ChunkIndex(0),
                slice: c.next_slice_id(),
                offset: 0,
                data: &data,
            })
            .expect("append");
        c.insert(FileId(*file), 0, &data, lsn, None);
        if i == 0 {
            for snap in c.dirty_blocks(FileId(*file)) {
                wal.append_flushed(&FlushedMarker {
                    file: FileId(*file),
                    chunk: snap.chunk,
                    offset: snap.block_offset(),
                    len: BLOCK_SIZE as u32,
                    upto: snap.lsn,
                })
                .expect("marker");
                c.mark_flushed(&snap);
            }
        }
    }
    wal.sync().expect("sync");
    drop(wal);
    let wal = MmapPersister::open_on(storage.process_crash(), wal_config(false)).expect("open");
    let c = cache();
    let report = recover(&wal, &c).expect("recover");
    assert_eq!(report.files_with_pending, vec![FileId(2)]);
    assert_eq!(report.pending_bytes, 10_000);
    assert_eq!(report.flushed_bytes_dropped, 10_000);
    assert_eq!(report.last_lsn, 3);
    let stats = c.stats();
    assert_eq!((stats.dirty_bytes, stats.clean_bytes), (10_000, 0));
}
