//! Smoke test of the SeaweedFS fixture (`tests/common/seaweed.rs`): start,
//! create a bucket, put and get objects over signed S3, crash the server
//! (SIGKILL) and restart it on the same data, and clean up on drop.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::payload;
use common::seaweed::Seaweed;

fn get(sw: &Seaweed, path: &str) -> Vec<u8> {
    let (status, body) = sw.s3_request("GET", path, None).expect("GET");
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    body
}

fn put(sw: &Seaweed, path: &str, body: &[u8]) {
    let (status, got) = sw.s3_request("PUT", path, Some(body)).expect("PUT");
    assert_eq!(status, 200, "PUT {path}: {}", String::from_utf8_lossy(&got));
}

#[test]
fn put_get_survive_kill_and_restart() {
    let t0 = Instant::now();
    let mut sw = Seaweed::start().expect("start seaweedfs");
    eprintln!(
        "seaweed ready after {:?} at {}",
        sw.ready_after(),
        sw.s3_endpoint
    );
    assert!(sw.s3_endpoint.starts_with("http://127.0.0.1:"));

    sw.create_bucket("smoke").expect("create bucket");
    let small = b"hello, seaweed".to_vec();
    let big = payload(3 << 20, 7); // larger than one chunk of the filer
    put(&sw, "smoke/a/small.txt", &small);
    put(&sw, "smoke/a/big.bin", &big);
    assert_eq!(get(&sw, "smoke/a/small.txt"), small);
    assert_eq!(get(&sw, "smoke/a/big.bin"), big);
    let (status, listing) = sw
        .s3_request("GET", "smoke?list-type=2&prefix=a%2F", None)
        .expect("list");
    let listing = String::from_utf8_lossy(&listing);
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("<Key>a/small.txt</Key>"), "{listing}");
    assert!(listing.contains("<Key>a/big.bin</Key>"), "{listing}");
    let (status, _) = sw.s3_request("GET", "smoke/a/missing", None).expect("GET");
    assert_eq!(status, 404);

    sw.kill();
    assert!(!sw.is_running());
    let s3 = std::net::SocketAddr::from(([127, 0, 0, 1], sw.ports().s3));
    assert!(
        TcpStream::connect_timeout(&s3, Duration::from_millis(500)).is_err(),
        "S3 port still open after kill"
    );

    sw.restart().expect("restart seaweedfs");
    eprintln!("seaweed ready again after {:?}", sw.ready_after());
    assert_eq!(get(&sw, "smoke/a/small.txt"), small);
    assert_eq!(get(&sw, "smoke/a/big.bin"), big);
    put(&sw, "smoke/b/after-restart", b"again");
    assert_eq!(get(&sw, "smoke/b/after-restart"), b"again");
    sw.create_bucket("second")
        .expect("create bucket after restart");

    let data = sw.data_dir();
    assert!(data.exists());
    drop(sw);
    assert!(!data.exists(), "data dir left behind");
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
}

#[test]
fn two_servers_at_once_use_distinct_ports() {
    let a = Seaweed::start().expect("start first");
    let b = Seaweed::start().expect("start second");
    let mut ports: Vec<u16> = a.ports().all().into_iter().chain(b.ports().all()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 16);
    a.create_bucket("one").expect("bucket on first");
    b.create_bucket("one").expect("same name on second");
    put(&a, "one/k", b"from a");
    put(&b, "one/k", b"from b");
    assert_eq!(get(&a, "one/k"), b"from a");
    assert_eq!(get(&b, "one/k"), b"from b");
}
