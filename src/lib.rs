//! oxcd: a drop-in replacement for etcd v3.
//!
//! ```text
//! client (etcdctl, clientv3, kube-apiserver)
//!    │ gRPC: etcdserverpb.KV / Lease / Maintenance / Cluster
//!    ▼
//! api/        one module per etcd service: validate, route, fill headers
//!    │ writes → Raft proposal          reads → ReadIndex barrier, local store
//!    ▼
//! raft/       openraft: type config, log store (the WAL), state machine
//!    ▼ committed entries, in log order
//! mvcc/       etcd's revisioned key space over sled, the lease table
//!    ▼ committed changes, after each sled batch
//! watch/      hub: synced / catching-up watchers, fed by apply
//! lease/      the lessor: deadlines on the leader, revokes through Raft
//! ```
//!
//! Every write goes through Raft, on one member as on five: a single-member
//! server is a one-member cluster, never a separate code path.

pub mod api;
pub mod backup;
pub mod channel;
pub mod cluster;
pub mod coalesce;
pub mod config;
pub mod error;
pub mod lease;
pub mod mvcc;
pub mod probe;
pub mod proto;
pub mod raft;
pub mod server;
pub mod tls;
pub mod wal;
pub mod watch;
