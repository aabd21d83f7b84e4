//! openraft glue: the type config, the WAL-backed log store, the MVCC state
//! machine and the peer network.

pub mod check_quorum;
pub mod forwarder;
mod gate;
#[cfg(test)]
mod leader_append_tests;
pub mod log_store;
pub mod network;
pub mod proposer;
pub mod read_index;
pub mod relay;
pub mod service;
pub mod state_machine;
pub mod types;
