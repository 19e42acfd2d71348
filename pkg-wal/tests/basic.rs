//! Behaviour of the mmap persister on a real directory and on the
//! simulated storage: round trips, rotation, reclaim, locking, poisoning,
//! a full disk.

use rand::SeedableRng;
use slicefs_wal::sim::SimStorage;
use slicefs_wal::{
    ChunkIndex, Durability, FileId, FlushedMarker, Lsn, MmapPersister, Persister, RecordKind,
    SliceId, SliceWrite, WalConfig, WalError,
};

fn cfg(durability: Durability) -> WalConfig {
    WalConfig {
        durability,
        segment_bytes: 64 << 10,
        grow_bytes: 16 << 10,
        auto_reclaim: false,
        ..WalConfig::default()
    }
}

fn write(p: &dyn Persister, file: u64, chunk: u32, offset: u32, data: &[u8]) -> Lsn {
    p.append_slice(&SliceWrite {
        file: FileId(file),
        chunk: ChunkIndex(chunk),
        slice: SliceId(file * 1000 + u64::from(offset)),
        offset,
        data,
    })
    .expect("append")
}

/// (lsn, file, offset, data) of every slice record recovered.
fn slices(p: &dyn Persister) -> Vec<(u64, u64, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut r = p.recover().expect("recover");
    while let Some(rec) = r.next_record() {
        let rec = rec.expect("record");
        if let RecordKind::Slice(w) = rec.kind {
            out.push((rec.lsn.0, w.file.0, w.offset, w.data.to_vec()));
        }
    }
    out
}

#[test]
fn records_survive_close_and_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    {
        let p = MmapPersister::open(dir.path(), cfg(Durability::Always)).unwrap();
        assert!(p.is_enabled());
        for i in 0..200u32 {
            let data = vec![i as u8; 1000 + i as usize * 7];
            let lsn = write(&p, u64::from(i % 5), 0, i * 10, &data);
            assert_eq!(lsn, Lsn(u64::from(i) + 1));
            want.push((lsn.0, u64::from(i % 5), i * 10, data));
        }
        assert_eq!(p.append_truncate(FileId(1), 77).unwrap(), Lsn(201));
        assert_eq!(p.durable_lsn(), Lsn(201));
        p.close().unwrap();
        assert!(matches!(p.append_remove(FileId(1)), Err(WalError::Closed)));
    }
    let segments = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(
        segments > 3,
        "expected rotation into several segments, got {segments} files"
    );
    let p = MmapPersister::open(dir.path(), cfg(Durability::Always)).unwrap();
    assert_eq!(slices(&p), want);
    assert_eq!(p.open_stats().last_lsn, 201);
    assert_eq!(p.open_stats().by_type, [200, 0, 1, 0]);
    assert_eq!(p.next_lsn(), Lsn(202));
    // Recovering twice gives the same records.
    assert_eq!(slices(&p), want);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _p = MmapPersister::open(dir.path(), cfg(Durability::None)).unwrap();
    let err = MmapPersister::open(dir.path(), cfg(Durability::None))
        .err()
        .unwrap();
    assert!(matches!(err, WalError::Locked { .. }), "{err}");
}

#[test]
fn a_record_of_a_whole_chunk_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(64u32 << 20)).map(|i| (i % 251) as u8).collect();
    {
        let p = MmapPersister::open(
            dir.path(),
            cfg(Durability::Batch {
                max_delay: std::time::Duration::from_millis(1),
            }),
        )
        .unwrap();
        write(&p, 9, 3, 0, &big[..16 << 20]);
        write(&p, 9, 4, 0, &big);
        p.close().unwrap();
    }
    let p = MmapPersister::open(dir.path(), cfg(Durability::None)).unwrap();
    let got = slices(&p);
    assert_eq!(got.len(), 2);
    assert!(got[0].3 == big[..16 << 20]);
    assert!(got[1].3 == big);
}

#[test]
fn slices_crossing_the_chunk_are_refused_without_using_an_lsn() {
    let p = MmapPersister::open_on(SimStorage::new(), cfg(Durability::None)).unwrap();
    let err = p
        .append_slice(&SliceWrite {
            file: FileId(1),
            chunk: ChunkIndex(0),
            slice: SliceId(1),
            offset: (64 << 20) - 2,
            data: b"abc",
        })
        .unwrap_err();
    assert!(matches!(err, WalError::InvalidArgument(_)));
    assert_eq!(p.next_lsn(), Lsn(1));
}

#[test]
fn a_failed_sync_poisons_the_log_until_reopened() {
    let st = SimStorage::new();
    let p = MmapPersister::open_on(st.clone(), cfg(Durability::None)).unwrap();
    write(&p, 1, 0, 0, b"kept");
    assert_eq!(p.sync().unwrap(), Lsn(1));
    write(&p, 1, 0, 4, b"maybe");
    st.fail_syncs(true);
    assert!(p.sync().is_err());
    st.fail_syncs(false);
    // No retry: the sync that failed is not tried again, and nothing else
    // is accepted.
    assert!(matches!(p.sync(), Err(WalError::Poisoned { .. })));
    assert!(matches!(
        p.append_remove(FileId(1)),
        Err(WalError::Poisoned { .. })
    ));
    assert_eq!(p.durable_lsn(), Lsn(1));
    drop(p);
    let p = MmapPersister::open_on(st.process_crash(), cfg(Durability::None)).unwrap();
    assert_eq!(slices(&p).len(), 2);
}

/// A write error (EIO from `pwritev`) fails that append only: it uses no
/// LSN, the half record it left on disk is overwritten by the next
/// append, and after a power loss the log holds exactly the appends that
/// returned. A failed watermark write fails the sync and poisons the log.
#[test]
fn a_failed_write_fails_that_append_and_loses_nothing() {
    let st = SimStorage::new();
    let p = MmapPersister::open_on(
        st.clone(),
        cfg(Durability::Batch {
            max_delay: std::time::Duration::from_secs(3600),
        }),
    )
    .unwrap();
    assert_eq!(write(&p, 1, 0, 0, b"first"), Lsn(1));
    st.fail_writes(true);
    let err = p
        .append_slice(&SliceWrite {
            file: FileId(1),
            chunk: ChunkIndex(0),
            slice: SliceId(9),
            offset: 5,
            data: &[0xEE; 3000],
        })
        .unwrap_err();
    assert!(err.to_string().contains("pwrite"), "{err}");
    st.fail_writes(false);
    assert_eq!(p.next_lsn(), Lsn(2), "the failed append used no LSN");
    assert_eq!(write(&p, 1, 0, 5, b"second"), Lsn(2));
    assert_eq!(p.sync().unwrap(), Lsn(2));
    drop(p);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let st = st.crash(&mut rng);
    let p = MmapPersister::open_on(st.clone(), cfg(Durability::None)).unwrap();
    assert_eq!(
        slices(&p),
        vec![(1, 1, 0, b"first".to_vec()), (2, 1, 5, b"second".to_vec())]
    );
    write(&p, 1, 0, 11, b"third");
    st.fail_writes(true);
    assert!(p.sync().is_err(), "the watermark write failed");
    st.fail_writes(false);
    assert!(matches!(p.sync(), Err(WalError::Poisoned { .. })));
}

#[test]
fn a_full_disk_fails_the_append_and_loses_nothing() {
    let st = SimStorage::new();
    let p = MmapPersister::open_on(st.clone(), cfg(Durability::Always)).unwrap();
    let data = vec![7u8; 4000];
    let mut n = 0;
    st.fail_allocate(true);
    let err = loop {
        match p.append_slice(&SliceWrite {
            file: FileId(1),
            chunk: ChunkIndex(0),
            slice: SliceId(1),
            offset: n * 4000,
            data: &data,
        }) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 100, "allocation never failed");
    };
    assert!(err.is_disk_full(), "{err}");
    let next = p.next_lsn();
    assert_eq!(next, Lsn(u64::from(n) + 1));
    st.fail_allocate(false);
    // Space is back: appends go on where they stopped.
    assert_eq!(write(&p, 1, 0, n * 4000, &data), next);
    drop(p);
    let p = MmapPersister::open_on(st.process_crash(), cfg(Durability::None)).unwrap();
    assert_eq!(slices(&p).len(), n as usize + 1);
}

#[test]
fn reclaim_keeps_disk_use_proportional_to_live_data() {
    let st = SimStorage::new();
    let p = MmapPersister::open_on(st.clone(), cfg(Durability::None)).unwrap();
    let data = vec![1u8; 8192];
    let mut pinned = None;
    for round in 0..50u32 {
        for i in 0..16u32 {
            let lsn = write(&p, u64::from(round), 0, i * 8192, &data);
            if round == 0 && i == 3 {
                pinned = Some(lsn);
            }
        }
        // Everything of this round is flushed except file 0's block 3.
        let upto = p.next_lsn().0 - 1;
        for i in 0..16u32 {
            if round == 0 && i == 3 {
                continue;
            }
            p.append_flushed(&FlushedMarker {
                file: FileId(u64::from(round)),
                chunk: ChunkIndex(0),
                offset: i * 8192,
                len: 8192,
                upto: Lsn(upto),
            })
            .unwrap();
        }
        p.reclaim().unwrap();
    }
    assert_eq!(p.live_bytes(), 8192);
    let disk = st.total_bytes();
    assert!(
        disk < 4 * (64 << 10),
        "disk use {disk} not proportional to 8 KiB live"
    );
    p.sync().unwrap();
    drop(p);
    let p = MmapPersister::open_on(st.process_crash(), cfg(Durability::None)).unwrap();
    let got = slices(&p);
    let kept: Vec<_> = got.iter().filter(|s| s.1 == 0 && s.2 == 3 * 8192).collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].0, pinned.unwrap().0);
    assert_eq!(kept[0].3, data);
    assert_eq!(p.live_bytes(), 8192);
}

/// Bytes lent by `append_slice_logged` are the written bytes, and stay
/// readable after the log compacted their segment away (its file removed
/// from the directory) and after the log is closed.
#[test]
fn lent_bytes_outlive_their_segment_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let p = MmapPersister::open(dir.path(), cfg(Durability::None)).unwrap();
    let mut lent = Vec::new();
    for i in 0..40u32 {
        let data: Vec<u8> = (0..5000u32).map(|b| (b * 7 + i) as u8).collect();
        let (lsn, bytes) = p
            .append_slice_logged(&SliceWrite {
                file: FileId(1),
                chunk: ChunkIndex(0),
                slice: SliceId(u64::from(i)),
                offset: i * 5000,
                data: &data,
            })
            .unwrap();
        let bytes = bytes.expect("the mmap persister lends its bytes");
        assert_eq!(bytes.as_slice(), &data[..]);
        assert_eq!(bytes.slice(10..20).as_slice(), &data[10..20]);
        lent.push((lsn, data, bytes));
    }
    let first_segment = slicefs_wal::scan::segment_name(Lsn(1));
    assert!(dir.path().join(&first_segment).exists());
    p.append_flushed(&FlushedMarker {
        file: FileId(1),
        chunk: ChunkIndex(0),
        offset: 0,
        len: 40 * 5000,
        upto: p.next_lsn(),
    })
    .unwrap();
    write(&p, 2, 0, 0, &[9; 70_000]);
    let stats = p.reclaim().unwrap();
    assert!(stats.segments_compacted > 0, "{stats:?}");
    assert!(!dir.path().join(&first_segment).exists());
    p.close().unwrap();
    drop(p);
    for (lsn, data, bytes) in &lent {
        assert_eq!(bytes.as_slice(), &data[..], "record {lsn}");
    }
}

/// Appenders on several threads, each flushing its older writes, while the
/// background reclaim compacts: what is left un-flushed is recovered whole.
#[test]
fn concurrent_appends_with_background_reclaim_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        auto_reclaim: true,
        ..cfg(Durability::Batch {
            max_delay: std::time::Duration::from_millis(2),
        })
    };
    let threads = 4u64;
    let per_thread = 400u32;
    {
        let p = std::sync::Arc::new(MmapPersister::open(dir.path(), config.clone()).unwrap());
        std::thread::scope(|s| {
            for t in 0..threads {
                let p = p.clone();
                s.spawn(move || {
                    for i in 0..per_thread {
                        let data = vec![(t as u8) ^ (i as u8); 3000];
                        let lsn = write(&*p, t, 0, (i % 8) * 4096, &data);
                        // Everything but the last 8 writes is in the store.
                        if i >= 8 {
                            p.append_flushed(&FlushedMarker {
                                file: FileId(t),
                                chunk: ChunkIndex(0),
                                offset: ((i - 8) % 8) * 4096,
                                len: 4096,
                                upto: Lsn(lsn.0 - 1),
                            })
                            .unwrap();
                        }
                    }
                });
            }
        });
        // The background reclaim ran during the appends; one more pass
        // makes the bound below deterministic.
        p.reclaim().unwrap();
        let disk = p.disk_bytes();
        assert!(disk < 16 * (64 << 10), "disk use {disk} after reclaim");
        p.close().unwrap();
    }
    let p = MmapPersister::open(dir.path(), config).unwrap();
    // Replay: newest LSN per (file, offset) among records not voided by a
    // later flushed marker.
    let mut pending: std::collections::HashMap<(u64, u32), (u64, Vec<u8>)> = Default::default();
    let mut r = p.recover().unwrap();
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        match rec.kind {
            RecordKind::Slice(w) => {
                pending.insert((w.file.0, w.offset), (rec.lsn.0, w.data.to_vec()));
            }
            RecordKind::Flushed(m) => {
                pending.retain(|(f, off), (l, _)| {
                    !(*f == m.file.0
                        && *off >= m.offset
                        && *off < m.offset + m.len
                        && *l <= m.upto.0)
                });
            }
            _ => {}
        }
    }
    for t in 0..threads {
        for i in per_thread - 8..per_thread {
            let (_, data) = pending
                .get(&(t, (i % 8) * 4096))
                .unwrap_or_else(|| panic!("write {i} of thread {t} lost"));
            assert_eq!(data, &vec![(t as u8) ^ (i as u8); 3000]);
        }
    }
    assert_eq!(pending.len(), (threads * 8) as usize);
}

/// Regression: reclaim dropped truncate records (and the bytes they void)
/// while the metadata change behind them might not be durable yet. Now it
/// calls the owner's barrier first; a failing barrier drops nothing, and
/// the truncate survives a crash.
#[test]
fn reclaim_runs_its_barrier_first_and_drops_nothing_when_it_fails() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let st = SimStorage::new();
    let p = MmapPersister::open_on(st.clone(), cfg(Durability::None)).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let fail = Arc::new(AtomicBool::new(true));
    let (c, f) = (calls.clone(), fail.clone());
    p.set_reclaim_barrier(Box::new(move || {
        c.fetch_add(1, Ordering::SeqCst);
        if f.load(Ordering::SeqCst) {
            Err("metadata sync failed".into())
        } else {
            Ok(())
        }
    }));
    let data = vec![7u8; 8192];
    // Two segments' worth of file 1, then a truncate that voids it all.
    for i in 0..16u32 {
        write(&p, 1, 0, i * 8192, &data);
    }
    let cut = p.append_truncate(FileId(1), 0).unwrap();
    for i in 0..16u32 {
        write(&p, 2, 0, i * 8192, &data);
    }
    let disk = st.total_bytes();
    let e = p.reclaim().unwrap_err();
    assert!(matches!(e, WalError::ReclaimBarrier(_)), "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(st.total_bytes(), disk, "nothing compacted");
    // After a crash the truncate is still there.
    p.sync().unwrap();
    drop(p);
    let p = MmapPersister::open_on(st.process_crash(), cfg(Durability::None)).unwrap();
    let mut r = p.recover().unwrap();
    let mut truncates = Vec::new();
    while let Some(rec) = r.next_record() {
        let rec = rec.unwrap();
        if let RecordKind::Truncate { file, size } = rec.kind {
            truncates.push((rec.lsn, file, size));
        }
    }
    drop(r);
    assert_eq!(truncates, vec![(cut, FileId(1), 0)]);
    // With the barrier passing, reclaim drops the voided bytes.
    let (c, f) = (calls.clone(), fail.clone());
    f.store(false, Ordering::SeqCst);
    p.set_reclaim_barrier(Box::new(move || {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }));
    let stats = p.reclaim().unwrap();
    assert!(stats.segments_compacted > 0, "{stats:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Regression: an oversize record refused for a full disk right after a
/// rotation removed the empty active segment, and later appends went to
/// that unlinked file (lost at the next open). Now an ordinary active
/// segment is put back first.
#[test]
fn a_full_disk_for_an_oversize_record_keeps_the_log_appendable() {
    let st = SimStorage::new();
    let p = MmapPersister::open_on(st.clone(), cfg(Durability::None)).unwrap();
    let big = vec![1u8; 100 << 10];
    st.fail_allocate(true);
    let e = p
        .append_slice(&SliceWrite {
            file: FileId(1),
            chunk: ChunkIndex(0),
            slice: SliceId(1),
            offset: 0,
            data: &big,
        })
        .unwrap_err();
    assert!(e.is_disk_full(), "{e}");
    st.fail_allocate(false);
    let lsn = write(&p, 2, 0, 0, b"after the full disk");
    p.sync().unwrap();
    drop(p);
    let p = MmapPersister::open_on(st.process_crash(), cfg(Durability::None)).unwrap();
    let got = slices(&p);
    assert_eq!(got, vec![(lsn.0, 2, 0, b"after the full disk".to_vec())]);
}

/// In batch mode the background syncer sleeps while the log is synced
/// and an append wakes it: every append becomes durable within the
/// batch delay (bounded here by a generous wait), also after idle
/// stretches, without an explicit sync.
#[test]
fn batch_mode_syncs_appends_that_follow_an_idle_stretch() {
    let p = MmapPersister::open_on(
        SimStorage::new(),
        cfg(Durability::Batch {
            max_delay: std::time::Duration::from_millis(5),
        }),
    )
    .unwrap();
    for round in 0..5u64 {
        // Idle: the syncer has nothing to do and sleeps.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let lsn = write(&p, round + 1, 0, 0, b"some bytes");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while p.durable_lsn() < lsn && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(p.durable_lsn() >= lsn, "round {round}: not synced");
    }
    p.close().unwrap();
}

/// Uploads finish in about the order bytes were written: background
/// reclaim then drops the wholly flushed segments at the old end of the
/// log without copying a byte, keeps disk use near the live bytes, and
/// loses nothing still live.
#[test]
fn reclaim_under_first_in_first_out_flushes_copies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        auto_reclaim: true,
        ..cfg(Durability::Batch {
            max_delay: std::time::Duration::from_millis(2),
        })
    };
    let segment = config.segment_bytes;
    // 4 KiB records; the newest `lag` are not uploaded yet (two segments'
    // worth, as a dirty limit keeps a steady amount pending).
    let (records, lag) = (400u32, 32u32);
    let data = |i: u32| vec![i as u8 ^ 0x5a; 4096];
    let p = MmapPersister::open(dir.path(), config.clone()).unwrap();
    let mut lsns = Vec::new();
    for i in 0..records {
        lsns.push(write(&p, 1, i, 0, &data(i)));
        if i >= lag {
            let j = i - lag;
            p.append_flushed(&FlushedMarker {
                file: FileId(1),
                chunk: ChunkIndex(j),
                offset: 0,
                len: 4096,
                upto: lsns[j as usize],
            })
            .unwrap();
        }
    }
    // Background reclaim runs at each new segment; let the last ones land.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.disk_bytes() > 6 * segment && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let disk = p.disk_bytes();
    assert!(
        disk <= 6 * segment,
        "disk use {disk} for {} live bytes",
        p.live_bytes()
    );
    assert_eq!(
        p.compaction_copied_bytes(),
        0,
        "reclaim copied live bytes while uploads kept up"
    );
    p.close().unwrap();
    drop(p);
    let p = MmapPersister::open(dir.path(), config).unwrap();
    let mut pending = std::collections::HashMap::new();
    let mut r = p.recover().unwrap();
    while let Some(rec) = r.next_record() {
        match rec.unwrap().kind {
            RecordKind::Slice(w) => {
                pending.insert(w.chunk.0, w.data.to_vec());
            }
            RecordKind::Flushed(m) => {
                pending.remove(&m.chunk.0);
            }
            _ => {}
        }
    }
    for i in records - lag..records {
        assert_eq!(pending.get(&i), Some(&data(i)), "record {i} lost");
    }
}
