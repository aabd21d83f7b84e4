//! The etcd v3 wire types, generated at build time from `proto/`.
//!
//! Module names are etcd's protobuf packages so that paths read like etcd's
//! Go code: `etcdserverpb::RangeRequest`, `mvccpb::KeyValue`.

#![allow(clippy::all, missing_docs)]

mod event;

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    // Written by hand, encoded once for every watcher (see `event.rs`).
    pub use super::event::{event, Event};
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// oxcd's own member-to-member protocol (`proto/peer.proto`).
pub mod oxcdpeerpb {
    tonic::include_proto!("oxcdpeerpb");
}
