//! The replicated half of leases: which leases exist, their granted TTL,
//! their last checkpointed remaining TTL, and which keys each one holds.
//!
//! Everything here is decided by applied log entries, so every member holds
//! the same table. Time never enters: when a lease expires is the leader's
//! business (`crate::lease`), which proposes a LeaseRevoke through Raft.
//!
//! ```text
//!  entry                          table                        keys (rev)
//!  LeaseGrant{id 7, ttl 10}       7: ttl 10, keys {}
//!  Put a lease=7                  7: keys {a}                  a@2
//!  Put b lease=7                  7: keys {a, b}               b@3
//!  Put a (lease 0)                7: keys {b}                  a@4 (detached)
//!  LeaseCheckpoint{7, 4}          7: remaining 4
//!  LeaseRevoke{7}                 (gone)                       b@5.0 tombstone
//! ```
//!
//! A revoke deletes every attached key in ONE write request: one revision,
//! sub-revisions in key order (etcd sorts too, so every member writes the
//! same history).
//!
//! Persistence: `l ++ id(u64 BE)` → bincode([`LeaseRecord`]) in the same
//! sled batch as the entry's other changes. The attachments are not stored:
//! every `KeyValue` carries its lease, so [`LeaseTable`] is rebuilt at open
//! from the live keys.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::backend::{lease_key, Backend, LEASE_PREFIX};
use super::key_index::RangeEnd;
use super::txn::{header, Applier};
use super::{ApplyError, StorageError};
use crate::proto::etcdserverpb::{
    LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse,
};

/// etcd `lease.MaxLeaseTTL`: a larger TTL is refused (OutOfRange).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// What is stored per lease (etcd's `leasepb.Lease`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: i64,
    /// Granted TTL in seconds (already raised to the minimum).
    pub ttl: i64,
    /// Last checkpointed remaining TTL in seconds; 0 = none (use `ttl`).
    pub remaining_ttl: i64,
}

impl LeaseRecord {
    fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("plain struct")
    }
    fn decode(b: &[u8]) -> Result<Self, StorageError> {
        bincode::deserialize(b).map_err(|e| StorageError::Corrupt(format!("lease record: {e}")))
    }
}

/// A lease as readers see it (TimeToLive, Leases, the lessor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub record: LeaseRecord,
    /// Attached keys, ascending.
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Lease {
    record: LeaseRecord,
    keys: BTreeSet<Vec<u8>>,
}

/// In-memory lease table: lease → record + keys, and key → lease.
#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    leases: HashMap<i64, Lease>,
    /// etcd's `itemMap`: the lease each leased key is attached to.
    items: HashMap<Vec<u8>, i64>,
}

impl LeaseTable {
    /// Loads the `l` keyspace and attaches `attached` (key → lease of its
    /// live value). A key naming an unknown lease is left unattached.
    pub fn load(
        backend: &Backend,
        attached: HashMap<Vec<u8>, i64>,
    ) -> Result<LeaseTable, StorageError> {
        let mut t = LeaseTable::default();
        for item in backend.scan(&[LEASE_PREFIX], &[LEASE_PREFIX + 1]) {
            let (_, v) = item?;
            let record = LeaseRecord::decode(&v)?;
            t.leases.insert(
                record.id,
                Lease {
                    record,
                    keys: BTreeSet::new(),
                },
            );
        }
        for (key, id) in attached {
            if t.leases.contains_key(&id) {
                t.attach(key, id);
            } else {
                tracing::warn!(lease = id, key = %String::from_utf8_lossy(&key), "key names an unknown lease; left unattached");
            }
        }
        Ok(t)
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn get(&self, id: i64) -> Option<LeaseInfo> {
        self.leases.get(&id).map(|l| LeaseInfo {
            record: l.record,
            keys: l.keys.iter().cloned().collect(),
        })
    }

    pub fn records(&self) -> Vec<LeaseRecord> {
        let mut v: Vec<_> = self.leases.values().map(|l| l.record).collect();
        v.sort_by_key(|r| r.id);
        v
    }

    /// The lease `key` is attached to (0 = none).
    pub fn lease_of(&self, key: &[u8]) -> i64 {
        self.items.get(key).copied().unwrap_or(0)
    }

    fn attach(&mut self, key: Vec<u8>, id: i64) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.insert(key.clone());
            self.items.insert(key, id);
        }
    }

    /// Detaches `key` from whatever lease holds it.
    pub fn detach(&mut self, key: &[u8]) {
        if let Some(id) = self.items.remove(key) {
            if let Some(l) = self.leases.get_mut(&id) {
                l.keys.remove(key);
            }
        }
    }

    /// A put of `key` with `lease`: moves the attachment (etcd's Detach of
    /// the old lease, Attach of the new one).
    pub fn on_put(&mut self, key: &[u8], lease: i64) {
        if self.lease_of(key) == lease {
            return;
        }
        self.detach(key);
        if lease != 0 {
            self.attach(key.to_vec(), lease);
        }
    }
}

/// The lease entries, applied inside the same batch as everything else.
impl Applier<'_> {
    /// Whether lease `id` exists, including grants applied by this applier.
    pub(crate) fn lease_exists(&self, id: i64) -> bool {
        self.inner.leases().contains(id)
    }

    /// etcd `lessor.Grant` as applied. The TTL has been raised to the
    /// minimum by the proposer, so every member stores the same one.
    pub fn lease_grant(&mut self, r: &LeaseGrantRequest) -> Result<LeaseGrantResponse, ApplyError> {
        if r.id == 0 {
            return Err(ApplyError::LeaseNotFound);
        }
        if r.ttl > MAX_LEASE_TTL {
            return Err(ApplyError::LeaseTtlTooLarge);
        }
        let mut t = self.inner.leases_mut();
        if t.contains(r.id) {
            return Err(ApplyError::LeaseExists);
        }
        let record = LeaseRecord {
            id: r.id,
            ttl: r.ttl,
            remaining_ttl: 0,
        };
        t.leases.insert(
            r.id,
            Lease {
                record,
                keys: BTreeSet::new(),
            },
        );
        drop(t);
        self.batch.insert(&lease_key(r.id), &record.encode());
        Ok(LeaseGrantResponse {
            header: header(self.rev),
            id: r.id,
            ttl: r.ttl,
            error: String::new(),
        })
    }

    /// etcd `lessor.Revoke` as applied: every attached key is deleted in
    /// one write request (one revision), in key order, then the lease.
    pub fn lease_revoke(
        &mut self,
        r: &LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, ApplyError> {
        let keys = match self.inner.leases().leases.get(&r.id) {
            None => return Err(ApplyError::LeaseNotFound),
            Some(l) => l.keys.iter().cloned().collect::<Vec<_>>(),
        };
        for key in &keys {
            self.delete_kvs(key, RangeEnd::Single);
        }
        self.inner.leases_mut().leases.remove(&r.id);
        self.batch.remove(&lease_key(r.id));
        self.end_request();
        Ok(LeaseRevokeResponse {
            header: header(self.rev),
        })
    }

    /// etcd `lessor.Checkpoint` as applied (with persistence, as etcd 3.6
    /// always does): records each lease's remaining TTL. Unknown leases are
    /// skipped — one may have been revoked after the leader chose it.
    pub fn lease_checkpoint(
        &mut self,
        r: &LeaseCheckpointRequest,
    ) -> Result<LeaseCheckpointResponse, ApplyError> {
        let mut t = self.inner.leases_mut();
        let mut writes = Vec::new();
        for c in &r.checkpoints {
            if let Some(l) = t.leases.get_mut(&c.id) {
                l.record.remaining_ttl = c.remaining_ttl;
                writes.push(l.record);
            }
        }
        drop(t);
        for rec in writes {
            self.batch.insert(&lease_key(rec.id), &rec.encode());
        }
        Ok(LeaseCheckpointResponse {
            header: header(self.rev),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::txn::tests::{del, open, put};
    use crate::mvcc::Store;
    use crate::proto::etcdserverpb::{LeaseCheckpoint, PutRequest, RangeRequest};

    fn grant(s: &Store, id: i64, ttl: i64) -> Result<LeaseGrantResponse, ApplyError> {
        let mut a = s.begin_apply();
        let r = a.lease_grant(&LeaseGrantRequest { ttl, id });
        a.commit().unwrap();
        r
    }

    fn put_l(s: &Store, k: &str, lease: i64) -> Result<i64, ApplyError> {
        let mut a = s.begin_apply();
        let r = a.put(&PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        });
        a.commit().unwrap();
        Ok(r?.header.unwrap().revision)
    }

    fn revoke(s: &Store, id: i64) -> Result<LeaseRevokeResponse, ApplyError> {
        let mut a = s.begin_apply();
        let r = a.lease_revoke(&LeaseRevokeRequest { id });
        a.commit().unwrap();
        r
    }

    fn keys_of(s: &Store, id: i64) -> Vec<String> {
        s.lease(id)
            .unwrap()
            .keys
            .into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .collect()
    }

    #[test]
    fn grant_checks_in_etcds_order() {
        let (_d, s) = open();
        assert!(matches!(grant(&s, 0, 10), Err(ApplyError::LeaseNotFound)));
        assert!(matches!(
            grant(&s, 1, MAX_LEASE_TTL + 1),
            Err(ApplyError::LeaseTtlTooLarge)
        ));
        let r = grant(&s, 1, MAX_LEASE_TTL).unwrap();
        assert_eq!(
            (r.id, r.ttl, r.header.unwrap().revision),
            (1, MAX_LEASE_TTL, 1)
        );
        assert!(matches!(grant(&s, 1, 5), Err(ApplyError::LeaseExists)));
        // A grant is not a revision.
        assert_eq!(s.current_revision(), 1);
    }

    #[test]
    fn grant_then_put_in_one_applier() {
        let (_d, s) = open();
        let mut a = s.begin_apply();
        a.lease_grant(&LeaseGrantRequest { ttl: 10, id: 7 })
            .unwrap();
        a.put(&PutRequest {
            key: b"k".to_vec(),
            lease: 7,
            ..Default::default()
        })
        .unwrap();
        a.commit().unwrap();
        assert_eq!(keys_of(&s, 7), ["k"]);
    }

    #[test]
    fn attach_detach_and_revoke_in_one_revision() {
        let (_d, s) = open();
        grant(&s, 7, 10).unwrap();
        grant(&s, 8, 10).unwrap();
        assert!(matches!(put_l(&s, "x", 9), Err(ApplyError::LeaseNotFound)));
        put_l(&s, "c", 7).unwrap(); // 2
        put_l(&s, "a", 7).unwrap(); // 3
        put_l(&s, "b", 7).unwrap(); // 4
        put_l(&s, "d", 7).unwrap(); // 5
        put(&s, "d", "plain"); // 6: detached from 7
        put_l(&s, "b", 8).unwrap(); // 7: moved to 8
        put_l(&s, "e", 7).unwrap(); // 8
        del(&s, "e", ""); // 9: detached
        assert_eq!(keys_of(&s, 7), ["a", "c"]);
        assert_eq!(keys_of(&s, 8), ["b"]);
        let r = revoke(&s, 7).unwrap();
        assert_eq!(r.header.unwrap().revision, 10);
        assert!(s.lease(7).is_none());
        let changes = s.changes(10, 10, 0).unwrap();
        let got: Vec<_> = changes
            .iter()
            .map(|c| {
                (
                    String::from_utf8(c.kv.key.to_vec()).unwrap(),
                    c.revision.sub,
                    c.is_delete,
                )
            })
            .collect();
        assert_eq!(got, [("a".into(), 0, true), ("c".into(), 1, true)]);
        assert!(matches!(revoke(&s, 7), Err(ApplyError::LeaseNotFound)));
        // A revoke of a lease without keys is not a revision.
        assert_eq!(revoke(&s, 8).unwrap().header.unwrap().revision, 11);
        let r = s
            .range(&RangeRequest {
                key: b"a".to_vec(),
                range_end: vec![0],
                ..Default::default()
            })
            .unwrap();
        let left: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(left, [b"d".to_vec()]);
    }

    #[test]
    fn table_survives_reopen_and_snapshot() {
        let (dir, s) = open();
        grant(&s, 7, 10).unwrap();
        grant(&s, 8, 20).unwrap();
        put_l(&s, "a", 7).unwrap();
        put_l(&s, "b", 7).unwrap();
        put_l(&s, "b", 8).unwrap();
        put_l(&s, "c", 7).unwrap();
        del(&s, "c", "");
        let mut a = s.begin_apply();
        a.lease_checkpoint(&LeaseCheckpointRequest {
            checkpoints: vec![
                LeaseCheckpoint {
                    id: 8,
                    remaining_ttl: 5,
                },
                LeaseCheckpoint {
                    id: 99,
                    remaining_ttl: 5,
                },
            ],
        })
        .unwrap();
        a.commit().unwrap();
        let mut snap = vec![];
        s.snapshot().unwrap().write_to(&mut snap).unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(keys_of(&s, 7), ["a"]);
        assert_eq!(keys_of(&s, 8), ["b"]);
        assert_eq!(
            s.lease_records(),
            [
                LeaseRecord {
                    id: 7,
                    ttl: 10,
                    remaining_ttl: 0
                },
                LeaseRecord {
                    id: 8,
                    ttl: 20,
                    remaining_ttl: 5
                }
            ]
        );
        let (_d2, other) = open();
        grant(&other, 1, 1).unwrap();
        other.install_snapshot(&mut snap.as_slice()).unwrap();
        assert!(other.lease(1).is_none());
        assert_eq!(keys_of(&other, 7), ["a"]);
        assert_eq!(other.lease_records().len(), 2);
    }
}
