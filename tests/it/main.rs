//! oxcd's integration tests: one binary, a module per service, each test
//! against a real server process on loopback (see `support`).
//!
//! `OXCD_TEST_TARGET=etcd cargo test --test it` runs the same suite against
//! the reference etcd 3.5; every expectation here was checked that way first.

mod backup;
mod cluster;
mod compose;
mod deploy;
mod durability;
mod errors;
mod etcdctl;
mod health;
mod jepsen;
mod kv;
mod lease;
mod maintenance;
mod support;
mod tls;
mod watch;
