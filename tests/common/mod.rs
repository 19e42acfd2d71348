//! Helpers shared by the root crate's integration tests: a throwaway
//! SeaweedFS server with an S3 endpoint ([`seaweed`]), and slicefs over
//! the power-loss simulator ([`powerloss`]).

#![allow(dead_code)] // each test crate uses a different subset

pub mod mount;
pub mod postgres;
pub mod powerloss;
pub mod seaweed;
