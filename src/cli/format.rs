//! `slicefs format`: makes a shared volume (PostgreSQL metadata, a block
//! store every host reaches).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use slicefs::blockstore::{BlockStore, StoreConfig};
use slicefs::meta::MetaStore;
use slicefs::vfs::{MetaKind, volume};

use super::mount::{meta_kind, parse_kv, store_url};

/// `slicefs format`.
#[derive(Debug, Args)]
pub struct FormatArgs {
    /// The metadata database: `postgres://user@host:port/db`. Its schema
    /// is made if missing.
    #[arg(long, env = "SLICEFS_META")]
    pub meta: String,
    /// The block store every host of the volume uses: `s3://bucket/prefix`
    /// (the bucket must exist), `gs://...`, `az://...`, `file:///dir` (a
    /// directory all hosts share).
    #[arg(long, env = "SLICEFS_STORE")]
    pub store: String,
    /// Block store option `KEY=VALUE`; repeatable. Options whose key names
    /// a secret are not recorded: each host gives them (or AWS_* variables).
    #[arg(long = "store-option", value_parser = parse_kv)]
    pub store_options: Vec<(String, String)>,
    /// The volume's name.
    pub name: String,
}

/// Runs `slicefs format`: records a new volume (a UUID, the store, the
/// block size) in the metadata database with its root directory (owned by
/// the caller), and the UUID in the store's marker. A database that holds
/// the same volume already (same store) is left as it is; another volume,
/// or a store that belongs to another volume, is refused.
///
/// # Errors
/// One line: a bad URL, no server, a missing bucket, another volume.
pub fn format(args: FormatArgs) -> anyhow::Result<ExitCode> {
    let MetaKind::Postgres(url) = meta_kind(Some(&args.meta))? else {
        bail!(
            "--meta {:?}: slicefs format makes shared volumes on PostgreSQL; a SQLite volume \
             is made by its first mount",
            args.meta
        );
    };
    if args.name.is_empty() || args.name.len() > 255 || args.name.contains(['/', '\0']) {
        bail!(
            "volume name {:?}: give 1 to 255 bytes without '/'",
            args.name
        );
    }
    let mut store_config = StoreConfig::new(store_url(&args.store)?);
    store_config.options = args.store_options.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let store = BlockStore::open(&store_config).context("block store")?;
    rt.block_on(store.check()).context("block store")?;
    let marker = rt.block_on(store.volume_marker()).context("block store")?;
    let new = volume::describe_new(&args.name, &store_config, slicefs_cache::BLOCK_SIZE);
    let json = serde_json::to_string(&new).context("describe the volume")?;
    let (stored, made) = MetaStore::format_postgres(&url, &json)?;
    let vol: volume::Volume =
        serde_json::from_str(&stored).context("the volume record in the database is damaged")?;
    if !made
        && vol.store.as_deref().map(|s| s.trim_end_matches('/'))
            != Some(store_config.url.trim_end_matches('/'))
    {
        bail!(
            "the metadata database holds volume {} ({}) on store {} already; use another database",
            vol.name.as_deref().unwrap_or("?"),
            vol.uuid,
            vol.store.as_deref().unwrap_or("?")
        );
    }
    match marker {
        Some(m) if m != vol.uuid => bail!(
            "block store {} holds volume {m} already; use another bucket or prefix",
            store.url()
        ),
        Some(_) => {}
        None => rt
            .block_on(store.set_volume_marker(&vol.uuid))
            .context("block store")?,
    }
    // The root directory, owned by whoever formats.
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    MetaStore::open_postgres(&url, 0, uid, gid)?;
    let what = if made {
        "formatted"
    } else {
        "already formatted:"
    };
    println!(
        "slicefs: {what} volume {} ({}) with metadata {} and store {}",
        vol.name.as_deref().unwrap_or("?"),
        vol.uuid,
        redact(&url),
        vol.store.as_deref().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(the --meta URL)".into(),
    }
}
