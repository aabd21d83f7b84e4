//! Maintenance `HashKV` and `Hash`.
//!
//! `HashKV` is etcd's consistency check (`etcdctl endpoint hashkv`, etcd's
//! corruption checker): CRC32-Castagnoli over etcd's stored revisions up to
//! a revision. oxcd computes the very value etcd does for the same history,
//! so `hashkv_matches_etcd` runs one history on oxcd and on the reference
//! etcd side by side (whatever `OXCD_TEST_TARGET` says) and compares every
//! answer. The other tests run against the selected target as usual.
//!
//! etcd facts pinned here (etcd 3.5.1 unless said):
//! - A new store hashes to 1084519789 = CRC32C("key"), `compact_revision`
//!   -1, header revision 1.
//! - `header.revision` is the current revision, also for a historic hash.
//! - Above the current revision: OutOfRange `etcdserver: mvcc: required
//!   revision is a future revision`; below the compact revision: OutOfRange
//!   `etcdserver: mvcc: required revision has been compacted`. At the
//!   compact revision itself 3.5.1 also says compacted; 3.5.5+ (and oxcd,
//!   which reports 3.5.17) answer the hash that compaction stored: the
//!   `HashKV` of that revision as it was just before compacting. 3.5.5+
//!   looks its last 10 compactions' hashes up before any check, so an
//!   older compaction revision, below the compact revision, answers its
//!   stored hash too instead of "compacted".
//! - `etcdctl endpoint hashkv` prints `<endpoint>, <hash>`; with `-w json`
//!   `[{"Endpoint":..,"HashKV":{"header":..,"hash":..,"compact_revision":..}}]`.

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp,
};

use crate::support::{assert_grpc, json, ok_stdout, target, Target, TestServer};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

/// One HashKV answer: hash, compact revision, header revision; or the
/// error's code and message.
type Answer = Result<(u32, i64, i64), (tonic::Code, String)>;

async fn hash_kv(c: &mut Client, rev: i64) -> Answer {
    match c.hash_kv(rev).await {
        Ok(r) => Ok((
            r.hash(),
            r.compact_version(),
            r.header().unwrap().revision(),
        )),
        Err(etcd_client::Error::GRpcStatus(s)) => Err((s.code(), s.message().to_string())),
        Err(e) => panic!("hash_kv({rev}): {e}"),
    }
}

/// A history touching everything that ends up in etcd's stored revisions:
/// versions, empty and long values, leases (and their revoke deleting
/// several keys in one revision), single and range deletes, txns with
/// several changes, a physical compaction, a key re-created after its
/// delete. Returns the compact revision.
async fn history(c: &mut Client) -> i64 {
    let lease = |id| Some(LeaseGrantOptions::new().with_id(id));
    c.lease_grant(600, lease(0x1234)).await.unwrap();
    c.lease_grant(600, lease(0x7fff_0000_0000_0001))
        .await
        .unwrap();
    c.put("a", "x", None).await.unwrap();
    c.put("a", "y", None).await.unwrap();
    c.put("b", "", None).await.unwrap();
    c.put("long", "v".repeat(3000), None).await.unwrap();
    let on = |id| Some(PutOptions::new().with_lease(id));
    c.put("c", "1", on(0x1234)).await.unwrap();
    c.put("d", "1", on(0x1234)).await.unwrap();
    c.put("l1", "1", on(0x7fff_0000_0000_0001)).await.unwrap();
    c.put("l2", "1", on(0x7fff_0000_0000_0001)).await.unwrap();
    c.put("a", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap();
    c.delete("b", None).await.unwrap();
    c.delete("nothing", None).await.unwrap(); // no revision
    c.delete("c", Some(DeleteOptions::new().with_range("e")))
        .await
        .unwrap();
    let txn = |cmp| {
        Txn::new()
            .when(vec![Compare::version("a", cmp, 0)])
            .and_then(vec![
                TxnOp::put("x1", "t", None),
                TxnOp::put("x2", "t", None),
                TxnOp::delete("a", None),
                TxnOp::get("x1", None),
            ])
            .or_else(vec![TxnOp::put("y", "f", None)])
    };
    c.txn(txn(CompareOp::Greater)).await.unwrap(); // success branch
    c.txn(txn(CompareOp::Greater)).await.unwrap(); // a is gone: failure
    c.lease_revoke(0x7fff_0000_0000_0001).await.unwrap();
    let r = c.put("long", "w", None).await.unwrap();
    let compact_at = r.header().unwrap().revision();
    c.put("x1", "after", None).await.unwrap();
    c.compact(
        compact_at,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    c.put("a", "again", None).await.unwrap(); // new generation
    c.put("x2", "later", None).await.unwrap();
    compact_at
}

/// Every HashKV answer from revision 0 to two past the current one.
async fn all_answers(c: &mut Client, skip: i64) -> Vec<(i64, Answer)> {
    let cur = hash_kv(c, 0).await.unwrap().2;
    let mut out = vec![];
    for rev in 0..=cur + 2 {
        if rev != skip {
            out.push((rev, hash_kv(c, rev).await));
        }
    }
    out
}

/// The same history gives the same HashKV as etcd 3.5 at every revision:
/// before a compaction, after it, with rev 0, and when no key is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashkv_matches_etcd() {
    let ox = TestServer::start_target(Target::Oxcd).await;
    let et = TestServer::start_target(Target::Etcd).await;
    let (mut o, mut e) = (ox.client().await, et.client().await);

    // A new store, and the whole history before compacting.
    assert_eq!(hash_kv(&mut o, 0).await, Ok((1084519789, -1, 1)));
    assert_eq!(hash_kv(&mut e, 0).await, Ok((1084519789, -1, 1)));
    let (co, ce) = (history(&mut o).await, history(&mut e).await);
    assert_eq!(co, ce, "the histories diverged");
    // The compact revision itself is where 3.5.1 and 3.5.5+ differ.
    let (ao, ae) = (all_answers(&mut o, co).await, all_answers(&mut e, ce).await);
    assert_eq!(ao, ae);
    let cur = ao[0].1.as_ref().unwrap().2;
    assert!(ao.iter().any(|(r, a)| *r > co && a.is_ok()) && cur > co + 1);
    assert_eq!(ao[1], (1, Err((tonic::Code::OutOfRange, COMPACTED.into()))));
    assert_eq!(
        ao.last().unwrap().1,
        Err((tonic::Code::OutOfRange, FUTURE.into()))
    );

    // Nothing alive any more: etcd drops its filter and hashes every
    // revision it still stores, those kept by the compaction included.
    for c in [&mut o, &mut e] {
        c.delete("", Some(DeleteOptions::new().with_all_keys()))
            .await
            .unwrap();
    }
    let (ho, he) = (hash_kv(&mut o, 0).await, hash_kv(&mut e, 0).await);
    assert_eq!(ho, he);
    // And again after compacting everything away.
    for c in [&mut o, &mut e] {
        let cur = hash_kv(c, 0).await.unwrap().2;
        c.put("z", "1", None).await.unwrap();
        c.compact(
            cur,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    }
    let (ao, ae) = (all_answers(&mut o, -1).await, all_answers(&mut e, -1).await);
    let compact = hash_kv(&mut o, 0).await.unwrap().1;
    // Both compaction revisions answer a stored hash on 3.5.5+ (see the
    // module doc), an error on 3.5.1.
    let differ = |a: &Vec<(i64, Answer)>| -> Vec<(i64, Answer)> {
        a.iter()
            .filter(|(r, _)| *r != compact && *r != co)
            .cloned()
            .collect()
    };
    assert_eq!(differ(&ao), differ(&ae));
}

/// Errors, the header, and HashKV at the compact revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashkv_errors_and_compact_revision() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    assert_grpc(c.hash_kv(2).await, tonic::Code::OutOfRange, FUTURE);
    for i in 0..5 {
        c.put("k", format!("v{i}"), None).await.unwrap();
    }
    let before = hash_kv(&mut c, 4).await.unwrap();
    assert_eq!(before, hash_kv(&mut c, 4).await.unwrap(), "not stable");
    assert_eq!((before.1, before.2), (-1, 6));
    let at6 = hash_kv(&mut c, 0).await.unwrap();
    assert_ne!(at6.0, before.0);
    c.compact(
        4,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    assert_grpc(c.hash_kv(3).await, tonic::Code::OutOfRange, COMPACTED);
    assert_grpc(c.hash_kv(7).await, tonic::Code::OutOfRange, FUTURE);
    // Compacting changes what a hash above the compact revision covers.
    let after6 = hash_kv(&mut c, 6).await.unwrap();
    assert_eq!((after6.1, after6.2), (4, 6));
    assert_ne!(after6.0, at6.0);
    assert_eq!(hash_kv(&mut c, 0).await.unwrap(), after6);
    let r = c.hash_kv(0).await.unwrap();
    let h = r.header().unwrap();
    let st = c.status().await.unwrap();
    let sh = st.header().unwrap();
    assert_eq!(
        (h.cluster_id(), h.member_id()),
        (sh.cluster_id(), sh.member_id())
    );
    assert_eq!(h.raft_term(), sh.raft_term());
    match target() {
        Target::Etcd => assert_grpc(c.hash_kv(4).await, tonic::Code::OutOfRange, COMPACTED),
        // etcd 3.5.5+: the hash compaction stored, as it was before.
        Target::Oxcd => assert_eq!(hash_kv(&mut c, 4).await, Ok((before.0, -1, 6))),
    }
}

/// `etcdctl endpoint hashkv` (plain, `--rev`, `-w json`) agrees with the
/// gRPC answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_endpoint_hashkv() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    for i in 0..4 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    c.delete("k1", None).await.unwrap();
    let (h, compact, rev) = hash_kv(&mut c, 0).await.unwrap();
    let host = srv.endpoint();
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["endpoint", "hashkv"])),
        format!("{host}, {h}\n")
    );
    let h3 = hash_kv(&mut c, 3).await.unwrap().0;
    assert_ne!(h3, h);
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["endpoint", "hashkv", "--rev=3"])),
        format!("{host}, {h3}\n")
    );
    let v = json(&ok_stdout(
        &srv.etcdctl(&["endpoint", "hashkv", "-w", "json"]),
    ));
    let e = &v[0];
    assert_eq!(e["Endpoint"], host);
    assert_eq!(e["HashKV"]["hash"], h);
    assert_eq!(e["HashKV"]["compact_revision"], compact);
    assert_eq!(e["HashKV"]["header"]["revision"], rev);
    let o = srv.etcdctl(&["endpoint", "hashkv", "--rev=99"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("Error: {FUTURE}")), "{err}");
}

/// `Hash`: the same value for the same state, a different one after a
/// write; the header carries the current revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_follows_the_state() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.put("a", "1", None).await.unwrap();
    let h1 = c.hash().await.unwrap();
    assert_eq!(h1.header().unwrap().revision(), 2);
    assert_eq!(c.hash().await.unwrap().hash(), h1.hash());
    c.put("a", "2", None).await.unwrap();
    let h2 = c.hash().await.unwrap();
    assert_eq!(h2.header().unwrap().revision(), 3);
    assert_ne!(h2.hash(), h1.hash());
}
