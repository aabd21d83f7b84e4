//! Many-member clusters: the same bodies on one, three and five members
//! (real processes on loopback, see `support::TestCluster`), driven by the
//! `etcd-client` crate and by `etcdctl --endpoints=a,b,c`.
//!
//! What is checked, against etcd 3.5.1 first:
//! - every member serves every KV RPC; writes through any member are read
//!   back alike through every member, linearizable and serializable;
//! - kill -9 of the leader under a stream of writes loses no acknowledged
//!   write, and clients that retry on another member succeed;
//! - a minority down: the rest serves; a majority down: writes fail within
//!   a bounded time with etcd's error, and work again once it returns;
//! - a member that missed more than the retained log catches up by snapshot
//!   and then holds exactly the same data;
//! - leader failover time (median of several kills), printed, not asserted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::support::{
    grpc_status, json, ok_stdout, target, Member, Target, TestCluster, ELECTION_MS,
};

/// Bound on waiting for a (new) leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a member catching up with the others.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// One key as a member stores it: value, create_revision, mod_revision,
/// version, lease.
type KvState = (Vec<u8>, i64, i64, i64, i64);

/// Everything a member holds, read locally (serializable): its revision and
/// every key.
async fn dump(m: &Member) -> (i64, BTreeMap<Vec<u8>, KvState>) {
    let mut c = m.client().await;
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_serializable()),
        )
        .await
        .unwrap_or_else(|e| panic!("serializable dump of {}: {e}\n{}", m.name(), m.logs()));
    let rev = r.header().unwrap().revision();
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                (
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                ),
            )
        })
        .collect();
    (rev, kvs)
}

/// A linearizable read through `m`: afterwards its local state includes every
/// write acknowledged before the call.
async fn barrier(m: &Member) -> i64 {
    let mut c = m.client().await;
    c.get("oxcd-it-barrier", None)
        .await
        .unwrap_or_else(|e| panic!("linearizable read on {}: {e}\n{}", m.name(), m.logs()))
        .header()
        .unwrap()
        .revision()
}

/// Waits until `m`'s local (serializable) revision reaches `rev`.
async fn wait_local_rev(m: &Member, rev: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    for _ in 0..10_000 {
        if Instant::now() > deadline {
            break;
        }
        if let Ok(mut c) = m.try_client().await {
            match c
                .get("oxcd-it-rev-probe", Some(GetOptions::new().with_serializable()))
                .await
            {
                Ok(r) if r.header().unwrap().revision() >= rev => return,
                Ok(r) => last = format!("at {}", r.header().unwrap().revision()),
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} did not reach revision {rev} within {timeout:?} ({last})\n{}",
        m.name(),
        m.logs()
    );
}

/// Asserts that every running member holds exactly the same keys, values,
/// revisions, versions and leases, at the same revision. Each member is first
/// brought up to date with a linearizable read.
async fn assert_identical(c: &mut TestCluster) -> BTreeMap<Vec<u8>, KvState> {
    let running = c.running();
    let mut rev = 0;
    for &i in &running {
        rev = rev.max(barrier(c.member(i)).await);
    }
    let mut first: Option<(usize, i64, BTreeMap<Vec<u8>, KvState>)> = None;
    for &i in &running {
        wait_local_rev(c.member(i), rev, CATCH_UP_TIMEOUT).await;
        let (r, kvs) = dump(c.member(i)).await;
        match &first {
            None => first = Some((i, r, kvs)),
            Some((j, r0, kvs0)) => {
                assert_eq!(r, *r0, "revision of m{i} vs m{j}");
                if kvs != *kvs0 {
                    let diff: Vec<_> = kvs
                        .iter()
                        .filter(|(k, v)| kvs0.get(*k) != Some(v))
                        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone(), kvs0.get(k).cloned()))
                        .take(5)
                        .collect();
                    panic!(
                        "m{i} and m{j} differ: {} vs {} keys; first differences (key, m{i}, m{j}): {diff:?}",
                        kvs.len(),
                        kvs0.len()
                    );
                }
            }
        }
    }
    first.expect("no running member").2
}

fn kv_of(r: &etcd_client::GetResponse) -> Option<(Vec<u8>, i64, i64, i64)> {
    r.kvs().first().map(|kv| {
        (
            kv.value().to_vec(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
        )
    })
}

// ------------------------------------------------------------ reads agree

/// Writes through each member; reads through every member, linearizable
/// and serializable, agree. Also: one cluster id, distinct member ids that
/// match MemberList.
async fn writes_and_reads_agree(n: usize) {
    let mut cl = TestCluster::start(n).await;
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(cl.member(i).client().await);
    }

    // Header ids: one cluster id, one distinct member id per member.
    let mut ids = Vec::new();
    let mut cluster_ids = Vec::new();
    for c in clients.iter_mut() {
        let s = c.status().await.unwrap();
        let h = s.header().unwrap();
        ids.push(h.member_id());
        cluster_ids.push(h.cluster_id());
    }
    cluster_ids.dedup();
    assert_eq!(cluster_ids.len(), 1, "cluster ids differ: {cluster_ids:?}");
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), n, "member ids not distinct: {ids:?}");
    let ml = clients[0].member_list().await.unwrap();
    let mut listed: Vec<(String, u64, Vec<String>)> = ml
        .members()
        .iter()
        .map(|m| (m.name().to_string(), m.id(), m.client_urls().to_vec()))
        .collect();
    listed.sort();
    let expected: Vec<(String, u64, Vec<String>)> = (0..n)
        .map(|i| (format!("m{i}"), ids[i], vec![cl.member(i).endpoint()]))
        .collect();
    assert_eq!(listed, expected, "member list");

    let mut acked = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        // Put, overwrite, and a txn, all through member i.
        let k = format!("agree/{i}");
        let r1 = c.put(k.as_str(), "first", None).await.unwrap();
        let r2 = c.put(k.as_str(), format!("from-m{i}"), None).await.unwrap();
        let (rev1, rev2) = (r1.header().unwrap().revision(), r2.header().unwrap().revision());
        assert!(rev2 > rev1);
        // Read-your-writes on the member written through, even serializable.
        let g = c
            .get(k.as_str(), Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        assert_eq!(
            kv_of(&g),
            Some((format!("from-m{i}").into_bytes(), rev1, rev2, 2)),
            "serializable read of {k} on the member that wrote it"
        );
        let t = c
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(k.as_str(), CompareOp::Equal, rev2)])
                    .and_then([TxnOp::put(format!("agree/txn/{i}"), "t", None)]),
            )
            .await
            .unwrap();
        assert!(t.succeeded(), "txn through m{i}");
        let rev3 = t.header().unwrap().revision();
        assert_eq!(rev3, rev2 + 1);
        acked.push((k, format!("from-m{i}"), rev1, rev2));
        acked.push((format!("agree/txn/{i}"), "t".to_string(), rev3, rev3));
    }
    // A delete through the last member.
    let d = clients[n - 1].delete("agree/0", None).await.unwrap();
    assert_eq!(d.deleted(), 1);
    let del_rev = d.header().unwrap().revision();
    acked.retain(|a| a.0 != "agree/0");

    for j in 0..n {
        let c = &mut clients[j];
        // Linearizable first: it must see every acknowledged write at once.
        let g = c.get("agree/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(g.header().unwrap().revision(), del_rev, "linearizable revision on m{j}");
        for (k, v, crev, mrev) in &acked {
            let g = c.get(k.as_str(), None).await.unwrap();
            assert_eq!(
                kv_of(&g).map(|x| (x.0, x.1, x.2)),
                Some((v.clone().into_bytes(), *crev, *mrev)),
                "linearizable read of {k} on m{j}"
            );
            // Serializable after a linearizable read on the same member: the
            // local state can only have moved forward.
            let s = c
                .get(k.as_str(), Some(GetOptions::new().with_serializable()))
                .await
                .unwrap();
            assert_eq!(kv_of(&s), kv_of(&g), "serializable read of {k} on m{j}");
        }
        let g = c.get("agree/0", None).await.unwrap();
        assert!(g.kvs().is_empty(), "agree/0 deleted, still on m{j}");
    }
    let state = assert_identical(&mut cl).await;
    assert_eq!(state.len(), 2 * n - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_agree_1() {
    writes_and_reads_agree(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_agree_3() {
    writes_and_reads_agree(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_agree_5() {
    writes_and_reads_agree(5).await;
}
