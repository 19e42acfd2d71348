//! The volume a data directory belongs to: `<data dir>/volume.json` keeps
//! the volume's UUID and the block store it was made with, and the store
//! keeps the same UUID in its marker object
//! ([`VOLUME_MARKER`](crate::blockstore::VOLUME_MARKER)).
//!
//! Why: a data directory used with `--store s3://...` and mounted again
//! without `--store` came up on the default `file://` store, and every
//! read of an uploaded block hung about 50 s and failed; a new data
//! directory pointed at another volume's store would write blocks under
//! the names of that volume's blocks. So a start
//! - without `--store` uses the store the data directory remembers;
//! - with a `--store` other than the remembered one is refused;
//! - on a store whose marker names another volume is refused;
//! - records both (a new UUID) the first time, also for a data directory
//!   or store made before this record existed.
//!
//! `volume.json` (written atomically and made durable):
//! `{"uuid": "<uuid>", "store": "<url>" | null, "store_options": {..},
//! "block_size": <bytes>}`; `store: null` is the default `file://` store
//! inside the data directory (so the directory can move). Options whose
//! key names a secret (`secret`, `token`, `password`, `key`) are not
//! written; give them again, or through the environment.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::blockstore::{BlockStore, StoreConfig};
use crate::error::FsError;

/// The file in the data directory.
pub const VOLUME_FILE: &str = "volume.json";

/// What `volume.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The volume's UUID (also in the store's marker).
    pub uuid: String,
    /// The block store URL; `None`: the default store in the data
    /// directory.
    pub store: Option<String>,
    /// Store options that are not secrets.
    #[serde(default)]
    pub store_options: BTreeMap<String, String>,
    /// Block size in bytes.
    pub block_size: u64,
    /// The name given to `slicefs format` (shared volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Reads `volume.json` of `data_dir`, if there is one.
///
/// # Errors
/// One line naming the file, if it cannot be read or parsed.
pub fn load(data_dir: &Path) -> Result<Option<Volume>, FsError> {
    let path = data_dir.join(VOLUME_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            FsError::io(
                "read the volume record",
                format!(
                    "{} is damaged ({e}); it names the volume's block store",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FsError::io("read the volume record", e)),
    }
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

fn secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["secret", "token", "password", "key"]
        .iter()
        .any(|w| k.contains(w))
}

/// The store to open: `given` (`--store`), or the one `vol` remembers;
/// `None` is the default store in the data directory.
///
/// # Errors
/// [`FsError::Io`] with one line when `given` is not the remembered store.
pub fn choose_store(
    data_dir: &Path,
    given: Option<&StoreConfig>,
    vol: Option<&Volume>,
) -> Result<Option<StoreConfig>, FsError> {
    let Some(vol) = vol else {
        return Ok(given.cloned());
    };
    let remembered = match &vol.store {
        Some(u) => u.as_str(),
        None => "the default file:// store inside the data directory",
    };
    match (given, &vol.store) {
        (None, None) => Ok(None),
        (None, Some(url)) => {
            let mut s = StoreConfig::new(url.clone());
            s.options = vol.store_options.clone().into_iter().collect();
            Ok(Some(s))
        }
        (Some(g), Some(url)) if same_url(&g.url, url) => {
            let mut s = g.clone();
            for (k, v) in &vol.store_options {
                if !s.options.iter().any(|(gk, _)| gk == k) {
                    s.options.push((k.clone(), v.clone()));
                }
            }
            Ok(Some(s))
        }
        (Some(g), _) => Err(FsError::io(
            "choose the block store",
            format!(
                "data directory {} belongs to volume {} on {remembered}, not {}; \
                 drop --store (it is remembered in {}) or use another data directory",
                data_dir.display(),
                vol.uuid,
                g.url,
                VOLUME_FILE
            ),
        )),
    }
}

/// Checks the store's marker against the volume, and records what is
/// missing: `volume.json` (a new UUID, `store` as given: `None` for the
/// default store) and the marker.
///
/// # Errors
/// [`FsError::Io`] with one line when the store belongs to another volume,
/// or a record cannot be written.
pub async fn bind(
    data_dir: &Path,
    vol: Option<Volume>,
    store_config: Option<&StoreConfig>,
    store: &BlockStore,
    block_size: u64,
) -> Result<Volume, FsError> {
    let marker = store
        .volume_marker()
        .await
        .map_err(|e| FsError::io("block store", e))?;
    let vol = match vol {
        Some(v) => v,
        None => {
            if let Some(other) = &marker {
                return Err(FsError::io(
                    "bind the data directory to its block store",
                    format!(
                        "block store {} already holds volume {other}, and data directory {} \
                         is new: use that volume's data directory, or another bucket or prefix",
                        store.url(),
                        data_dir.display()
                    ),
                ));
            }
            let v = Volume {
                uuid: new_uuid(),
                store: store_config.map(|s| s.url.clone()),
                store_options: store_config
                    .map(|s| {
                        s.options
                            .iter()
                            .filter(|(k, _)| !secret(k))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
                block_size,
                name: None,
            };
            write(data_dir, &v)?;
            v
        }
    };
    match marker {
        Some(m) if m == vol.uuid => {}
        Some(m) => {
            return Err(FsError::io(
                "bind the data directory to its block store",
                format!(
                    "block store {} holds volume {m}, but data directory {} is volume {}: \
                     they do not belong together",
                    store.url(),
                    data_dir.display(),
                    vol.uuid
                ),
            ));
        }
        None => store
            .set_volume_marker(&vol.uuid)
            .await
            .map_err(|e| FsError::io("block store", e))?,
    }
    if vol.block_size != block_size {
        return Err(FsError::io(
            "bind the data directory to its block store",
            format!(
                "volume {} was made with {}-byte blocks; this build uses {block_size}",
                vol.uuid, vol.block_size
            ),
        ));
    }
    Ok(vol)
}

/// Binds a single-host metadata database (`db`, for messages) to the
/// data directory's volume: the first start records the volume's UUID in
/// it, and a database of another volume is refused. Why: with
/// `--meta sqlite:///path` the database lives apart from the data
/// directory, and after a clean stop (no log needed) nothing else tells
/// that a new data directory, with an empty store, is not the one whose
/// blocks the database names: every read would fail.
///
/// # Errors
/// One line: the database belongs to another volume, or `volume.json`
/// holds a UUID that is not one.
pub fn bind_meta(meta: &crate::meta::MetaStore, vol: &Volume, db: &Path) -> Result<(), FsError> {
    let hex: String = vol.uuid.chars().filter(|c| *c != '-').collect();
    let id = u128::from_str_radix(&hex, 16)
        .ok()
        .filter(|_| hex.len() == 32)
        .ok_or_else(|| {
            FsError::io(
                "bind the metadata database to its volume",
                format!(
                    "volume.json names volume {:?}, which is not a UUID",
                    vol.uuid
                ),
            )
        })?;
    match meta.volume_id()? {
        None => meta.set_volume_id(id),
        Some(have) if have == id => Ok(()),
        Some(have) => Err(FsError::io(
            "bind the metadata database to its volume",
            format!(
                "metadata database {} belongs to volume {}, but the data directory is volume {}: \
                 they do not belong together (use the data directory this database was made with)",
                db.display(),
                uuid_text(have),
                vol.uuid
            ),
        )),
    }
}

/// A UUID number in the usual 8-4-4-4-12 hex form.
fn uuid_text(id: u128) -> String {
    let h = format!("{id:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The file in the data directory that holds this host's id in a shared
/// volume.
pub const HOST_ID_FILE: &str = "host-id";

/// This data directory's host id for a shared volume: a random number
/// (1 to 2^63-1) made the first time and kept in `<data dir>/host-id`
/// (written atomically and durably). The metadata keeps this host's log
/// counters and unlinked open files under it, so it must stay with the
/// log: a data directory copied to a second host needs a new `host-id`
/// (delete the file in the copy).
///
/// # Errors
/// One line naming the file, if it cannot be read, parsed or written.
pub fn host_id(data_dir: &Path) -> Result<u64, FsError> {
    let path = data_dir.join(HOST_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&h| h != 0 && h < 1 << 63)
            .ok_or_else(|| {
                FsError::io(
                    "read the host id",
                    format!(
                        "{} does not hold a host id ({:?})",
                        path.display(),
                        s.trim()
                    ),
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = (rand::random::<u64>() >> 1).max(1);
            write_durably(data_dir, HOST_ID_FILE, format!("{id}\n").as_bytes())
                .map_err(|e| FsError::io("write the host id", e))?;
            Ok(id)
        }
        Err(e) => Err(FsError::io("read the host id", e)),
    }
}

/// The volume a shared metadata database describes, with the data
/// directory bound to it: a data directory of another volume is refused;
/// a new one records the volume in `volume.json`.
///
/// # Errors
/// One line: no volume in the database (not formatted), a damaged
/// record, or a data directory of another volume.
pub fn shared(data_dir: &Path, meta: &crate::meta::MetaStore) -> Result<Volume, FsError> {
    let Some(json) = meta.shared_volume()? else {
        return Err(FsError::io(
            "read the shared volume",
            "the metadata database holds no volume: run `slicefs format --meta URL --store URL NAME` first",
        ));
    };
    let v: Volume = serde_json::from_str(&json).map_err(|e| {
        FsError::io(
            "read the shared volume",
            format!("the volume record in the metadata database is damaged: {e}"),
        )
    })?;
    match load(data_dir)? {
        Some(local) if local.uuid != v.uuid => Err(FsError::io(
            "bind the data directory to its volume",
            format!(
                "data directory {} belongs to volume {}, but the metadata database holds volume {}; \
                 use another data directory for this volume",
                data_dir.display(),
                local.uuid,
                v.uuid
            ),
        )),
        Some(_) => Ok(v),
        None => {
            write(data_dir, &v)?;
            Ok(v)
        }
    }
}

/// A new volume's description for `slicefs format`: a new UUID, the
/// store and its non-secret options.
pub fn describe_new(name: &str, store: &StoreConfig, block_size: u64) -> Volume {
    Volume {
        uuid: new_uuid(),
        store: Some(store.url.clone()),
        store_options: store
            .options
            .iter()
            .filter(|(k, _)| !secret(k))
            .cloned()
            .collect(),
        block_size,
        name: Some(name.to_string()),
    }
}

/// A random (version 4) UUID.
fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid_text(u128::from_be_bytes(b))
}

/// Writes `volume.json` atomically and durably (temporary file, fsync,
/// rename, fsync of the directory).
fn write(data_dir: &Path, v: &Volume) -> Result<(), FsError> {
    let err = |e: std::io::Error| FsError::io("write the volume record", e);
    let body = serde_json::to_vec_pretty(v).map_err(|e| err(std::io::Error::other(e)))?;
    write_durably(data_dir, VOLUME_FILE, &body).map_err(err)
}

/// Writes `<dir>/<name>` atomically and durably (temporary file, fsync,
/// rename, fsync of the directory).
fn write_durably(dir: &Path, name: &str, body: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    super::open::sync_dir(dir)
}
