//! The block store: immutable 4 MiB block objects in an object store
//! (`object_store`), chosen by URL.
//!
//! Key layout, under the URL's path (the *prefix*):
//!
//! ```text
//! <prefix>/blocks/<file:016x>/<chunk:08x>/<block:02x>-<version:016x>
//! ```
//!
//! `file` is the inode number, `chunk` the 64 MiB chunk index, `block` the
//! 4 MiB block index inside the chunk (0..16) and `version` a number the
//! metadata store hands out once ([`crate::meta::BlockMap::allocate_version`]).
//! A new version of a block is a new object, so an object referenced by
//! committed metadata is never overwritten; old versions are deleted by the
//! garbage collector after the metadata that referenced them is replaced.
//! An object is at most 4 MiB; a block at the end of a file may be shorter.

mod aws;
mod faulty;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use slicefs_wal::{ChunkIndex, FileId};
use url::Url;

pub use faulty::{FaultConfig, FaultyStore};

/// Name of one version of one block: where it lives in the object store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The file (inode number).
    pub file: FileId,
    /// The 64 MiB chunk of the file.
    pub chunk: ChunkIndex,
    /// The 4 MiB block inside the chunk, `0..16`.
    pub block: u32,
    /// The version, unique for the life of the filesystem.
    pub version: u64,
}

/// How block keys map to object names. Recorded in metadata when a
/// filesystem is made (`MetaStore::store_layout`): a store keeps the
/// layout it was written with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyLayout {
    /// `blocks/<file:016x>/<chunk:08x>/<block:02x>-<version:016x>`: two
    /// directories per file in a `file://` store (each created with two
    /// fsyncs, 8 KiB of disk). Filesystems made before layout 2.
    PerFile,
    /// `blocks/<file/1024:013x>/<file:016x>-<chunk:08x>-<block:02x>-<version:016x>`:
    /// one directory per 1024 inode numbers, so a small file's upload
    /// creates no directory. The default since layout 2.
    #[default]
    Sharded,
}

/// Inode numbers per directory of [`KeyLayout::Sharded`].
const SHARD_FILES: u64 = 1024;

impl KeyLayout {
    /// The number recorded in metadata (1 or 2).
    pub fn number(self) -> u64 {
        match self {
            KeyLayout::PerFile => 1,
            KeyLayout::Sharded => 2,
        }
    }

    /// The layout recorded as `n`, if known.
    pub fn from_number(n: u64) -> Option<KeyLayout> {
        match n {
            1 => Some(KeyLayout::PerFile),
            2 => Some(KeyLayout::Sharded),
            _ => None,
        }
    }

    /// The directory (under `blocks/`) holding `file`'s objects (and, in
    /// a shard, other files' objects).
    fn file_dir(self, file: FileId) -> String {
        match self {
            KeyLayout::PerFile => format!("{:016x}", file.0),
            KeyLayout::Sharded => format!("{:013x}", file.0 / SHARD_FILES),
        }
    }
}

impl BlockKey {
    fn path(&self, prefix: &Path, layout: KeyLayout) -> Path {
        let rel = match layout {
            KeyLayout::PerFile => format!(
                "blocks/{:016x}/{:08x}/{:02x}-{:016x}",
                self.file.0, self.chunk.0, self.block, self.version
            ),
            KeyLayout::Sharded => format!(
                "blocks/{:013x}/{:016x}-{:08x}-{:02x}-{:016x}",
                self.file.0 / SHARD_FILES,
                self.file.0,
                self.chunk.0,
                self.block,
                self.version
            ),
        };
        join(prefix, &rel)
    }

    /// Parses the part of an object path after `<prefix>/blocks/`, in
    /// either layout.
    fn parse(rel: &str) -> Option<BlockKey> {
        let hex64 = |s: &str| u64::from_str_radix(s, 16).ok();
        let hex32 = |s: &str| u32::from_str_radix(s, 16).ok();
        let parts: Vec<&str> = rel.split('/').collect();
        let (file, chunk, block, version) = match parts[..] {
            [file, chunk, name] => {
                let (block, version) = name.split_once('-')?;
                (hex64(file)?, hex32(chunk)?, hex32(block)?, hex64(version)?)
            }
            [shard, name] => {
                let f: Vec<&str> = name.split('-').collect();
                let [file, chunk, block, version] = f[..] else {
                    return None;
                };
                let file = hex64(file)?;
                if hex64(shard)? != file / SHARD_FILES {
                    return None;
                }
                (file, hex32(chunk)?, hex32(block)?, hex64(version)?)
            }
            _ => return None,
        };
        Some(BlockKey {
            file: FileId(file),
            chunk: ChunkIndex(chunk),
            block,
            version,
        })
    }
}

impl fmt::Display for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:016x}/{:08x}/{:02x}-{:016x}",
            self.file.0, self.chunk.0, self.block, self.version
        )
    }
}

/// The object, at the store's prefix, that names the volume its blocks
/// belong to (a UUID, one line).
pub const VOLUME_MARKER: &str = "slicefs-volume";

fn join(prefix: &Path, rel: &str) -> Path {
    if prefix.as_ref().is_empty() {
        Path::from(rel)
    } else {
        Path::from(format!("{}/{rel}", prefix.as_ref()))
    }
}

/// Errors of the block store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockStoreError {
    /// The store URL cannot be used: not a URL, an unknown scheme, or
    /// options the backend rejects.
    #[error("invalid block store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store answered the start-up probe with an error: a missing
    /// bucket, rejected credentials, an unreachable endpoint...
    #[error(
        "block store {url} is not usable (the {op} step of the start-up probe failed): {source}"
    )]
    Unusable {
        /// The store URL.
        url: String,
        /// The probe step that failed (`list`, `put`, `get`, `delete`).
        op: &'static str,
        /// The backend's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A block object that metadata references is missing.
    #[error("block object {key} not found in {url}")]
    NotFound {
        /// The store URL.
        url: String,
        /// The block.
        key: BlockKey,
    },
    /// A request to the store failed (it may succeed when retried).
    #[error("{op} of block {key} in {url} failed: {source}")]
    Request {
        /// The store URL.
        url: String,
        /// `put`, `get` or `delete`.
        op: &'static str,
        /// The block.
        key: BlockKey,
        /// The backend's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// Listing the store failed.
    #[error("listing {url} failed: {source}")]
    List {
        /// The store URL.
        url: String,
        /// The backend's error.
        #[source]
        source: Box<object_store::Error>,
    },
}

/// Start-up settings of a [`BlockStore`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Where blocks live: `file:///abs/path`, `memory://`,
    /// `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`.
    pub url: String,
    /// Extra backend options as `object_store` config keys
    /// (`aws_endpoint`, `aws_allow_http`, `aws_region`, ...). They override
    /// the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`). Default: none.
    pub options: Vec<(String, String)>,
    /// Attempts of one request inside `object_store` before the error
    /// reaches the transfer manager (which retries without end). Default: 2.
    pub request_retries: usize,
    /// Timeout of one HTTP request. Default: 60 s.
    pub request_timeout: Duration,
}

impl StoreConfig {
    /// Settings for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> StoreConfig {
        StoreConfig {
            url: url.into(),
            options: Vec::new(),
            request_retries: 2,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Immutable block objects in an object store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BlockStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    layout: KeyLayout,
}

impl BlockStore {
    /// The store with object names in `layout` (the one the filesystem's
    /// metadata records; [`KeyLayout::Sharded`] unless set).
    #[must_use]
    pub fn with_layout(mut self, layout: KeyLayout) -> BlockStore {
        self.layout = layout;
        self
    }

    /// Builds the store named by `config.url`. Nothing is contacted yet;
    /// call [`BlockStore::check`] before serving anything.
    ///
    /// A `file://` URL must be an absolute path; its directory is created.
    ///
    /// # Errors
    /// [`BlockStoreError::InvalidUrl`] for a malformed URL, an unknown
    /// scheme, or options the backend refuses.
    pub fn open(config: &StoreConfig) -> Result<BlockStore, BlockStoreError> {
        let invalid = |reason: String| BlockStoreError::InvalidUrl {
            url: config.url.clone(),
            reason,
        };
        let url = Url::parse(&config.url).map_err(|e| invalid(e.to_string()))?;
        let retry = object_store::RetryConfig {
            max_retries: config.request_retries,
            retry_timeout: config.request_timeout * 2,
            ..Default::default()
        };
        // Only the request timeout is set over the environment's client
        // options (`AWS_ALLOW_HTTP`, proxies...): `with_client_options`
        // replaced them all, so `AWS_ALLOW_HTTP=true` was ignored.
        let timeout = format!("{}ms", config.request_timeout.as_millis());
        let opts = || {
            config
                .options
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        };
        // The three cloud builders share one shape: environment, URL,
        // retry and timeout, then the caller's options.
        macro_rules! cloud {
            ($builder:ty) => {
                cloud!($builder, |b| b)
            };
            ($builder:ty, $finish:expr) => {{
                let mut b = <$builder>::from_env()
                    .with_url(config.url.clone())
                    .with_retry(retry.clone());
                let key = "timeout"
                    .parse()
                    .map_err(|e| invalid(format!("option timeout: {e}")))?;
                b = b.with_config(key, timeout.clone());
                for (k, v) in opts() {
                    let key = k.parse().map_err(|e| invalid(format!("option {k}: {e}")))?;
                    b = b.with_config(key, v);
                }
                let b = $finish(b);
                Arc::new(b.build().map_err(|e| invalid(e.to_string()))?) as Arc<dyn ObjectStore>
            }};
        }
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match url.scheme() {
            "file" => {
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(invalid(
                        "a file:// URL has no host: use file:///abs/path".into(),
                    ));
                }
                let dir = url
                    .to_file_path()
                    .map_err(|()| invalid("not an absolute path".into()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| invalid(format!("cannot create {}: {e}", dir.display())))?;
                // fsync of the file and the directories it created
                // before a put returns: a block must be as durable as
                // in a remote store before the log forgets its bytes.
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| invalid(e.to_string()))?
                    .with_fsync(true);
                (Arc::new(fs), Path::default())
            }
            "memory" => (
                Arc::new(object_store::memory::InMemory::new()),
                Path::from(url.path()),
            ),
            "s3" | "s3a" => (
                cloud!(object_store::aws::AmazonS3Builder, aws::standard_setup),
                Path::from(url.path()),
            ),
            "gs" => (
                cloud!(object_store::gcp::GoogleCloudStorageBuilder),
                Path::from(url.path()),
            ),
            "az" | "azure" | "abfs" | "abfss" => (
                cloud!(object_store::azure::MicrosoftAzureBuilder),
                Path::from(url.path()),
            ),
            other => {
                return Err(invalid(format!(
                    "unsupported scheme {other:?} (file, memory, s3, gs, az)"
                )));
            }
        };
        Ok(BlockStore {
            store,
            prefix,
            url: config.url.clone(),
            layout: KeyLayout::default(),
        })
    }

    /// A block store over an existing `object_store` (a decorator such as
    /// [`FaultyStore`], or a store built by the caller), with keys under
    /// `prefix`.
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> BlockStore {
        BlockStore {
            store,
            prefix: Path::from(prefix),
            url: url.to_string(),
            layout: KeyLayout::default(),
        }
    }

    /// The URL the store was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The directory of a `file://` store (`None` for other stores).
    pub fn local_dir(&self) -> Option<std::path::PathBuf> {
        Url::parse(&self.url)
            .ok()
            .filter(|u| u.scheme() == "file")
            .and_then(|u| u.to_file_path().ok())
    }

    /// The underlying `object_store`.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Start-up probe: lists the prefix, then writes, reads back and
    /// deletes a small object under it, so that a missing bucket, rejected
    /// credentials or an unreachable endpoint fail before anything is
    /// mounted.
    ///
    /// # Errors
    /// [`BlockStoreError::Unusable`] naming the step that failed.
    pub async fn check(&self) -> Result<(), BlockStoreError> {
        let path = join(
            &self.prefix,
            &format!(".slicefs-probe-{:016x}", rand::random::<u64>()),
        );
        let unusable = |op, source| BlockStoreError::Unusable {
            url: self.url.clone(),
            op,
            source: Box::new(source),
        };
        // A listing first: it fails on a missing bucket where a put may
        // create one (SeaweedFS does, for an admin identity).
        self.store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map_err(|e| unusable("list", e))?;
        let body = Bytes::from_static(b"slicefs probe");
        if let Err(e) = self
            .store
            .put(&path, PutPayload::from_bytes(body.clone()))
            .await
        {
            if crate::error::is_no_space(&e) {
                // Reachable and ours, only full: the mount must come up
                // (reads, and deletes that free space, work on a full
                // disk); uploads wait and retry until there is room.
                tracing::warn!(url = %self.url, error = %e,
                    "the block store has no space left: starting anyway; uploads wait until space is freed");
                return Ok(());
            }
            return Err(unusable("put", e));
        }
        let got = self
            .store
            .get(&path)
            .await
            .map_err(|e| unusable("get", e))?
            .bytes()
            .await
            .map_err(|e| unusable("get", e))?;
        if got != body {
            return Err(unusable(
                "get",
                object_store::Error::Generic {
                    store: "slicefs",
                    source: "the probe object read back different bytes".into(),
                },
            ));
        }
        self.store
            .delete(&path)
            .await
            .map_err(|e| unusable("delete", e))?;
        Ok(())
    }

    /// The volume marker (`<prefix>/slicefs-volume`): the UUID of the
    /// volume whose blocks this store holds, if one was written.
    ///
    /// # Errors
    /// [`BlockStoreError::Unusable`] if the store cannot be read.
    pub async fn volume_marker(&self) -> Result<Option<String>, BlockStoreError> {
        let path = join(&self.prefix, VOLUME_MARKER);
        let unusable = |source| BlockStoreError::Unusable {
            url: self.url.clone(),
            op: "read the volume marker",
            source: Box::new(source),
        };
        match self.store.get(&path).await {
            Ok(r) => {
                let b = r.bytes().await.map_err(unusable)?;
                Ok(Some(String::from_utf8_lossy(&b).trim().to_string()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(unusable(e)),
        }
    }

    /// Writes the volume marker (see [`BlockStore::volume_marker`]).
    ///
    /// # Errors
    /// [`BlockStoreError::Unusable`] if the store refuses the write.
    pub async fn set_volume_marker(&self, uuid: &str) -> Result<(), BlockStoreError> {
        let path = join(&self.prefix, VOLUME_MARKER);
        self.store
            .put(&path, PutPayload::from(format!("{uuid}\n").into_bytes()))
            .await
            .map_err(|source| BlockStoreError::Unusable {
                url: self.url.clone(),
                op: "write the volume marker",
                source: Box::new(source),
            })?;
        Ok(())
    }

    /// Stores `data` as block `key`. On return the object is complete and
    /// durable in the store (object stores put atomically; a `file://`
    /// store has fsynced the file and its directories).
    ///
    /// # Errors
    /// [`BlockStoreError::Request`].
    pub async fn put(&self, key: &BlockKey, data: Bytes) -> Result<(), BlockStoreError> {
        let path = key.path(&self.prefix, self.layout);
        self.store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map_err(|source| self.request_error("put", key, source))?;
        Ok(())
    }

    /// Reads block `key` whole.
    ///
    /// # Errors
    /// [`BlockStoreError::NotFound`] when the object does not exist,
    /// [`BlockStoreError::Request`] for other failures.
    pub async fn get(&self, key: &BlockKey) -> Result<Bytes, BlockStoreError> {
        let path = key.path(&self.prefix, self.layout);
        let res = match self.store.get(&path).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        res.map_err(|source| match source {
            object_store::Error::NotFound { .. } => BlockStoreError::NotFound {
                url: self.url.clone(),
                key: *key,
            },
            source => self.request_error("get", key, source),
        })
    }

    /// Bytes `offset..offset + len` of object `key` (one block of a pack
    /// or of a clone's object), one ranged `GET`.
    ///
    /// # Errors
    /// As [`BlockStore::get`]; a range past the object's end is a
    /// [`BlockStoreError::Request`].
    pub async fn get_range(
        &self,
        key: &BlockKey,
        offset: u32,
        len: u32,
    ) -> Result<Bytes, BlockStoreError> {
        let path = key.path(&self.prefix, self.layout);
        let start = u64::from(offset);
        self.store
            .get_range(&path, start..start + u64::from(len))
            .await
            .map_err(|source| match source {
                object_store::Error::NotFound { .. } => BlockStoreError::NotFound {
                    url: self.url.clone(),
                    key: *key,
                },
                source => self.request_error("get", key, source),
            })
    }

    /// Deletes block `key`. Deleting a missing object succeeds.
    ///
    /// # Errors
    /// [`BlockStoreError::Request`].
    pub async fn delete(&self, key: &BlockKey) -> Result<(), BlockStoreError> {
        match self
            .store
            .delete(&key.path(&self.prefix, self.layout))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.request_error("delete", key, source)),
        }
    }

    /// Every block object in the store (of `file` only, if given), with
    /// its last-modified time. Objects under `blocks/` whose names do not
    /// parse are skipped with a warning (they are not ours to delete).
    ///
    /// # Errors
    /// [`BlockStoreError::List`].
    pub async fn list(
        &self,
        file: Option<FileId>,
    ) -> Result<Vec<(BlockKey, SystemTime)>, BlockStoreError> {
        let base = join(&self.prefix, "blocks");
        let dir = match file {
            Some(f) => join(&base, &self.layout.file_dir(f)),
            None => base.clone(),
        };
        let mut stream = self.store.list(Some(&dir));
        let mut out = Vec::new();
        let strip = format!("{}/", base.as_ref());
        while let Some(item) = stream.next().await {
            let meta = item.map_err(|source| BlockStoreError::List {
                url: self.url.clone(),
                source: Box::new(source),
            })?;
            let loc = meta.location.as_ref();
            match loc.strip_prefix(&strip).and_then(BlockKey::parse) {
                // A shard holds other files' objects too.
                Some(k) if file.is_some_and(|f| f != k.file) => {}
                Some(k) => out.push((k, SystemTime::from(meta.last_modified))),
                None => tracing::warn!(object = loc, "not a block object name; left alone"),
            }
        }
        Ok(out)
    }

    fn request_error(
        &self,
        op: &'static str,
        key: &BlockKey,
        source: object_store::Error,
    ) -> BlockStoreError {
        BlockStoreError::Request {
            url: self.url.clone(),
            op,
            key: *key,
            source: Box::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BlockKey {
        BlockKey {
            file: FileId(0x2a),
            chunk: ChunkIndex(3),
            block: 15,
            version: 0xdead_beef,
        }
    }

    #[test]
    fn key_layout_round_trips() {
        let k = key();
        let p = k.path(&Path::from("pfx/sub"), KeyLayout::PerFile);
        assert_eq!(
            p.as_ref(),
            "pfx/sub/blocks/000000000000002a/00000003/0f-00000000deadbeef"
        );
        let rel = p.as_ref().strip_prefix("pfx/sub/blocks/").unwrap();
        assert_eq!(BlockKey::parse(rel), Some(k));
        let big = BlockKey {
            file: FileId(5000),
            ..k
        };
        let p = big.path(&Path::from("pfx"), KeyLayout::Sharded);
        assert_eq!(
            p.as_ref(),
            "pfx/blocks/0000000000004/0000000000001388-00000003-0f-00000000deadbeef"
        );
        let rel = p.as_ref().strip_prefix("pfx/blocks/").unwrap();
        assert_eq!(BlockKey::parse(rel), Some(big));
        assert_eq!(BlockKey::parse("2a/3/0f"), None);
        assert_eq!(BlockKey::parse("2a/3/0f-1/x"), None);
        assert_eq!(BlockKey::parse("zz/3/0f-1"), None);
        // A shard that does not hold the file, or a short name.
        assert_eq!(BlockKey::parse("5/1388-3-0f-1"), None);
        assert_eq!(BlockKey::parse("4/1388-3-0f"), None);
        for n in [1, 2] {
            assert_eq!(KeyLayout::from_number(n).unwrap().number(), n);
        }
        assert_eq!(KeyLayout::from_number(3), None);
    }

    #[test]
    fn bad_urls_are_clear_errors() {
        for url in ["not a url", "ftp://host/x", "file://host/x", "memory"] {
            let err = BlockStore::open(&StoreConfig::new(url)).unwrap_err();
            assert!(
                matches!(err, BlockStoreError::InvalidUrl { .. }),
                "{url}: {err}"
            );
        }
        let mut c = StoreConfig::new("s3://bucket/p");
        c.options.push(("no_such_option".into(), "1".into()));
        assert!(matches!(
            BlockStore::open(&c),
            Err(BlockStoreError::InvalidUrl { .. })
        ));
    }

    #[tokio::test]
    async fn file_store_round_trip_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::from_directory_path(dir.path().join("blocks")).unwrap();
        let s = BlockStore::open(&StoreConfig::new(url.as_str())).unwrap();
        s.check().await.unwrap();
        let k = key();
        s.put(&k, Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(s.get(&k).await.unwrap(), Bytes::from_static(b"hello"));
        let listed = s.list(None).await.unwrap();
        assert_eq!(listed.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![k]);
        // File 1 shares the shard of file 0x2a and has no objects.
        assert!(s.list(Some(FileId(1))).await.unwrap().is_empty());
        assert_eq!(s.list(Some(k.file)).await.unwrap().len(), 1);
        assert!(dir.path().join("blocks/blocks/0000000000000").is_dir());
        // A store written in the older layout keeps its names.
        let old = BlockStore::open(&StoreConfig::new(url.as_str()))
            .unwrap()
            .with_layout(KeyLayout::PerFile);
        let k2 = BlockKey { version: 7, ..k };
        old.put(&k2, Bytes::from_static(b"old")).await.unwrap();
        assert!(
            dir.path()
                .join("blocks/blocks/000000000000002a/00000003/0f-0000000000000007")
                .is_file()
        );
        assert_eq!(old.list(Some(k.file)).await.unwrap().len(), 1);
        assert_eq!(s.list(None).await.unwrap().len(), 2, "both layouts listed");
        old.delete(&k2).await.unwrap();
        s.delete(&k).await.unwrap();
        s.delete(&k).await.unwrap();
        assert!(matches!(
            s.get(&k).await,
            Err(BlockStoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn unreachable_s3_endpoint_fails_the_probe() {
        // Port 9 on loopback: nothing listens; the probe must fail fast
        // and say which step failed.
        let mut c = StoreConfig::new("s3://no-bucket/p");
        c.options = vec![
            ("aws_endpoint".into(), "http://127.0.0.1:9".into()),
            ("aws_allow_http".into(), "true".into()),
            ("aws_access_key_id".into(), "k".into()),
            ("aws_secret_access_key".into(), "s".into()),
            ("aws_region".into(), "us-east-1".into()),
        ];
        c.request_retries = 0;
        c.request_timeout = Duration::from_secs(5);
        let s = BlockStore::open(&c).unwrap();
        let err = s.check().await.unwrap_err();
        assert!(
            matches!(err, BlockStoreError::Unusable { op: "list", .. }),
            "{err}"
        );
    }
}
