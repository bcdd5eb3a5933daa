//! The Lattice local API (`lattice.daemon.v1`): gRPC messages and services, generated from
//! `proto/lattice.proto` by `cargo xtask proto` (which needs `protoc`) and committed, so
//! building Lattice needs no protobuf compiler.
#![allow(missing_docs, unreachable_pub, clippy::all, reason = "generated code")]

/// `lattice.daemon.v1`.
pub mod v1 {
    include!("lattice.daemon.v1.rs");
}
