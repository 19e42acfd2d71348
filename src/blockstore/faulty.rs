//! [`FaultyStore`]: an `object_store` decorator that injects failures and
//! latency, for tests of what happens when the object store misbehaves
//! (in the manner of `object_store`'s own `ThrottledStore`).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// What a [`FaultyStore`] injects. Shares are probabilities in `0.0..=1.0`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Share of puts that fail (before reaching the inner store).
    pub put_failure: f64,
    /// Share of gets that fail.
    pub get_failure: f64,
    /// Delay added before every request.
    pub latency: Duration,
}

/// An `object_store` wrapper that fails a share of requests, adds
/// latency, and can go fully offline (every request fails) and come back.
/// Failures are `object_store::Error::Generic` with store `"FaultyStore"`.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    config: Mutex<FaultConfig>,
    offline: AtomicBool,
    injected: AtomicU64,
    puts: AtomicU64,
}

impl FaultyStore {
    /// Wraps `inner`, injecting faults as `config` says.
    pub fn new(inner: Arc<dyn ObjectStore>, config: FaultConfig) -> FaultyStore {
        FaultyStore {
            inner,
            config: Mutex::new(config),
            offline: AtomicBool::new(false),
            injected: AtomicU64::new(0),
            puts: AtomicU64::new(0),
        }
    }

    /// Changes what is injected from now on.
    pub fn set_config(&self, config: FaultConfig) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Takes the store offline (every request fails) or back online.
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    /// Requests failed on purpose so far.
    pub fn injected_failures(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Puts that reached the inner store.
    pub fn successful_puts(&self) -> u64 {
        self.puts.load(Ordering::Relaxed)
    }

    async fn gate(&self, share: impl Fn(&FaultConfig) -> f64) -> Result<()> {
        let config = *self.config.lock().unwrap_or_else(|e| e.into_inner());
        if !config.latency.is_zero() {
            tokio::time::sleep(config.latency).await;
        }
        let fail = self.offline.load(Ordering::SeqCst) || rand::random::<f64>() < share(&config);
        if fail {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(object_store::Error::Generic {
                store: "FaultyStore",
                source: "injected failure".into(),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.gate(|c| c.put_failure).await?;
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.puts.fetch_add(1, Ordering::Relaxed);
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.gate(|c| c.put_failure).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.gate(|c| c.get_failure).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.gate(|c| c.get_failure).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        if self.offline.load(Ordering::SeqCst) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return locations
                .map(|_| {
                    Err(object_store::Error::Generic {
                        store: "FaultyStore",
                        source: "injected failure".into(),
                    })
                })
                .boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if self.offline.load(Ordering::SeqCst) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return futures::stream::once(
                async {
                    Err(object_store::Error::Generic {
                        store: "FaultyStore",
                        source: "injected failure".into(),
                    })
                }
                .boxed(),
            )
            .boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.gate(|_| 0.0).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.gate(|c| c.put_failure).await?;
        self.inner.copy_opts(from, to, options).await
    }
}
