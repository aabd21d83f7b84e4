pub mod raft;
pub mod wal;
