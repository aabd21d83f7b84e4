pub mod cluster;
pub mod config;
pub mod error;
pub mod mvcc;
pub mod proto;
pub mod raft;
