//! Helpers shared by the root crate's integration tests: a throwaway
//! SeaweedFS server with an S3 endpoint ([`seaweed`]).

#![allow(dead_code)] // each test crate uses a different subset

pub mod seaweed;
