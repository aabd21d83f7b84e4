//! Rejected requests: the exact gRPC code and message etcd 3.5 sends, and the
//! guarantee that a rejected request changes nothing (same revision, same data).

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp,
};
use tonic::Code;

use crate::support::{assert_grpc, current_rev, TestServer};

const NO_KEY: &str = "etcdserver: key is not provided";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

/// A server holding k=v at revision 2.
async fn setup() -> (TestServer, Client) {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.put("k", "v", None).await.unwrap();
    assert_eq!(current_rev(&mut c).await, 2);
    (srv, c)
}

/// Nothing changed: revision and k's value are as `setup` left them.
async fn unchanged(c: &mut Client, rev: i64) {
    assert_eq!(
        current_rev(c).await,
        rev,
        "a rejected request wrote a revision"
    );
    let g = c.get("k", None).await.unwrap();
    assert_eq!(g.kvs()[0].value(), b"v");
    assert_eq!(g.kvs()[0].mod_revision(), 2);
}

#[tokio::test]
async fn empty_key_is_not_provided() {
    let (_srv, mut c) = setup().await;
    assert_grpc(c.put("", "x", None).await, Code::InvalidArgument, NO_KEY);
    assert_grpc(c.get("", None).await, Code::InvalidArgument, NO_KEY);
    assert_grpc(c.delete("", None).await, Code::InvalidArgument, NO_KEY);
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::put("", "x", None)]))
            .await,
        Code::InvalidArgument,
        NO_KEY,
    );
    unchanged(&mut c, 2).await;
}

#[tokio::test]
async fn txn_duplicate_key() {
    let (_srv, mut c) = setup().await;
    const DUP: &str = "etcdserver: duplicate key given in txn request";
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)]))
            .await,
        Code::InvalidArgument,
        DUP,
    );
    // A put and a delete of the same key.
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::delete("k", None)]))
            .await,
        Code::InvalidArgument,
        DUP,
    );
    // A put inside a deleted range.
    assert_grpc(
        c.txn(Txn::new().or_else([
            TxnOp::delete("a", Some(etcd_client::DeleteOptions::new().with_range("z"))),
            TxnOp::put("k", "1", None),
        ]))
        .await,
        Code::InvalidArgument,
        DUP,
    );
    unchanged(&mut c, 2).await;
    // Not duplicates: the same key in both branches, or two deletes, or get+put.
    let r = c
        .txn(
            Txn::new()
                .and_then([TxnOp::put("k", "v", None), TxnOp::get("k", None)])
                .or_else([TxnOp::put("k", "w", None)]),
        )
        .await
        .unwrap();
    assert!(r.succeeded());
    let r = c
        .txn(Txn::new().and_then([TxnOp::delete("x", None), TxnOp::delete("x", None)]))
        .await
        .unwrap();
    assert!(r.succeeded());
}

#[tokio::test]
async fn txn_too_many_operations() {
    let (_srv, mut c) = setup().await;
    const TOO_MANY: &str = "etcdserver: too many operations in txn request";
    let puts = |n: usize| -> Vec<TxnOp> {
        (0..n)
            .map(|i| TxnOp::put(format!("op{i:03}"), "x", None))
            .collect()
    };
    assert_grpc(
        c.txn(Txn::new().and_then(puts(129))).await,
        Code::InvalidArgument,
        TOO_MANY,
    );
    assert_grpc(
        c.txn(Txn::new().or_else(puts(129))).await,
        Code::InvalidArgument,
        TOO_MANY,
    );
    let cmps: Vec<Compare> = (0..129)
        .map(|i| Compare::version(format!("c{i}"), CompareOp::Equal, 0))
        .collect();
    assert_grpc(
        c.txn(Txn::new().when(cmps)).await,
        Code::InvalidArgument,
        TOO_MANY,
    );
    unchanged(&mut c, 2).await;
    // 128 is allowed, and is one revision.
    let r = c.txn(Txn::new().and_then(puts(128))).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 3);
}

#[tokio::test]
async fn ignore_value_and_ignore_lease() {
    let (_srv, mut c) = setup().await;
    assert_grpc(
        c.put("k", "new", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_grpc(
        c.put(
            "k",
            "",
            Some(PutOptions::new().with_ignore_lease().with_lease(42)),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_grpc(
        c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_grpc(
        c.put("missing", "", Some(PutOptions::new().with_ignore_lease()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    unchanged(&mut c, 2).await;
    // The valid uses. ignore_value keeps the value; the lease is still taken
    // from the request unless ignore_lease is set too.
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.put("k", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap(); // 3
    let r = c
        .put(
            "k",
            "",
            Some(
                PutOptions::new()
                    .with_ignore_value()
                    .with_ignore_lease()
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap(); // 4
    assert_eq!(r.header().unwrap().revision(), 4);
    assert_eq!(r.prev_key().unwrap().value(), b"v");
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.value(), kv.mod_revision(), kv.version(), kv.lease()),
        (&b"v"[..], 4, 3, lease)
    );
    // ignore_value alone: the value stays, the lease is dropped (lease 0 in
    // the request)!
    c.put("k", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap(); // 5
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.value(), kv.mod_revision(), kv.version(), kv.lease()),
        (&b"v"[..], 5, 4, 0)
    );
    // ignore_lease keeps the lease while changing the value.
    c.put("k", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap(); // 6
    c.put("k", "v2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap(); // 7
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.value(), kv.lease(), kv.version()),
        (&b"v2"[..], lease, 6)
    );
    // A plain put without a lease drops it.
    c.put("k", "v3", None).await.unwrap();
    assert_eq!(c.get("k", None).await.unwrap().kvs()[0].lease(), 0);
}

#[tokio::test]
async fn range_at_compacted_and_future_revisions() {
    let (_srv, mut c) = setup().await;
    c.put("k", "v", None).await.unwrap(); // 3
    c.put("k", "v", None).await.unwrap(); // 4
    c.compact(3, None).await.unwrap();
    let at = |r| GetOptions::new().with_revision(r);
    assert_grpc(c.get("k", Some(at(2))).await, Code::OutOfRange, COMPACTED);
    assert_grpc(c.get("k", Some(at(1))).await, Code::OutOfRange, COMPACTED);
    assert_grpc(c.get("k", Some(at(5))).await, Code::OutOfRange, FUTURE);
    assert_grpc(c.get("k", Some(at(1000))).await, Code::OutOfRange, FUTURE);
    // In a txn too.
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::get("k", Some(at(2)))]))
            .await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::get("k", Some(at(9)))]))
            .await,
        Code::OutOfRange,
        FUTURE,
    );
    assert_eq!(current_rev(&mut c).await, 4);
    assert!(c.get("k", Some(at(3))).await.is_ok());
    assert!(c.get("k", Some(at(4))).await.is_ok());
}

#[tokio::test]
async fn compact_at_future_and_already_compacted_revisions() {
    let (_srv, mut c) = setup().await;
    c.put("k", "v", None).await.unwrap(); // 3
    c.put("k", "v", None).await.unwrap(); // 4
    assert_grpc(c.compact(5, None).await, Code::OutOfRange, FUTURE);
    assert_grpc(c.compact(100, None).await, Code::OutOfRange, FUTURE);
    c.compact(3, None).await.unwrap();
    assert_grpc(c.compact(3, None).await, Code::OutOfRange, COMPACTED);
    assert_grpc(c.compact(2, None).await, Code::OutOfRange, COMPACTED);
    assert_grpc(
        c.compact(1, Some(CompactionOptions::new().with_physical()))
            .await,
        Code::OutOfRange,
        COMPACTED,
    );
    // Compacting to the current revision is allowed.
    c.compact(4, None).await.unwrap();
    assert_eq!(current_rev(&mut c).await, 4);
}

#[tokio::test]
async fn request_too_large() {
    let (_srv, mut c) = setup().await;
    // etcd's default --max-request-bytes is 1.5 MiB; gRPC itself accepts up
    // to that plus 512 KiB, so a 1.6 MiB value reaches etcd's own check.
    let big = vec![b'x'; 1_677_722];
    assert_grpc(
        c.put("big", big.clone(), None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::put("big", big, None)]))
            .await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    // Past limit + 512 KiB gRPC itself refuses the message.
    let huge = vec![b'x'; 2 * 1024 * 1024 + 1];
    let st = crate::support::grpc_status(c.put("huge", huge, None).await);
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(
        st.message()
            .starts_with("grpc: received message larger than max ("),
        "{st:?}"
    );
    unchanged(&mut c, 2).await;
    // Just under the limit is fine.
    let r = c.put("big", vec![b'y'; 1024 * 1024], None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 3);
}

#[tokio::test]
async fn put_with_unknown_lease() {
    let (_srv, mut c) = setup().await;
    const NF: &str = "etcdserver: requested lease not found";
    assert_grpc(
        c.put("k", "x", Some(PutOptions::new().with_lease(0x1234_5678)))
            .await,
        Code::NotFound,
        NF,
    );
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::put(
            "k",
            "x",
            Some(PutOptions::new().with_lease(0x1234_5678)),
        )]))
        .await,
        Code::NotFound,
        NF,
    );
    unchanged(&mut c, 2).await;
    // A revoked lease is unknown too.
    let id = c.lease_grant(60, None).await.unwrap().id();
    c.lease_revoke(id).await.unwrap();
    assert_grpc(
        c.put("k", "x", Some(PutOptions::new().with_lease(id)))
            .await,
        Code::NotFound,
        NF,
    );
    unchanged(&mut c, 2).await;
}

#[tokio::test]
async fn txn_nested_duplicates_and_empty_compare_key() {
    let (_srv, mut c) = setup().await;
    const DUP: &str = "etcdserver: duplicate key given in txn request";
    // A put in a nested txn clashes with a put of the outer branch.
    let inner = Txn::new().and_then([TxnOp::put("a", "inner", None)]);
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::put("a", "outer", None), TxnOp::txn(inner)]))
            .await,
        Code::InvalidArgument,
        DUP,
    );
    // ... and with a delete of the outer branch.
    let inner = Txn::new().or_else([TxnOp::put("k", "inner", None)]);
    assert_grpc(
        c.txn(Txn::new().and_then([TxnOp::delete("k", None), TxnOp::txn(inner)]))
            .await,
        Code::InvalidArgument,
        DUP,
    );
    // A compare needs a key too.
    assert_grpc(
        c.txn(Txn::new().when([Compare::version("", CompareOp::Equal, 0)]))
            .await,
        Code::InvalidArgument,
        NO_KEY,
    );
    unchanged(&mut c, 2).await;
    // The nested txn's two branches may each put the same key as each other.
    let inner = Txn::new()
        .and_then([TxnOp::put("a", "1", None)])
        .or_else([TxnOp::put("a", "2", None)]);
    let r = c
        .txn(Txn::new().and_then([TxnOp::txn(inner)]))
        .await
        .unwrap();
    assert!(r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 3);
}
