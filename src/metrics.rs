//! Prometheus metrics: counters the front ends and the VFS bump as they
//! work, gauges read from the transfer manager and the cache at each
//! scrape, and [`serve`], a minimal HTTP endpoint (`GET /metrics`, text
//! format 0.0.4) for `slicefs mount|serve --metrics ADDR`.
//!
//! Names (all prefixed `slicefs_`):
//! - `requests_total{frontend,op}`, `request_errors_total{frontend,op}`,
//!   `request_seconds{frontend,op}` (histogram): per FUSE request and NFS
//!   procedure;
//! - `read_bytes_total`, `written_bytes_total`: bytes through the VFS;
//! - `dirty_bytes`, `cached_bytes`, `cache_memory_bytes`: the slice cache;
//! - `uploads_total`, `upload_bytes_total`, `packs_total`, `uploads_in_flight`,
//!   `downloads_total`, `download_bytes_total`, `block_cache_hits_total`,
//!   `store_retries_total`, `store_stalled_seconds`, `gc_pending`: the
//!   transfer manager;
//! - `log_next_lsn`: the write-ahead log's next LSN (its growth rate is
//!   the log's record rate).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::vfs::Vfs;

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    errors: IntCounterVec,
    seconds: HistogramVec,
    /// Bytes read through the VFS.
    pub read_bytes: IntCounter,
    /// Bytes written through the VFS.
    pub written_bytes: IntCounter,
    gauges: Vec<(&'static str, IntGauge)>,
}

/// Gauges set from the VFS at each scrape: (name, help).
const GAUGES: &[(&str, &str)] = &[
    (
        "slicefs_dirty_bytes",
        "Bytes written and not yet in the object store.",
    ),
    (
        "slicefs_cached_bytes",
        "Clean bytes kept in the slice cache.",
    ),
    (
        "slicefs_cache_memory_bytes",
        "Memory held by the slice cache.",
    ),
    ("slicefs_uploads_total", "Blocks uploaded."),
    ("slicefs_upload_bytes_total", "Bytes uploaded."),
    (
        "slicefs_packs_total",
        "Pack objects uploaded (each holds several small blocks counted in uploads_total).",
    ),
    ("slicefs_uploads_in_flight", "Uploads in progress."),
    ("slicefs_downloads_total", "Blocks downloaded."),
    ("slicefs_download_bytes_total", "Bytes downloaded."),
    (
        "slicefs_block_cache_hits_total",
        "Reads served by the block cache.",
    ),
    (
        "slicefs_store_retries_total",
        "Object store requests retried.",
    ),
    (
        "slicefs_store_stalled_seconds",
        "How long object store requests have been failing.",
    ),
    (
        "slicefs_gc_pending",
        "Replaced blocks waiting for deletion.",
    ),
    ("slicefs_log_next_lsn", "The write-ahead log's next LSN."),
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let labels = &["frontend", "op"];
    let requests = IntCounterVec::new(
        Opts::new(
            "slicefs_requests_total",
            "Requests by front end and operation.",
        ),
        labels,
    )?;
    let errors = IntCounterVec::new(
        Opts::new(
            "slicefs_request_errors_total",
            "Requests answered with an error.",
        ),
        labels,
    )?;
    let seconds = HistogramVec::new(
        HistogramOpts::new("slicefs_request_seconds", "Request latency.").buckets(vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5, 10.0,
        ]),
        labels,
    )?;
    let read_bytes = IntCounter::new("slicefs_read_bytes_total", "Bytes read through the VFS.")?;
    let written_bytes = IntCounter::new(
        "slicefs_written_bytes_total",
        "Bytes written through the VFS.",
    )?;
    registry.register(Box::new(requests.clone()))?;
    registry.register(Box::new(errors.clone()))?;
    registry.register(Box::new(seconds.clone()))?;
    registry.register(Box::new(read_bytes.clone()))?;
    registry.register(Box::new(written_bytes.clone()))?;
    let mut gauges = Vec::new();
    for (name, help) in GAUGES {
        let g = IntGauge::new(*name, *help)?;
        registry.register(Box::new(g.clone()))?;
        gauges.push((*name, g));
    }
    Ok(Metrics {
        registry,
        requests,
        errors,
        seconds,
        read_bytes,
        written_bytes,
        gauges,
    })
}

/// The process's metrics (made at first use). `None` only if the
/// registry refused a metric, which fixed names make impossible.
pub fn global() -> Option<&'static Metrics> {
    static M: OnceLock<Option<Metrics>> = OnceLock::new();
    M.get_or_init(|| build().ok()).as_ref()
}

/// Requests and failed requests of every front end and operation, for
/// `status.json` (`slicefs stats`).
static TOTALS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Requests and failed requests so far, over every front end and
/// operation.
pub fn request_totals() -> (u64, u64) {
    (
        TOTALS[0].load(Ordering::Relaxed),
        TOTALS[1].load(Ordering::Relaxed),
    )
}

/// Bytes read and written through the VFS so far.
pub fn byte_totals() -> (u64, u64) {
    global().map_or((0, 0), |m| (m.read_bytes.get(), m.written_bytes.get()))
}

/// Records one request of `frontend` (`fuse`, `nfs`) and `op` that
/// started at `start` and succeeded or not.
pub fn observe(frontend: &str, op: &str, start: Instant, ok: bool) {
    TOTALS[0].fetch_add(1, Ordering::Relaxed);
    if !ok {
        TOTALS[1].fetch_add(1, Ordering::Relaxed);
    }
    if let Some(m) = global() {
        let l = [frontend, op];
        m.requests.with_label_values(&l).inc();
        if !ok {
            m.errors.with_label_values(&l).inc();
        }
        m.seconds
            .with_label_values(&l)
            .observe(start.elapsed().as_secs_f64());
    }
}

fn set(m: &Metrics, name: &str, v: u64) {
    if let Some((_, g)) = m.gauges.iter().find(|(n, _)| *n == name) {
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
    }
}

/// The text exposition of every metric, gauges read from `vfs` now.
pub fn render(vfs: &Vfs) -> String {
    let Some(m) = global() else {
        return String::new();
    };
    let t = vfs.transfer().stats();
    let c = vfs.cache().stats();
    set(m, "slicefs_dirty_bytes", c.dirty_bytes);
    set(m, "slicefs_cached_bytes", c.clean_bytes);
    set(m, "slicefs_cache_memory_bytes", c.memory_bytes);
    set(m, "slicefs_uploads_total", t.uploads);
    set(m, "slicefs_upload_bytes_total", t.upload_bytes);
    set(m, "slicefs_packs_total", t.packs);
    set(m, "slicefs_uploads_in_flight", t.uploads_in_flight);
    set(m, "slicefs_downloads_total", t.downloads);
    set(m, "slicefs_download_bytes_total", t.download_bytes);
    set(m, "slicefs_block_cache_hits_total", t.block_cache_hits);
    set(m, "slicefs_store_retries_total", t.retries);
    set(
        m,
        "slicefs_store_stalled_seconds",
        t.stalled_for.map_or(0, |d| d.as_secs()),
    );
    set(m, "slicefs_gc_pending", t.gc_pending);
    set(m, "slicefs_log_next_lsn", vfs.log_next_lsn());
    let mut out = Vec::new();
    if TextEncoder::new()
        .encode(&m.registry.gather(), &mut out)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Serves `GET /metrics` on `listener` until the task is dropped: one
/// request per connection (HTTP/1.0 style, `Connection: close`); other
/// paths get 404. A client that sends nothing for 10 s is dropped.
///
/// # Errors
/// Accept errors of the listener.
pub async fn serve(listener: tokio::net::TcpListener, vfs: Arc<Vfs>) -> std::io::Result<()> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let vfs = vfs.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { return };
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if head.starts_with("GET ") && path == "/metrics" {
                let v = vfs.clone();
                let body = tokio::task::spawn_blocking(move || render(&v))
                    .await
                    .unwrap_or_default();
                ("200 OK", body)
            } else {
                ("404 Not Found", "only /metrics is served\n".to_string())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
