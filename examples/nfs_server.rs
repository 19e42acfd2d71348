//! Embeds slicefs in a program and serves it over NFSv3: a file system
//! with its data directory (log, SQLite metadata, blocks in a `file://`
//! store) in the first argument, on 127.0.0.1:2049 or the address in the
//! second, until Ctrl-C; then everything is uploaded and the log closed.
//!
//! ```sh
//! cargo run --example nfs_server -- /tmp/fs 127.0.0.1:2049
//! nfs-ls 'nfs://127.0.0.1/?nfsport=2049&mountport=2049&version=3'
//! ```

use std::time::Duration;

use slicefs::nfs::{Server, ServerConfig};
use slicefs::vfs::{FsOptions, open_fs};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: nfs_server DATA_DIR [ADDR]")?;
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:2049".into())
        .parse()?;
    let fs = open_fs(&FsOptions::new(dir), &tokio::runtime::Handle::current()).await?;
    let server = Server::bind(fs.vfs.clone(), addr, ServerConfig::default()).await?;
    println!("serving on {}", server.local_addr());
    server
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Everything durable, then uploaded (or left safe in the log).
    let vfs = fs.vfs.clone();
    tokio::task::spawn_blocking(move || vfs.syncfs()).await??;
    fs.vfs.transfer().close(Duration::from_secs(600)).await?;
    fs.persister.close()?;
    Ok(())
}
