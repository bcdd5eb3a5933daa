//! Lattice integration tests, one binary with a module per topic.
#![allow(
    clippy::print_stderr,
    reason = "tests report seeds and progress on stderr"
)]

mod blobs;
mod crash;
mod fuzz_corpus;
mod guests;
mod replication;
