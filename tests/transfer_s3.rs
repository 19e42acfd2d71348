//! The block store and transfer manager against a real S3 server
//! (SeaweedFS on 127.0.0.1, started by the test): start-up checks, a
//! multi-block round trip, and a server killed in the middle of uploads.

mod common;
mod rig;

use std::sync::Arc;
use std::time::Duration;

use common::seaweed::Seaweed;
use slicefs::blockstore::{BlockStore, BlockStoreError, StoreConfig};
use slicefs::meta::MetaStore;
use slicefs_cache::{BLOCK_SIZE, CacheConfig};
use slicefs_wal::FileId;

use rig::{Rig, fast_config, mmap_persister};

fn s3_config(sw: &Seaweed, url: &str) -> StoreConfig {
    let mut c = StoreConfig::new(url);
    c.options = sw.store_options();
    c.request_timeout = Duration::from_secs(10);
    c
}

/// A running SeaweedFS with bucket `slicefs`, and a checked store on
/// `s3://slicefs/fs`.
async fn seaweed_store() -> (Seaweed, BlockStore) {
    let sw = Seaweed::start().expect("start SeaweedFS");
    sw.create_bucket("slicefs").expect("create bucket");
    let store = BlockStore::open(&s3_config(&sw, "s3://slicefs/fs")).unwrap();
    store.check().await.unwrap();
    (sw, store)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_check_names_missing_bucket_and_bad_credentials() {
    let sw = Seaweed::start().expect("start SeaweedFS");
    sw.create_bucket("present").expect("create bucket");

    let good = BlockStore::open(&s3_config(&sw, "s3://present/fs")).unwrap();
    good.check().await.expect("a good store passes the probe");

    let missing = BlockStore::open(&s3_config(&sw, "s3://absent/fs")).unwrap();
    let err = missing.check().await.unwrap_err();
    assert!(
        matches!(err, BlockStoreError::Unusable { op: "list", .. }),
        "{err}"
    );

    let mut bad = s3_config(&sw, "s3://present/fs");
    bad.options.retain(|(k, _)| k != "aws_secret_access_key");
    bad.options
        .push(("aws_secret_access_key".into(), "wrong".into()));
    let err = BlockStore::open(&bad).unwrap().check().await.unwrap_err();
    assert!(
        matches!(err, BlockStoreError::Unusable { op: "list", .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_block_file_round_trips_through_s3() {
    let (_sw, store) = seaweed_store().await;
    let meta = Arc::new(MetaStore::memory(0, 0));
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(
        CacheConfig::default(),
        mmap_persister(dir.path()),
        meta.clone(),
        store.clone(),
        fast_config(),
    );
    let data = pattern(5 * BLOCK_SIZE as usize + 12345, 1);
    rig.write(FileId(10), 0, &data).await.unwrap();
    // Overwrite inside a committed block: merged over it on upload.
    rig.tm.drain(Duration::from_secs(60)).await.unwrap();
    rig.write(FileId(10), BLOCK_SIZE + 777, &pattern(5000, 2))
        .await
        .unwrap();
    rig.tm.drain(Duration::from_secs(60)).await.unwrap();
    let model = rig.model();
    rig.tm.shutdown().await;

    let cold = Rig::cold(meta.clone(), store.clone(), model);
    cold.check_all().await;
    assert!(cold.tm.stats().downloads >= 6);
    // The overwritten block's old version was on the doomed list when
    // the first manager stopped (inside its grace period): the new
    // manager deletes it at start, leaving the 6 live objects.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = store.list(Some(FileId(10))).await.unwrap().len();
        if n == 6 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} objects, want 6");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cold.tm.shutdown().await;
}

/// Small files packed into shared objects, read back cold from S3 with a
/// ranged GET per file (only the file's bytes cross the wire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_small_files_round_trip_through_s3() {
    let (_sw, store) = seaweed_store().await;
    let meta = Arc::new(MetaStore::memory(0, 0));
    let rig = Rig::new(
        CacheConfig::default(),
        Arc::new(slicefs_wal::NullPersister::new()),
        meta.clone(),
        store.clone(),
        fast_config(),
    );
    for f in 0..40u64 {
        let data = pattern(1000 + 97 * f as usize, f as u8);
        rig.write(FileId(100 + f), 0, &data).await.unwrap();
    }
    rig.tm.drain(Duration::from_secs(60)).await.unwrap();
    assert!(rig.tm.stats().packs > 0);
    let objects = store.list(None).await.unwrap().len();
    assert!(objects < 40, "{objects} objects for 40 small files");
    let model = rig.model();
    rig.tm.shutdown().await;

    let cold = Rig::cold(meta.clone(), store.clone(), model.clone());
    cold.check_all().await;
    let total: usize = model.values().map(Vec::len).sum();
    assert_eq!(cold.tm.stats().download_bytes, total as u64);
    cold.tm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_killed_during_uploads_loses_nothing() {
    let (mut sw, store) = seaweed_store().await;
    let meta = Arc::new(MetaStore::memory(0, 0));
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config();
    config.uploads_max = 4;
    let rig = Rig::new(
        CacheConfig::default(),
        mmap_persister(dir.path()),
        meta.clone(),
        store.clone(),
        config,
    );
    for f in 0..3u64 {
        let data = pattern(8 * BLOCK_SIZE as usize - 1000 * f as usize, f as u8);
        rig.write(FileId(20 + f), 0, &data).await.unwrap();
    }
    // Kill the server once some uploads went through, while others run.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rig.tm.stats().uploads < 2 {
        assert!(std::time::Instant::now() < deadline, "no upload started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| sw.kill());
    let at_kill = rig.tm.stats();
    assert!(rig.cache.dirty_bytes() > 0, "uploads were left at the kill");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stalled = rig.tm.stats();
    assert!(stalled.retries > at_kill.retries, "{stalled:?}");
    assert!(stalled.stalled_for.is_some());
    // Writes go on while the store is away.
    rig.write(FileId(20), 100, &pattern(10_000, 9))
        .await
        .unwrap();
    rig.check_all().await;

    tokio::task::block_in_place(|| sw.restart()).expect("restart SeaweedFS");
    rig.tm.drain(Duration::from_secs(120)).await.unwrap();
    assert!(rig.tm.stats().stalled_for.is_none());
    let model = rig.model();
    rig.tm.shutdown().await;

    let cold = Rig::cold(meta.clone(), store.clone(), model);
    cold.check_all().await;
    cold.tm.shutdown().await;
}
