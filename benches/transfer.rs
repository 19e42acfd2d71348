//! Transfer manager throughput against SeaweedFS S3 on loopback, as a
//! ratio to raw `object_store` puts and gets of 4 MiB objects measured in
//! the same run:
//!
//! - upload: 1 GiB of dirty data already in the cache, drained;
//! - cold read: the same file read sequentially in 1 MiB reads by a
//!   manager with an empty block cache (read-ahead on).
//!
//! `cargo bench --bench transfer`; `TRANSFER_BENCH_MIB` sets the size
//! (default 1024); `TRANSFER_BENCH_UPLOADS`, `TRANSFER_BENCH_READAHEAD`
//! and `TRANSFER_BENCH_BLOCK_CACHE_MIB` override those settings. Prints a
//! markdown table. Needs `weed` (SeaweedFS) on PATH, as the test suite
//! does.

#[path = "../tests/common/seaweed.rs"]
#[allow(dead_code)]
mod seaweed;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use slicefs::blockstore::{BlockStore, StoreConfig};
use slicefs::meta::MetaStore;
use slicefs::transfer::{TransferConfig, TransferManager};
use slicefs_cache::{BLOCK_SIZE, CacheConfig, SliceCache};
use slicefs_wal::{FileId, Lsn, NullPersister};

fn store(sw: &seaweed::Seaweed, url: &str) -> BlockStore {
    let mut c = StoreConfig::new(url);
    c.options = sw.store_options();
    BlockStore::open(&c).expect("open the store")
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// Puts the `n` 4 MiB pieces of `data` (distinct bytes, as the manager
/// uploads), `concurrency` at once.
async fn raw_put(
    s: &BlockStore,
    n: usize,
    data: &Bytes,
    concurrency: usize,
    dir: &str,
) -> Duration {
    let os = s.object_store().clone();
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let os = os.clone();
            let p = Path::from(format!("{dir}/obj-{i:06}"));
            let at = i * BLOCK_SIZE as usize;
            let body = PutPayload::from_bytes(data.slice(at..at + BLOCK_SIZE as usize));
            // A task each, as the manager's uploads are, so that both use
            // every worker thread.
            tokio::spawn(async move { os.put(&p, body).await.expect("raw put") })
        })
        .buffer_unordered(concurrency)
        .for_each(|_| async {})
        .await;
    t.elapsed()
}

async fn raw_get(s: &BlockStore, n: usize, concurrency: usize, dir: &str) -> Duration {
    let os = s.object_store().clone();
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let os = os.clone();
            let p = Path::from(format!("{dir}/obj-{i:06}"));
            tokio::spawn(async move {
                let b = os
                    .get(&p)
                    .await
                    .expect("raw get")
                    .bytes()
                    .await
                    .expect("body");
                assert_eq!(b.len() as u64, BLOCK_SIZE);
            })
        })
        .buffered(concurrency)
        .for_each(|_| async {})
        .await;
    t.elapsed()
}

fn main() {
    let mib: u64 = std::env::var("TRANSFER_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let bytes = mib << 20;
    let blocks = (bytes / BLOCK_SIZE) as usize;
    let sw = seaweed::Seaweed::start().expect("start SeaweedFS");
    sw.create_bucket("bench").expect("create bucket");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut config = TransferConfig::default();
    if let Some(n) = std::env::var("TRANSFER_BENCH_READAHEAD")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.readahead_blocks = n;
    }
    if let Some(n) = std::env::var("TRANSFER_BENCH_BLOCK_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.block_cache_bytes = n << 20;
    }
    if let Some(n) = std::env::var("TRANSFER_BENCH_UPLOADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.uploads_max = n;
    }
    let data: Vec<u8> = (0..bytes)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let all = Bytes::copy_from_slice(&data);

    rt.block_on(async {
        let s = store(&sw, "s3://bench/fs");
        s.check().await.expect("store check");

        // Raw object_store: 4 MiB objects, as many at once as the manager
        // uploads.
        let put_raw = raw_put(&s, blocks, &all, config.uploads_max, "raw").await;

        // Manager upload: the cache holds `bytes` dirty; time the drain.
        let cache = Arc::new(
            SliceCache::new(CacheConfig {
                capacity_bytes: 2 * bytes + (64 << 20),
                dirty_max_bytes: 2 * bytes + (64 << 20),
                dirty_wait: Duration::from_secs(60),
            })
            .expect("cache"),
        );
        for (i, piece) in data.chunks(1 << 20).enumerate() {
            cache.insert(FileId(1), (i as u64) << 20, piece, Lsn(i as u64 + 1), None);
        }
        let meta = Arc::new(MetaStore::memory(0, 0));
        let t = Instant::now();
        let tm = TransferManager::start(
            cache.clone(),
            Arc::new(NullPersister::new()),
            meta.clone(),
            s.clone(),
            config.clone(),
        );
        tm.drain(Duration::from_secs(600)).await.expect("drain");
        let put_tm = t.elapsed();
        let up = tm.stats();
        tm.shutdown().await;
        drop(cache);
        // Raw puts again: SeaweedFS slows down as its volumes fill, so the
        // bound is the mean of a run before and after.
        let put_raw_after = raw_put(&s, blocks, &all, config.uploads_max, "raw2").await;
        let put_raw = (put_raw + put_raw_after) / 2;

        // Raw gets, then the manager's cold sequential read.
        let get_raw_8 = raw_get(&s, blocks, config.readahead_blocks as usize, "raw").await;
        let get_raw_16 = raw_get(&s, blocks, 16, "raw").await;
        let cold = TransferManager::start(
            Arc::new(SliceCache::new(CacheConfig::default()).expect("cache")),
            Arc::new(NullPersister::new()),
            meta.clone(),
            s.clone(),
            config.clone(),
        );
        let mut buf = vec![0u8; 1 << 20];
        let t = Instant::now();
        for i in 0..(bytes >> 20) {
            cold.read(FileId(1), i << 20, &mut buf).await.expect("read");
            let at = (i << 20) as usize;
            assert!(buf[..] == data[at..at + (1 << 20)], "read {i} differs");
        }
        let get_tm = t.elapsed();
        let stats = cold.stats();
        cold.shutdown().await;

        println!("SeaweedFS S3 on 127.0.0.1, {mib} MiB, 4 MiB blocks\n");
        println!("| benchmark | slicefs | raw object_store | ratio | target |");
        println!("|---|---|---|---|---|");
        println!(
            "| upload (drain of dirty data), {} uploads at once | {:.0} MB/s | {:.0} MB/s (put, {} at once) | {:.0}% | >= 90% |",
            config.uploads_max,
            mb_s(bytes, put_tm),
            mb_s(bytes, put_raw),
            config.uploads_max,
            100.0 * put_raw.as_secs_f64() / put_tm.as_secs_f64()
        );
        println!(
            "| cold sequential read, 1 MiB reads, read-ahead {} blocks | {:.0} MB/s | {:.0} MB/s (get, {} at once) | {:.0}% | >= 90% |",
            config.readahead_blocks,
            mb_s(bytes, get_tm),
            mb_s(bytes, get_raw_8),
            config.readahead_blocks,
            100.0 * get_raw_8.as_secs_f64() / get_tm.as_secs_f64()
        );
        println!(
            "| (same read) | | {:.0} MB/s (get, 16 at once) | {:.0}% | |",
            mb_s(bytes, get_raw_16),
            100.0 * get_raw_16.as_secs_f64() / get_tm.as_secs_f64()
        );
        println!(
            "\nupload: {} blocks, {} retries, last error: {:?}",
            up.uploads, up.retries, up.last_error
        );
        println!(
            "read: {} downloads, {} prefetched, {} shared, {} block-cache hits",
            stats.downloads, stats.prefetches, stats.downloads_shared, stats.block_cache_hits
        );
    });
}
