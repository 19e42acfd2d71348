//! Helpers shared by the root crate's integration tests: a throwaway
//! SeaweedFS server with an S3 endpoint ([`seaweed`]), and slicefs over
//! the power-loss simulator ([`powerloss`]).

#![allow(dead_code)] // each test crate uses a different subset

pub mod mount;
pub mod postgres;
pub mod powerloss;
pub mod seaweed;

/// Bytes that differ from offset to offset (xorshift), so a misplaced or
/// stale range shows.
pub fn payload(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
