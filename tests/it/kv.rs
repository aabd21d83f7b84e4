//! The KV service through the `etcd-client` crate: revisions, key generations,
//! Range options, DeleteRange, Txn and Compact, with the exact values etcd 3.5
//! returns.

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

use crate::support::{assert_grpc, current_rev, TestServer};

/// Puts and returns the revision the write created.
pub async fn put(c: &mut Client, k: &str, v: &str) -> i64 {
    c.put(k, v, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key().to_vec()).unwrap())
        .collect()
}

/// (key, value, create_revision, mod_revision, version)
fn kv_tuple(kv: &KeyValue) -> (String, String, i64, i64, i64) {
    (
        String::from_utf8(kv.key().to_vec()).unwrap(),
        String::from_utf8(kv.value().to_vec()).unwrap(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
    )
}

fn t(k: &str, v: &str, c: i64, m: i64, ver: i64) -> (String, String, i64, i64, i64) {
    (k.to_string(), v.to_string(), c, m, ver)
}

#[tokio::test]
async fn revisions_start_at_one_and_advance_once_per_write() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    assert_eq!(
        current_rev(&mut c).await,
        1,
        "a new cluster is at revision 1"
    );
    assert_eq!(put(&mut c, "a", "1").await, 2);
    assert_eq!(put(&mut c, "b", "1").await, 3);
    // Same key, same value: still a write, still a new revision.
    assert_eq!(put(&mut c, "b", "1").await, 4);
    let d = c.delete("a", None).await.unwrap();
    assert_eq!((d.deleted(), d.header().unwrap().revision()), (1, 5));
    // Deleting nothing does not create a revision.
    let d = c.delete("a", None).await.unwrap();
    assert_eq!((d.deleted(), d.header().unwrap().revision()), (0, 5));
    // Reads do not either.
    c.get("b", None).await.unwrap();
    assert_eq!(current_rev(&mut c).await, 5);
    // A txn without writes does not either.
    let r = c
        .txn(Txn::new().and_then([TxnOp::get("b", None)]))
        .await
        .unwrap();
    assert_eq!(r.header().unwrap().revision(), 5);
    assert_eq!(current_rev(&mut c).await, 5);
}

#[tokio::test]
async fn header_ids_are_nonzero_and_stable_across_restart() {
    let mut srv = TestServer::start().await;
    let mut c = srv.client().await;
    let h1 = c
        .put("k", "v", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .clone();
    let h2 = c.get("k", None).await.unwrap().header().unwrap().clone();
    assert_ne!(h1.cluster_id(), 0);
    assert_ne!(h1.member_id(), 0);
    assert!(h1.raft_term() >= 1);
    assert_eq!(
        (h1.cluster_id(), h1.member_id()),
        (h2.cluster_id(), h2.member_id())
    );
    assert_eq!(h1.revision(), 2);
    srv.restart().await;
    let mut c = srv.client().await;
    let h3 = c.get("k", None).await.unwrap().header().unwrap().clone();
    assert_eq!(
        (h3.cluster_id(), h3.member_id(), h3.revision()),
        (h1.cluster_id(), h1.member_id(), 2),
        "ids and revision survive a restart"
    );
    assert!(h3.raft_term() >= h1.raft_term());
    // The data too.
    let g = c.get("k", None).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("k", "v", 2, 2, 1));
    assert_eq!(put(&mut c, "k", "w").await, 3);
}

#[tokio::test]
async fn put_get_and_prev_kv() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let r = c
        .put("foo", "bar", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(r.prev_key().is_none(), "no previous kv for a new key");
    let r = c
        .put("foo", "baz", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(kv_tuple(r.prev_key().unwrap()), t("foo", "bar", 2, 2, 1));
    // Without the option, no prev kv even though there is one.
    let r = c.put("foo", "qux", None).await.unwrap();
    assert!(r.prev_key().is_none());
    let g = c.get("foo", None).await.unwrap();
    assert_eq!(g.kvs().len(), 1);
    assert_eq!(kv_tuple(&g.kvs()[0]), t("foo", "qux", 2, 4, 3));
    assert_eq!((g.count(), g.more()), (1, false));
    assert_eq!(g.kvs()[0].lease(), 0);
    // A missing key: empty kvs, count 0, still a header.
    let g = c.get("nope", None).await.unwrap();
    assert!(g.kvs().is_empty());
    assert_eq!((g.count(), g.header().unwrap().revision()), (0, 4));
    // Binary keys and values, and an empty value.
    c.put(vec![0u8, 255, 1], vec![0u8, 0, 7], None)
        .await
        .unwrap();
    c.put("empty", "", None).await.unwrap();
    let g = c.get(vec![0u8, 255, 1], None).await.unwrap();
    assert_eq!(g.kvs()[0].value(), &[0u8, 0, 7]);
    let g = c.get("empty", None).await.unwrap();
    assert_eq!((g.count(), g.kvs()[0].value()), (1, &b""[..]));
}

#[tokio::test]
async fn create_mod_version_and_new_generation_after_delete() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    put(&mut c, "k", "v1").await; // 2
    put(&mut c, "k", "v2").await; // 3
    let g = c.get("k", None).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("k", "v2", 2, 3, 2));
    let d = c
        .delete("k", Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap(); // 4
    assert_eq!(kv_tuple(&d.prev_kvs()[0]), t("k", "v2", 2, 3, 2));
    assert!(c.get("k", None).await.unwrap().kvs().is_empty());
    put(&mut c, "k", "v3").await; // 5: a new generation
    let g = c.get("k", None).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("k", "v3", 5, 5, 1));
    // History.
    let at = |r| GetOptions::new().with_revision(r);
    let g = c.get("k", Some(at(2))).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("k", "v1", 2, 2, 1));
    assert_eq!(
        g.header().unwrap().revision(),
        5,
        "header is the current revision"
    );
    let g = c.get("k", Some(at(3))).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("k", "v2", 2, 3, 2));
    assert!(c.get("k", Some(at(4))).await.unwrap().kvs().is_empty());
    assert!(c.get("k", Some(at(1))).await.unwrap().kvs().is_empty());
    let g = c.get("k", Some(at(5))).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("k", "v3", 5, 5, 1));
}

async fn five_keys(c: &mut Client) {
    for k in ["a", "a/1", "a/2", "b", "c"] {
        put(c, k, &format!("v-{k}")).await;
    }
}

#[tokio::test]
async fn range_end_prefix_from_key_and_all() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    five_keys(&mut c).await;
    let g = c
        .get("a/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["a/1", "a/2"]);
    let g = c
        .get("a", Some(GetOptions::new().with_range("b")))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["a", "a/1", "a/2"], "range_end is exclusive");
    // range_end "\0": every key >= key.
    let g = c
        .get("b", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["b", "c"]);
    let g = c
        .get("a/2", Some(GetOptions::new().with_range(vec![0u8])))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["a/2", "b", "c"]);
    // key "\0" and range_end "\0": everything.
    let g = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["a", "a/1", "a/2", "b", "c"]);
    assert_eq!(g.count(), 5);
    // An empty range (end <= key) is empty, not an error.
    let g = c
        .get("c", Some(GetOptions::new().with_range("a")))
        .await
        .unwrap();
    assert!(g.kvs().is_empty());
    assert_eq!(g.count(), 0);
}

#[tokio::test]
async fn range_limit_more_and_count() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    five_keys(&mut c).await;
    let all = || GetOptions::new().with_all_keys();
    let g = c.get("", Some(all().with_limit(2))).await.unwrap();
    assert_eq!(keys(g.kvs()), ["a", "a/1"]);
    assert_eq!((g.more(), g.count()), (true, 5), "count ignores the limit");
    let g = c.get("", Some(all().with_limit(5))).await.unwrap();
    assert_eq!((g.kvs().len(), g.more(), g.count()), (5, false, 5));
    let g = c.get("", Some(all().with_limit(6))).await.unwrap();
    assert_eq!((g.kvs().len(), g.more(), g.count()), (5, false, 5));
    let g = c.get("", Some(all().with_limit(0))).await.unwrap();
    assert_eq!(
        (g.kvs().len(), g.more(), g.count()),
        (5, false, 5),
        "0 = no limit"
    );
    let g = c
        .get("a", Some(GetOptions::new().with_prefix().with_limit(1)))
        .await
        .unwrap();
    assert_eq!(
        (keys(g.kvs()), g.more(), g.count()),
        (vec!["a".to_string()], true, 3)
    );
}

#[tokio::test]
async fn range_at_historic_revision() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    five_keys(&mut c).await; // revisions 2..=6
    c.delete("a", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap(); // 7
    put(&mut c, "b", "new").await; // 8
    let all = |r| GetOptions::new().with_all_keys().with_revision(r);
    let g = c.get("", Some(all(4))).await.unwrap();
    assert_eq!(keys(g.kvs()), ["a", "a/1", "a/2"]);
    assert_eq!(g.count(), 3);
    assert_eq!(g.header().unwrap().revision(), 8);
    let g = c.get("", Some(all(7))).await.unwrap();
    assert_eq!(keys(g.kvs()), ["b", "c"]);
    assert_eq!(kv_tuple(&g.kvs()[0]), t("b", "v-b", 5, 5, 1));
    let g = c.get("", Some(all(8))).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("b", "new", 5, 8, 2));
    // Revision 0 (and negative) mean "current".
    let g = c.get("", Some(all(0))).await.unwrap();
    assert_eq!(keys(g.kvs()), ["b", "c"]);
}

/// k1: value c, create 2, mod 6, version 3
/// k2: value a, create 3, mod 7, version 2
/// k3: value b, create 4, mod 4, version 1
async fn sort_data(c: &mut Client) {
    put(c, "k1", "c").await; // 2
    put(c, "k2", "a").await; // 3
    put(c, "k3", "b").await; // 4
    put(c, "k1", "c").await; // 5
    put(c, "k1", "c").await; // 6
    put(c, "k2", "a").await; // 7
}

#[tokio::test]
async fn range_sort_targets_and_orders() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    sort_data(&mut c).await;
    use SortOrder::*;
    use SortTarget::*;
    let cases: &[(SortTarget, SortOrder, [&str; 3])] = &[
        (Key, Ascend, ["k1", "k2", "k3"]),
        (Key, Descend, ["k3", "k2", "k1"]),
        (Key, None, ["k1", "k2", "k3"]),
        (Version, Ascend, ["k3", "k2", "k1"]),
        (Version, Descend, ["k1", "k2", "k3"]),
        (Create, Ascend, ["k1", "k2", "k3"]),
        (Create, Descend, ["k3", "k2", "k1"]),
        (Mod, Ascend, ["k3", "k1", "k2"]),
        (Mod, Descend, ["k2", "k1", "k3"]),
        (Value, Ascend, ["k2", "k3", "k1"]),
        (Value, Descend, ["k1", "k3", "k2"]),
        // etcd: order NONE with a target other than KEY sorts ASCEND by it.
        (Version, None, ["k3", "k2", "k1"]),
        (Mod, None, ["k3", "k1", "k2"]),
        (Value, None, ["k2", "k3", "k1"]),
    ];
    for (target, order, want) in cases {
        let g = c
            .get(
                "k",
                Some(GetOptions::new().with_prefix().with_sort(*target, *order)),
            )
            .await
            .unwrap();
        assert_eq!(keys(g.kvs()), want, "sort {target:?} {order:?}");
        assert_eq!(g.count(), 3);
    }
    // Sort happens before the limit.
    let g = c
        .get(
            "k",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(Mod, Descend)
                    .with_limit(1),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["k2"]);
    assert_eq!((g.more(), g.count()), (true, 3));
    let g = c
        .get(
            "k",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(Key, Descend)
                    .with_limit(2),
            ),
        )
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["k3", "k2"]);
    assert_eq!((g.more(), g.count()), (true, 3));
}

#[tokio::test]
async fn range_keys_only_and_count_only() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    sort_data(&mut c).await;
    let g = c
        .get("k", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["k1", "k2", "k3"]);
    assert_eq!(
        kv_tuple(&g.kvs()[0]),
        t("k1", "", 2, 6, 3),
        "keys_only drops only the value"
    );
    assert_eq!(g.count(), 3);
    let g = c
        .get("k", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert!(g.kvs().is_empty());
    assert_eq!((g.count(), g.more()), (3, false));
    let g = c
        .get(
            "k",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_limit(1),
            ),
        )
        .await
        .unwrap();
    assert!(g.kvs().is_empty());
    assert_eq!(g.count(), 3);
}

#[tokio::test]
async fn range_mod_and_create_revision_filters() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    sort_data(&mut c).await;
    let p = || GetOptions::new().with_prefix();
    let cases: Vec<(GetOptions, Vec<&str>)> = vec![
        (p().with_min_mod_revision(5), vec!["k1", "k2"]),
        (p().with_min_mod_revision(7), vec!["k2"]),
        (p().with_max_mod_revision(6), vec!["k1", "k3"]),
        (p().with_max_mod_revision(5), vec!["k3"]),
        (p().with_min_create_revision(3), vec!["k2", "k3"]),
        (p().with_max_create_revision(3), vec!["k1", "k2"]),
        (
            p().with_min_create_revision(3).with_max_create_revision(3),
            vec!["k2"],
        ),
        (
            p().with_min_mod_revision(5).with_max_create_revision(2),
            vec!["k1"],
        ),
        (p().with_min_mod_revision(8), vec![]),
    ];
    for (opts, want) in cases {
        let dbg = format!("{opts:?}");
        let g = c.get("k", Some(opts)).await.unwrap();
        assert_eq!(keys(g.kvs()), want, "{dbg}");
        // etcd counts the range before the filters prune it.
        assert_eq!(g.count(), 3, "{dbg}");
    }
    // Filter then limit: more reflects the pruned list.
    let g = c
        .get("k", Some(p().with_min_mod_revision(5).with_limit(1)))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["k1"]);
    assert_eq!((g.more(), g.count()), (true, 3));
}

#[tokio::test]
async fn serializable_get_sees_committed_writes() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    put(&mut c, "s", "1").await;
    let g = c
        .get("s", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("s", "1", 2, 2, 1));
    assert_eq!(g.header().unwrap().revision(), 2);
}

#[tokio::test]
async fn delete_range_prev_kv_and_counts() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    five_keys(&mut c).await; // 2..=6
    let d = c
        .delete(
            "a/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(d.deleted(), 2);
    assert_eq!(
        d.prev_kvs().iter().map(kv_tuple).collect::<Vec<_>>(),
        [t("a/1", "v-a/1", 3, 3, 1), t("a/2", "v-a/2", 4, 4, 1)]
    );
    assert_eq!(
        d.header().unwrap().revision(),
        7,
        "one revision for the whole range"
    );
    // Without prev_kv: count only.
    let d = c
        .delete("a", Some(DeleteOptions::new().with_range("c")))
        .await
        .unwrap();
    assert_eq!(d.deleted(), 2, "a and b; c is the exclusive end");
    assert!(d.prev_kvs().is_empty());
    assert_eq!(d.header().unwrap().revision(), 8);
    let g = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["c"]);
    // From key.
    let d = c
        .delete("b", Some(DeleteOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!((d.deleted(), d.header().unwrap().revision()), (1, 9));
    // The deleted keys are still there in history.
    let g = c
        .get("", Some(GetOptions::new().with_all_keys().with_revision(6)))
        .await
        .unwrap();
    assert_eq!(g.count(), 5);
}

/// Runs a txn that puts "ok" on success and returns whether it succeeded.
async fn cmp_holds(c: &mut Client, cmp: Compare) -> bool {
    let dbg = format!("{cmp:?}");
    let before = current_rev(c).await;
    let r = c
        .txn(Txn::new().when([cmp]).and_then([]).or_else([]))
        .await
        .unwrap_or_else(|e| panic!("{dbg}: {e}"));
    assert_eq!(r.header().unwrap().revision(), before);
    r.succeeded()
}

#[tokio::test]
async fn txn_compare_targets_and_operators() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    put(&mut c, "x", "m").await; // 2
    put(&mut c, "other", "_").await; // 3
    put(&mut c, "x", "m").await; // 4: x create 2, mod 4, version 2, value m
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.put("l", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap(); // 5
    use CompareOp::*;
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::version("x", Equal, 2), true),
        (Compare::version("x", Equal, 1), false),
        (Compare::version("x", Greater, 1), true),
        (Compare::version("x", Greater, 2), false),
        (Compare::version("x", Less, 3), true),
        (Compare::version("x", Less, 2), false),
        (Compare::version("x", NotEqual, 1), true),
        (Compare::version("x", NotEqual, 2), false),
        (Compare::create_revision("x", Equal, 2), true),
        (Compare::create_revision("x", Greater, 2), false),
        (Compare::create_revision("x", Less, 3), true),
        (Compare::create_revision("x", NotEqual, 2), false),
        (Compare::mod_revision("x", Equal, 4), true),
        (Compare::mod_revision("x", Greater, 3), true),
        (Compare::mod_revision("x", Less, 4), false),
        (Compare::mod_revision("x", NotEqual, 4), false),
        (Compare::value("x", Equal, "m"), true),
        (Compare::value("x", Equal, "n"), false),
        (Compare::value("x", Greater, "a"), true),
        (Compare::value("x", Greater, "mm"), false),
        (Compare::value("x", Less, "n"), true),
        (Compare::value("x", Less, "m"), false),
        (Compare::value("x", NotEqual, "n"), true),
        (Compare::value("x", NotEqual, "m"), false),
        (Compare::lease("l", Equal, lease), true),
        (Compare::lease("l", NotEqual, lease), false),
        (Compare::lease("l", Greater, 0), true),
        (Compare::lease("x", Equal, 0), true),
        (Compare::lease("x", Less, lease), true),
        // A missing key compares as version 0, create 0, mod 0, lease 0 ...
        (Compare::version("missing", Equal, 0), true),
        (Compare::create_revision("missing", Equal, 0), true),
        (Compare::mod_revision("missing", Less, 1), true),
        (Compare::lease("missing", Equal, 0), true),
        // ... but any VALUE compare on a missing key fails, even "" and !=.
        (Compare::value("missing", Equal, ""), false),
        (Compare::value("missing", NotEqual, "x"), false),
        (Compare::value("missing", Less, "z"), false),
    ];
    for (cmp, want) in cases {
        let dbg = format!("{cmp:?}");
        assert_eq!(cmp_holds(&mut c, cmp).await, want, "{dbg}");
    }
}

#[tokio::test]
async fn txn_compare_over_a_range() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    put(&mut c, "r/1", "a").await; // 2
    put(&mut c, "r/2", "b").await; // 3
    put(&mut c, "r/2", "b").await; // 4
    put(&mut c, "s", "z").await; // 5
    use CompareOp::*;
    let cases: Vec<(Compare, bool)> = vec![
        // Every key in [r/, r0) must satisfy the compare.
        (Compare::version("r/", Greater, 0).with_prefix(), true),
        (Compare::version("r/", Equal, 1).with_prefix(), false),
        (Compare::version("r/", Less, 3).with_prefix(), true),
        (Compare::mod_revision("r/", Less, 5).with_prefix(), true),
        (Compare::mod_revision("r/", Less, 4).with_prefix(), false),
        (
            Compare::create_revision("r/1", Equal, 2).with_range("r/2"),
            true,
        ),
        (Compare::value("r/", Less, "c").with_prefix(), true),
        (Compare::value("r/", Equal, "a").with_prefix(), false),
        (Compare::version("r/", Greater, 0).with_range("t"), true),
        // An empty range compares like one missing key: version/create/mod
        // 0, and any VALUE compare fails.
        (Compare::version("q/", Equal, 7).with_prefix(), false),
        (Compare::version("q/", Equal, 0).with_prefix(), true),
        (Compare::mod_revision("q/", Less, 1).with_prefix(), true),
        (Compare::value("q/", Equal, "").with_prefix(), false),
        (Compare::value("q/", NotEqual, "x").with_prefix(), false),
    ];
    for (cmp, want) in cases {
        let dbg = format!("{cmp:?}");
        assert_eq!(cmp_holds(&mut c, cmp).await, want, "{dbg}");
    }
}

#[tokio::test]
async fn txn_branches_responses_and_one_revision() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    put(&mut c, "a", "1").await; // 2
    put(&mut c, "gone", "x").await; // 3
    let txn = || {
        Txn::new()
            .when([Compare::value("a", CompareOp::Equal, "1")])
            .and_then([
                TxnOp::put("b", "2", Some(PutOptions::new().with_prev_key())),
                TxnOp::put("c", "3", None),
                TxnOp::delete("gone", Some(DeleteOptions::new().with_prev_key())),
                TxnOp::get("b", None),
            ])
            .or_else([TxnOp::put("failed", "yes", None), TxnOp::get("a", None)])
    };
    let r = c.txn(txn()).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(
        r.header().unwrap().revision(),
        4,
        "one revision for the whole txn"
    );
    let ops = r.op_responses();
    assert_eq!(ops.len(), 4);
    match &ops[0] {
        TxnOpResponse::Put(p) => {
            assert!(p.prev_key().is_none());
            assert_eq!(p.header().unwrap().revision(), 4);
        }
        o => panic!("expected put, got {o:?}"),
    }
    assert!(matches!(&ops[1], TxnOpResponse::Put(_)));
    match &ops[2] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(kv_tuple(&d.prev_kvs()[0]), t("gone", "x", 3, 3, 1));
        }
        o => panic!("expected delete, got {o:?}"),
    }
    match &ops[3] {
        // A read after a write in the same txn sees the write.
        TxnOpResponse::Get(g) => assert_eq!(kv_tuple(&g.kvs()[0]), t("b", "2", 4, 4, 1)),
        o => panic!("expected get, got {o:?}"),
    }
    let g = c.get("c", None).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("c", "3", 4, 4, 1));
    assert!(c.get("gone", None).await.unwrap().kvs().is_empty());

    // Now the compare fails: failure branch.
    put(&mut c, "a", "2").await; // 5
    let r = c.txn(txn()).await.unwrap();
    assert!(!r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 6);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 2);
    match &ops[1] {
        TxnOpResponse::Get(g) => assert_eq!(kv_tuple(&g.kvs()[0]), t("a", "2", 2, 5, 2)),
        o => panic!("expected get, got {o:?}"),
    }
    let g = c.get("failed", None).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("failed", "yes", 6, 6, 1));
    assert_eq!(c.get("b", None).await.unwrap().kvs()[0].mod_revision(), 4);

    // Empty txn: succeeds, no revision.
    let r = c.txn(Txn::new()).await.unwrap();
    assert!(r.succeeded());
    assert!(r.op_responses().is_empty());
    assert_eq!(r.header().unwrap().revision(), 6);
}

#[tokio::test]
async fn txn_several_writes_to_different_keys_share_the_revision_with_sub_order() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let r = c
        .txn(Txn::new().and_then([
            TxnOp::put("p", "1", None),
            TxnOp::put("q", "1", None),
            TxnOp::delete("zzz", None),
        ]))
        .await
        .unwrap();
    assert_eq!(r.header().unwrap().revision(), 2);
    let g = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(
        g.kvs().iter().map(kv_tuple).collect::<Vec<_>>(),
        [t("p", "1", 2, 2, 1), t("q", "1", 2, 2, 1)]
    );
}

#[tokio::test]
async fn txn_nested() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    put(&mut c, "n", "0").await; // 2
    let inner = Txn::new()
        .when([Compare::version("n", CompareOp::Equal, 5)])
        .and_then([TxnOp::put("inner", "then", None)])
        .or_else([TxnOp::put("inner", "else", None), TxnOp::get("n", None)]);
    let r = c
        .txn(
            Txn::new()
                .when([Compare::version("n", CompareOp::Equal, 1)])
                .and_then([TxnOp::put("outer", "1", None), TxnOp::txn(inner)]),
        )
        .await
        .unwrap();
    assert!(r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 3);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 2);
    match &ops[1] {
        TxnOpResponse::Txn(t2) => {
            assert!(!t2.succeeded());
            assert_eq!(t2.op_responses().len(), 2);
            match &t2.op_responses()[1] {
                TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"0"),
                o => panic!("expected get, got {o:?}"),
            }
        }
        o => panic!("expected txn, got {o:?}"),
    }
    let g = c.get("inner", None).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("inner", "else", 3, 3, 1));
}

#[tokio::test]
async fn compact_then_old_revisions_are_gone() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    for i in 0..5 {
        put(&mut c, "k", &format!("v{i}")).await; // 2..=6
    }
    let r = c.compact(4, None).await.unwrap();
    assert_eq!(
        r.header().unwrap().revision(),
        6,
        "compaction is not a write"
    );
    assert_eq!(current_rev(&mut c).await, 6);
    let at = |r| GetOptions::new().with_revision(r);
    assert_grpc(
        c.get("k", Some(at(3))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    // The compaction revision itself is still readable.
    let g = c.get("k", Some(at(4))).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("k", "v2", 2, 4, 3));
    let g = c.get("k", Some(at(5))).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("k", "v3", 2, 5, 4));
    // The version count survives compaction.
    put(&mut c, "k", "v5").await; // 7
    let g = c.get("k", None).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("k", "v5", 2, 7, 6));
}

#[tokio::test]
async fn physical_compact_and_deleted_keys() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    put(&mut c, "d", "1").await; // 2
    c.delete("d", None).await.unwrap(); // 3
    put(&mut c, "e", "1").await; // 4
    c.compact(4, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    assert_grpc(
        c.get("d", Some(GetOptions::new().with_revision(2))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let g = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(g.kvs()), ["e"]);
    // A re-put of a key deleted before the compaction starts a new generation.
    put(&mut c, "d", "2").await; // 5
    let g = c.get("d", None).await.unwrap();
    assert_eq!(kv_tuple(&g.kvs()[0]), t("d", "2", 5, 5, 1));
    // Compaction survives restart is not asserted here (durability.rs does).
}

/// `oxcd::channel::Direct` (the peer transport's and the load generator's
/// channel) against a real server: calls on one connection, `Unavailable`
/// while nothing listens, and a new connection once the server is back.
#[tokio::test]
async fn direct_channel_reconnects_after_the_server_restarts() {
    use oxcd::channel::Direct;
    use oxcd::proto::etcdserverpb::kv_client::KvClient;
    use oxcd::proto::etcdserverpb::{PutRequest, RangeRequest};
    use std::time::Duration;

    let mut srv = TestServer::start().await;
    let direct = Direct::lazy(&srv.endpoint(), Duration::from_secs(2), None).unwrap();
    let mut kv = KvClient::new(direct.clone());
    let put = |k: &str| PutRequest {
        key: k.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let get = |k: &str| RangeRequest {
        key: k.as_bytes().to_vec(),
        ..Default::default()
    };
    let rev = kv.put(put("before")).await.unwrap().into_inner();
    let rev = rev.header.unwrap().revision;
    // Concurrent calls through clones all complete.
    let calls = (0..20).map(|_| {
        let mut kv = KvClient::new(direct.clone());
        async move { kv.range(get("before")).await }
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap().into_inner().kvs[0].mod_revision, rev);
    }

    srv.kill9();
    let err = kv.range(get("before")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    srv.restart().await;
    // The first call after the restart may still meet the dead connection.
    let mut answer = kv.range(get("before")).await;
    if answer.is_err() {
        answer = kv.range(get("before")).await;
    }
    let kvs = answer.unwrap().into_inner().kvs;
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].mod_revision, rev);
}
