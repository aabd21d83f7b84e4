//! The Lease service end to end: grant / revoke / keepalive / TimeToLive /
//! Leases, keys attached by put, expiry driven by the server, etcdctl's
//! lease commands, and leases across a restart.
//!
//! One member here; the failover cases (a keepalive through a follower
//! surviving a leader kill; an unrefreshed lease expiring once after the
//! leader is killed) are in `cluster.rs`.
//!
//! Expiry is observed by polling Range (every 20 ms), and by a watcher in
//! `kube_pattern_watch_sees_each_delete_with_prev_kv`.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions,
};
use tonic::Code;

use crate::support::{assert_grpc, current_rev, ok_stdout, TestServer};

const NOT_FOUND: &str = "etcdserver: requested lease not found";

async fn count(c: &mut Client, prefix: &str) -> i64 {
    c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await
    .unwrap()
    .count()
}

/// Polls until no key under `prefix` is left; returns when it saw that.
async fn wait_gone(c: &mut Client, prefix: &str, limit: Duration) -> Instant {
    let start = Instant::now();
    while start.elapsed() < limit {
        if count(c, prefix).await == 0 {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("keys under {prefix:?} still there after {limit:?}");
}

async fn ttl_of(c: &mut Client, id: i64) -> (i64, i64, Vec<String>) {
    let r = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    let keys = r
        .keys()
        .iter()
        .map(|k| String::from_utf8(k.clone()).unwrap())
        .collect();
    (r.ttl(), r.granted_ttl(), keys)
}

#[tokio::test]
async fn grant_time_to_live_leases_and_revoke() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    // Below the minimum TTL (2 s with etcd's default timing): raised.
    let g = c.lease_grant(1, None).await.unwrap();
    assert!(g.id() > 0);
    assert_eq!(g.ttl(), 2);
    // An explicit id is kept; a second grant of it is refused.
    let g2 = c
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap();
    assert_eq!((g2.id(), g2.ttl()), (0x1234, 60));
    assert_grpc(
        c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x1234)))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    assert_grpc(
        c.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    // The largest TTL is fine.
    let big = c.lease_grant(9_000_000_000, None).await.unwrap();
    assert_eq!(big.ttl(), 9_000_000_000);
    // Grants are not revisions.
    assert_eq!(current_rev(&mut c).await, 1);

    let (ttl, granted, keys) = ttl_of(&mut c, 0x1234).await;
    assert!((58..=60).contains(&ttl), "{ttl}");
    assert_eq!((granted, keys.len()), (60, 0));
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    let mut want = vec![g.id(), 0x1234, big.id()];
    want.sort();
    assert_eq!(ids, want);

    // Unknown leases: TTL -1 from TimeToLive, NotFound from revoke.
    let r = c.lease_time_to_live(0x999, None).await.unwrap();
    assert_eq!((r.id(), r.ttl(), r.granted_ttl()), (0x999, -1, 0));
    assert_grpc(c.lease_revoke(0x999).await, Code::NotFound, NOT_FOUND);

    let r = c.lease_revoke(0x1234).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 1);
    assert_eq!(ttl_of(&mut c, 0x1234).await.0, -1);
    assert_grpc(c.lease_revoke(0x1234).await, Code::NotFound, NOT_FOUND);
    assert_eq!(c.leases().await.unwrap().leases().len(), 2);
}

/// One raw keepalive stream (etcd-client hides TTL 0 behind an error):
/// an unknown lease is answered with TTL 0 and the stream stays usable.
#[tokio::test]
async fn keepalive_of_an_unknown_lease_answers_ttl_0() {
    use oxcd::proto::etcdserverpb::{lease_client::LeaseClient, LeaseKeepAliveRequest};
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let id = c.lease_grant(5, None).await.unwrap().id();
    let mut raw = LeaseClient::connect(srv.endpoint()).await.unwrap();
    let reqs = [0x777, id, 0x777, id].map(|id| LeaseKeepAliveRequest { id });
    let mut stream = raw
        .lease_keep_alive(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        assert!(r.header.is_some());
        got.push((r.id, r.ttl));
    }
    assert_eq!(got, [(0x777, 0), (id, 5), (0x777, 0), (id, 5)]);
    // etcd-client's keeper reports the unknown lease as an error.
    assert!(c.lease_keep_alive(0x777).await.is_err());
}

#[tokio::test]
async fn expired_lease_deletes_its_keys_within_ttl_plus_1s_in_one_revision() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let sent = Instant::now();
    let id = c.lease_grant(2, None).await.unwrap().id();
    let granted = Instant::now();
    for k in ["exp/a", "exp/b", "exp/c"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
    }
    c.put("plain", "v", None).await.unwrap();
    let before = current_rev(&mut c).await; // 5
    let gone = wait_gone(&mut c, "exp/", Duration::from_secs(10)).await;
    // Never before its TTL; at most one second after it.
    assert!(gone >= sent + Duration::from_secs(2), "expired early");
    let late = gone.saturating_duration_since(granted + Duration::from_secs(2));
    eprintln!("lease expiry precision: deleted {late:?} after the deadline");
    assert!(late <= Duration::from_secs(1), "expired {late:?} late");
    // One revision for all three deletes; the unleased key stays.
    assert_eq!(current_rev(&mut c).await, before + 1);
    let at_before = c
        .get(
            "exp/",
            Some(GetOptions::new().with_prefix().with_revision(before)),
        )
        .await
        .unwrap();
    assert_eq!(at_before.count(), 3);
    assert_eq!(count(&mut c, "plain").await, 1);
    assert_eq!(ttl_of(&mut c, id).await.0, -1);
    // A put naming the expired lease is refused.
    assert_grpc(
        c.put("exp/a", "v", Some(PutOptions::new().with_lease(id)))
            .await,
        Code::NotFound,
        NOT_FOUND,
    );
}

#[tokio::test]
async fn keepalives_keep_keys_past_several_ttls() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let id = c.lease_grant(2, None).await.unwrap().id();
    c.put("ka/k", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    let (mut keeper, mut stream) = c.lease_keep_alive(id).await.unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(7) {
        keeper.keep_alive().await.unwrap();
        let r = stream.message().await.unwrap().unwrap();
        assert_eq!((r.id(), r.ttl()), (id, 2));
        assert_eq!(count(&mut c, "ka/").await, 1, "expired despite keepalives");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ttl, granted, keys) = ttl_of(&mut c, id).await;
    assert!((1..=2).contains(&ttl), "{ttl}");
    assert_eq!((granted, keys), (2, vec!["ka/k".to_string()]));
    // Keepalives stop: the key goes within TTL + 1 s.
    let stopped = Instant::now();
    drop(keeper);
    drop(stream);
    let gone = wait_gone(&mut c, "ka/", Duration::from_secs(10)).await;
    assert!(
        gone - stopped <= Duration::from_secs(3),
        "{:?}",
        gone - stopped
    );
}

#[tokio::test]
async fn revoke_deletes_every_attached_key_in_one_revision() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let id = c.lease_grant(60, None).await.unwrap().id();
    let other = c.lease_grant(60, None).await.unwrap().id();
    for i in 0..5 {
        c.put(
            format!("r/{i}"),
            "v",
            Some(PutOptions::new().with_lease(id)),
        )
        .await
        .unwrap(); // 2..=6
    }
    // Re-put without a lease: detached. Re-put with another lease: moved.
    // Deleted and re-created without a lease: detached.
    c.put("r/0", "plain", None).await.unwrap(); // 7
    c.put("r/1", "v", Some(PutOptions::new().with_lease(other)))
        .await
        .unwrap(); // 8
    c.delete("r/2", None).await.unwrap(); // 9
    c.put("r/2", "again", None).await.unwrap(); // 10
    let (_, _, keys) = ttl_of(&mut c, id).await;
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&"r/3".to_string()) && keys.contains(&"r/4".to_string()));
    let r = c.lease_revoke(id).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 11);
    assert_eq!(current_rev(&mut c).await, 11);
    let left: Vec<String> = c
        .get("r/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ["r/0", "r/1", "r/2"]);
    assert_eq!(ttl_of(&mut c, other).await.2, ["r/1"]);
    // A revoke of a lease without keys writes no revision.
    let empty = c.lease_grant(60, None).await.unwrap().id();
    assert_eq!(
        c.lease_revoke(empty)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision(),
        11
    );
}

/// kube-apiserver's pattern: one lease (no keepalive, no revoke) shared
/// by many keys; TimeToLive lists them; expiry deletes all at once.
#[tokio::test]
async fn kube_apiserver_pattern_one_lease_many_keys() {
    const N: usize = 1000;
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let granted = Instant::now();
    let id = c.lease_grant(15, None).await.unwrap().id();
    put_many(&srv, id, N).await;
    let before = current_rev(&mut c).await;
    assert_eq!(before, 1 + N as i64);
    let (_, granted_ttl, keys) = ttl_of(&mut c, id).await;
    assert_eq!((granted_ttl, keys.len()), (15, N));
    assert!(granted.elapsed() < Duration::from_secs(14), "puts too slow");
    let gone = wait_gone(&mut c, "/registry/events/", Duration::from_secs(30)).await;
    assert!(
        gone - granted <= Duration::from_secs(16),
        "{:?}",
        gone - granted
    );
    assert_eq!(current_rev(&mut c).await, before + 1, "not one revision");
    // History at the revision before still holds every key.
    let old = c
        .get(
            "/registry/events/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_revision(before),
            ),
        )
        .await
        .unwrap();
    assert_eq!(old.count(), N as i64);
}

async fn put_many(srv: &TestServer, lease: i64, n: usize) {
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut c = srv.client().await;
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                c.put(
                    format!("/registry/events/default/e{i:04}"),
                    format!("event {i}"),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The watch half of kube-apiserver's pattern: a watcher with prev_kv sees
/// every expiry DELETE, all at one revision, each with its previous value.
#[tokio::test]
async fn kube_pattern_watch_sees_each_delete_with_prev_kv() {
    const N: usize = 200;
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let id = c.lease_grant(5, None).await.unwrap().id();
    put_many(&srv, id, N).await;
    let before = current_rev(&mut c).await;
    let (_w, mut events) = c
        .watch(
            "/registry/events/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < N {
        let left = deadline.saturating_duration_since(Instant::now());
        let resp = tokio::time::timeout(left, events.message())
            .await
            .expect("deletes did not arrive")
            .unwrap()
            .unwrap();
        for ev in resp.events() {
            assert_eq!(ev.event_type(), EventType::Delete);
            let kv = ev.kv().unwrap();
            assert_eq!(kv.mod_revision(), before + 1);
            let prev = ev.prev_kv().expect("prev_kv");
            let i = kv
                .key_str()
                .unwrap()
                .rsplit('e')
                .next()
                .unwrap()
                .to_string();
            assert_eq!(
                prev.value_str().unwrap(),
                format!("event {}", i.parse::<usize>().unwrap())
            );
            assert_eq!(prev.lease(), id);
            seen.push(kv.key().to_vec());
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), N);
}

#[tokio::test]
async fn etcdctl_lease_commands() {
    let srv = TestServer::start().await;
    let out = ok_stdout(&srv.etcdctl(&["lease", "grant", "60"]));
    // "lease 694d7b1c2c9a0e04 granted with TTL(60s)"
    let id = out
        .strip_prefix("lease ")
        .and_then(|s| s.strip_suffix(" granted with TTL(60s)\n"))
        .unwrap_or_else(|| panic!("{out:?}"))
        .to_string();
    assert!(i64::from_str_radix(&id, 16).unwrap() > 0);
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["put", "--lease", &id, "lk", "v"])),
        "OK\n"
    );
    let out = ok_stdout(&srv.etcdctl(&["lease", "timetolive", &id, "--keys"]));
    let ok = [59, 60].iter().any(|r| {
        out == format!("lease {id} granted with TTL(60s), remaining({r}s), attached keys([lk])\n")
    });
    assert!(ok, "{out:?}");
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["lease", "keep-alive", "--once", &id])),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["lease", "list"])),
        format!("found 1 leases\n{id}\n")
    );
    let out = ok_stdout(&srv.etcdctl(&["lease", "timetolive", &id, "-w", "json"]));
    let v = crate::support::json(&out);
    assert_eq!(v["granted-ttl"], 60);
    assert!((59..=60).contains(&v["ttl"].as_i64().unwrap()), "{v}");
    assert_eq!(
        v["id"].as_i64().unwrap(),
        i64::from_str_radix(&id, 16).unwrap()
    );
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["lease", "revoke", &id])),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "lk"])), "");
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["lease", "timetolive", &id])),
        format!("lease {id} already expired\n")
    );
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["lease", "list"])),
        "found 0 leases\n"
    );
    // Errors as etcd prints them.
    let o = srv.etcdctl(&["lease", "keep-alive", "--once", &id]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(NOT_FOUND), "{err}");
    let o = srv.etcdctl(&["lease", "revoke", &id]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(NOT_FOUND), "{err}");
    let o = srv.etcdctl(&["put", "--lease", &id, "lk", "v"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(NOT_FOUND), "{err}");
}

#[tokio::test]
async fn leases_survive_a_restart() {
    let mut srv = TestServer::start().await;
    let mut c = srv.client().await;
    let long = c.lease_grant(60, None).await.unwrap().id();
    let short = c.lease_grant(2, None).await.unwrap().id();
    c.put("keep/a", "1", Some(PutOptions::new().with_lease(long)))
        .await
        .unwrap();
    c.put("keep/b", "2", Some(PutOptions::new().with_lease(long)))
        .await
        .unwrap();
    c.put("short/a", "1", Some(PutOptions::new().with_lease(short)))
        .await
        .unwrap();
    srv.restart().await;
    let restarted = Instant::now();
    let mut c = srv.client().await;
    let (ttl, granted, mut keys) = ttl_of(&mut c, long).await;
    keys.sort();
    assert!((55..=61).contains(&ttl), "{ttl}");
    assert_eq!(
        (granted, keys),
        (60, vec!["keep/a".into(), "keep/b".into()])
    );
    // The short lease still expires after the restart (TTL + one election
    // timeout at most, plus a second of slack).
    let gone = wait_gone(&mut c, "short/", Duration::from_secs(10)).await;
    assert!(
        gone - restarted <= Duration::from_secs(4),
        "{:?}",
        gone - restarted
    );
    assert_eq!(count(&mut c, "keep/").await, 2);
    // The rebuilt attachment is what a revoke deletes.
    let before = current_rev(&mut c).await;
    c.lease_revoke(long).await.unwrap();
    assert_eq!(count(&mut c, "keep/").await, 0);
    assert_eq!(current_rev(&mut c).await, before + 1);
}
