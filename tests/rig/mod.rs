//! A test rig that plays the file system's part around the transfer
//! manager: the write path (reserve, log, cache insert, notify), truncate
//! and remove, and reads that merge the cache over the store, all checked
//! against a model (`Vec<u8>` per file).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use slicefs::blockstore::BlockStore;
use slicefs::meta::BlockMap;
use slicefs::transfer::{TransferConfig, TransferManager};
use slicefs_cache::{
    CHUNK_SIZE, CacheConfig, CacheError, RecoveryReport, SliceCache, chunk_ranges, recover,
};
use slicefs_wal::{FileId, MmapPersister, Persister, SliceWrite, WalConfig};

/// File contents as the model has them.
pub type Model = HashMap<FileId, Vec<u8>>;

/// Cache + persister + transfer manager, with a model of every file.
pub struct Rig {
    pub cache: Arc<SliceCache>,
    pub persister: Arc<dyn Persister>,
    pub tm: TransferManager,
    model: Mutex<Model>,
}

/// Settings that make tests quick: short delays and retries.
pub fn fast_config() -> TransferConfig {
    TransferConfig {
        upload_delay: std::time::Duration::from_millis(200),
        retry_initial: std::time::Duration::from_millis(5),
        retry_max: std::time::Duration::from_millis(50),
        read_retry_for: std::time::Duration::from_secs(30),
        tick: std::time::Duration::from_millis(20),
        ..TransferConfig::default()
    }
}

/// An mmap persister in `dir` with default settings.
pub fn mmap_persister(dir: &Path) -> Arc<dyn Persister> {
    Arc::new(MmapPersister::open(dir, WalConfig::default()).expect("open the log"))
}

impl Rig {
    pub fn new(
        cache: CacheConfig,
        persister: Arc<dyn Persister>,
        meta: Arc<dyn BlockMap>,
        store: BlockStore,
        config: TransferConfig,
    ) -> Rig {
        Rig::with_model(cache, persister, meta, store, config, Model::new())
    }

    pub fn with_model(
        cache: CacheConfig,
        persister: Arc<dyn Persister>,
        meta: Arc<dyn BlockMap>,
        store: BlockStore,
        config: TransferConfig,
        model: Model,
    ) -> Rig {
        let cache = Arc::new(SliceCache::new(cache).expect("cache config"));
        let tm = TransferManager::start(cache.clone(), persister.clone(), meta, store, config);
        Rig {
            cache,
            persister,
            tm,
            model: Mutex::new(model),
        }
    }

    /// A reader with an empty cache, no log and quick settings over
    /// `meta` and `store`: what it reads comes from the store.
    pub fn cold(meta: Arc<dyn BlockMap>, store: BlockStore, model: Model) -> Rig {
        Rig::with_model(
            CacheConfig::default(),
            Arc::new(slicefs_wal::NullPersister::new()),
            meta,
            store,
            fast_config(),
            model,
        )
    }

    /// Recovers the cache from `persister` before starting the manager.
    pub fn recover(
        cache: CacheConfig,
        persister: Arc<dyn Persister>,
        meta: Arc<dyn BlockMap>,
        store: BlockStore,
        config: TransferConfig,
        model: Model,
    ) -> (Rig, RecoveryReport) {
        let cache = Arc::new(SliceCache::new(cache).expect("cache config"));
        let report = recover(persister.as_ref(), &cache).expect("recovery");
        let tm = TransferManager::start(cache.clone(), persister.clone(), meta, store, config);
        let rig = Rig {
            cache,
            persister,
            tm,
            model: Mutex::new(model),
        };
        (rig, report)
    }

    pub fn model(&self) -> Model {
        self.model.lock().unwrap().clone()
    }

    /// The file system's write path: reserve dirty room (may wait), log
    /// each chunk's slice, insert it, tell the manager.
    pub async fn write(&self, file: FileId, offset: u64, data: &[u8]) -> Result<(), CacheError> {
        tokio::task::block_in_place(|| {
            let mut res = self.cache.reserve(data.len() as u64)?;
            for r in chunk_ranges(offset, data.len() as u64) {
                let bytes = &data[r.buf.clone()];
                let lsn = self
                    .persister
                    .append_slice(&SliceWrite {
                        file,
                        chunk: r.chunk,
                        slice: self.cache.next_slice_id(),
                        offset: r.offset,
                        data: bytes,
                    })
                    .expect("log append");
                let at = u64::from(r.chunk.0) * CHUNK_SIZE + u64::from(r.offset);
                self.cache.insert(file, at, bytes, lsn, Some(&mut res));
            }
            Ok::<(), CacheError>(())
        })?;
        self.tm.notify_write(file, offset, data.len() as u64);
        let mut m = self.model.lock().unwrap();
        let v = m.entry(file).or_default();
        let end = offset as usize + data.len();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    pub async fn truncate(&self, file: FileId, size: u64) {
        self.persister
            .append_truncate(file, size)
            .expect("log truncate");
        self.cache.truncate(file, size);
        self.tm.truncate(file, size).expect("truncate block map");
        self.model
            .lock()
            .unwrap()
            .entry(file)
            .or_default()
            .resize(size as usize, 0);
    }

    pub async fn remove(&self, file: FileId) {
        self.persister.append_remove(file).expect("log remove");
        self.cache.remove(file);
        self.tm.remove(file).expect("remove block map");
        self.model.lock().unwrap().remove(&file);
    }

    /// Reads like the file system: the cache, then the store for what the
    /// cache misses.
    pub async fn read(&self, file: FileId, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let missing = self.cache.read(file, offset, &mut out).expect("readable");
        for m in missing {
            let from = (m.start - offset) as usize;
            let to = (m.end - offset) as usize;
            self.tm
                .read(file, m.start, &mut out[from..to])
                .await
                .expect("read from the store");
        }
        out
    }

    /// Asserts a read equals the model (zeros past the end of the file).
    pub async fn check_read(&self, file: FileId, offset: u64, len: usize) {
        let got = self.read(file, offset, len).await;
        let want = {
            let m = self.model.lock().unwrap();
            let v = m.get(&file).cloned().unwrap_or_default();
            let mut w = vec![0u8; len];
            let start = (offset as usize).min(v.len());
            let end = (offset as usize + len).min(v.len());
            w[..end - start].copy_from_slice(&v[start..end]);
            w
        };
        if got != want {
            let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!(
                "file {} read {offset}+{len}: first difference at file offset {} (got {}, want {})",
                file.0,
                offset as usize + first,
                got[first],
                want[first]
            );
        }
    }

    /// Every file of the model, read whole and compared.
    pub async fn check_all(&self) {
        let files: Vec<(FileId, usize)> = self
            .model
            .lock()
            .unwrap()
            .iter()
            .map(|(f, v)| (*f, v.len()))
            .collect();
        for (f, len) in files {
            let mut off = 0;
            while off < len + 1 {
                let n = (1 << 20).min(len + 1 - off);
                self.check_read(f, off as u64, n).await;
                off += n;
            }
        }
    }
}
