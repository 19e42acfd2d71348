//! Appends `N` records of `SIZE` bytes in mode `None` to a fresh log in
//! `DIR` and prints appends/s: a small target for `perf record`.
//!
//! Usage: `cargo run --release -p slicefs-wal --example append_profile -- DIR [SIZE] [N]`

use std::time::Instant;

use slicefs_wal::{
    CHUNK_SIZE, ChunkIndex, Durability, FileId, MmapPersister, Persister, SliceId, SliceWrite,
    WalConfig,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: append_profile DIR [SIZE] [N]");
    let size: usize = args.next().map_or(4096, |s| s.parse().expect("SIZE"));
    let n: u64 = args.next().map_or(262_144, |s| s.parse().expect("N"));
    let config = WalConfig {
        durability: Durability::None,
        auto_reclaim: false,
        ..WalConfig::default()
    };
    let p = MmapPersister::open(&dir, config).expect("open");
    let data = vec![7u8; size];
    let t = Instant::now();
    for i in 0..n {
        let pos = i * size as u64;
        p.append_slice(&SliceWrite {
            file: FileId(1),
            chunk: ChunkIndex((pos / CHUNK_SIZE) as u32),
            slice: SliceId(pos / CHUNK_SIZE),
            offset: (pos % CHUNK_SIZE) as u32,
            data: &data,
        })
        .expect("append");
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "{n} appends of {size} B: {:.0} appends/s, {:.0} MB/s",
        n as f64 / el,
        (n as usize * size) as f64 / el / 1e6
    );
    drop(p);
    std::fs::remove_dir_all(&dir).expect("remove");
}
