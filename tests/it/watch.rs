//! The Watch service through the `etcd-client` crate and `etcdctl watch`:
//! created/canceled responses, history replay, prefixes and ranges, filters,
//! prev_kv, progress (requested and periodic), compaction, client-chosen
//! ids, slow consumers, and a randomised history check — each checked
//! against etcd 3.5 first (`OXCD_TEST_TARGET=etcd`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, CompactionOptions, EventType, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions,
    WatchResponse, WatchStream,
};

use crate::kv::put;
use crate::support::{current_rev, etcdctl_bin, StartOptions, TestServer};

const WAIT: Duration = Duration::from_secs(10);

async fn next(s: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("a watch response within 10 s")
        .expect("watch stream error")
        .expect("watch stream ended")
}

/// No response within `d`.
async fn quiet(s: &mut WatchStream, d: Duration) {
    if let Ok(r) = tokio::time::timeout(d, s.message()).await {
        panic!("unexpected response {r:?}");
    }
}

/// (type, key, value, create_revision, mod_revision, version, prev value)
type Ev = (&'static str, String, String, i64, i64, i64, Option<String>);

fn evs(r: &WatchResponse) -> Vec<Ev> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (
                match e.event_type() {
                    EventType::Put => "PUT",
                    EventType::Delete => "DELETE",
                },
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                e.prev_kv()
                    .map(|p| String::from_utf8_lossy(p.value()).into_owned()),
            )
        })
        .collect()
}

fn ev(t: &'static str, k: &str, v: &str, c: i64, m: i64, ver: i64, prev: Option<&str>) -> Ev {
    (t, k.into(), v.into(), c, m, ver, prev.map(String::from))
}

/// Events of the next responses until `n` events were collected.
async fn collect(s: &mut WatchStream, n: usize) -> Vec<Ev> {
    let mut out = vec![];
    while out.len() < n {
        let r = next(s).await;
        assert!(!r.canceled(), "canceled: {r:?}");
        out.extend(evs(&r));
    }
    out
}

#[tokio::test]
async fn created_then_live_events_with_etcd_headers() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let r0 = put(&mut c, "other", "x").await;
    let (w, mut s) = c.watch("k", None).await.unwrap();
    assert_eq!(w.watch_id(), 0, "the first watch id of a stream is 0");
    let r1 = put(&mut c, "k", "v1").await;
    let r = next(&mut s).await;
    assert_eq!(r.watch_id(), 0);
    assert!(!r.created() && !r.canceled());
    // A live event's header carries the event's revision.
    assert_eq!(r.header().unwrap().revision(), r1);
    assert_eq!(evs(&r), [ev("PUT", "k", "v1", r1, r1, 1, None)]);
    // Another key is not seen; the next write of k is.
    put(&mut c, "kk", "x").await;
    let r2 = put(&mut c, "k", "v2").await;
    assert_eq!(
        evs(&next(&mut s).await),
        [ev("PUT", "k", "v2", r1, r2, 2, None)]
    );
    let d = c
        .delete("k", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(
        evs(&next(&mut s).await),
        [ev("DELETE", "k", "", 0, d, 0, None)]
    );
    assert!(r0 < r1);
}

#[tokio::test]
async fn created_response_carries_the_current_revision() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    put(&mut c, "a", "1").await;
    let rev = put(&mut c, "a", "2").await;
    let mut wc = c.watch_client();
    let (_w, _s) = wc.watch("a", None).await.unwrap();
    // etcd-client swallows the created response; read one by hand.
    let (mut w, mut s) = wc.watch("zzz", None).await.unwrap();
    w.watch("b", None).await.unwrap();
    let r = next(&mut s).await;
    assert!(r.created());
    assert_eq!((r.watch_id(), r.header().unwrap().revision()), (1, rev));
}

#[tokio::test]
async fn history_replay_with_prev_kv() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let r1 = put(&mut c, "a", "1").await;
    let r2 = put(&mut c, "a", "2").await;
    let d = c
        .delete("a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let r3 = put(&mut c, "a", "3").await;
    let opts = WatchOptions::new().with_start_revision(r1).with_prev_key();
    let (_w, mut s) = c.watch("a", Some(opts)).await.unwrap();
    let got = collect(&mut s, 4).await;
    assert_eq!(
        got,
        [
            // A create carries no prev_kv and has create == mod revision.
            ev("PUT", "a", "1", r1, r1, 1, None),
            ev("PUT", "a", "2", r1, r2, 2, Some("1")),
            ev("DELETE", "a", "", 0, d, 0, Some("2")),
            ev("PUT", "a", "3", r3, r3, 1, None),
        ]
    );
    // Then live, still with prev_kv.
    let r4 = put(&mut c, "a", "4").await;
    assert_eq!(
        evs(&next(&mut s).await),
        [ev("PUT", "a", "4", r3, r4, 2, Some("3"))]
    );
}

#[tokio::test]
async fn catch_up_response_header_is_the_current_revision() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let r1 = put(&mut c, "a", "1").await;
    let cur = put(&mut c, "b", "1").await;
    let (_w, mut s) = c
        .watch("a", Some(WatchOptions::new().with_start_revision(r1)))
        .await
        .unwrap();
    let r = next(&mut s).await;
    assert_eq!(r.header().unwrap().revision(), cur);
    assert_eq!(evs(&r), [ev("PUT", "a", "1", r1, r1, 1, None)]);
}

#[tokio::test]
async fn prefix_range_and_from_key() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let (_w1, mut prefix) = c
        .watch("p/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let (_w2, mut range) = c
        .watch("b", Some(WatchOptions::new().with_range("d")))
        .await
        .unwrap();
    let (_w3, mut from) = c
        .watch("c", Some(WatchOptions::new().with_from_key()))
        .await
        .unwrap();
    let (_w4, mut all) = c
        .watch("", Some(WatchOptions::new().with_all_keys()))
        .await
        .unwrap();
    for k in ["a", "b", "c", "d", "p", "p/", "p/x", "q", "\u{7f}"] {
        put(&mut c, k, "v").await;
    }
    let keys = |e: Vec<Ev>| e.into_iter().map(|e| e.1).collect::<Vec<_>>();
    assert_eq!(keys(collect(&mut prefix, 2).await), ["p/", "p/x"]);
    assert_eq!(keys(collect(&mut range, 2).await), ["b", "c"]);
    assert_eq!(
        keys(collect(&mut from, 6).await),
        ["c", "d", "p", "p/", "p/x", "q"]
    );
    assert_eq!(keys(collect(&mut all, 9).await).len(), 9);
    for s in [&mut prefix, &mut range] {
        quiet(s, Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn one_txn_is_one_response() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    put(&mut c, "t/b", "0").await;
    let (_w, mut s) = c
        .watch(
            "t/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    let txn = Txn::new().and_then([
        TxnOp::put("t/a", "1", None),
        TxnOp::delete("t/b", None),
        TxnOp::put("t/c", "1", None),
    ]);
    let rev = c.txn(txn).await.unwrap().header().unwrap().revision();
    let r = next(&mut s).await;
    assert_eq!(r.header().unwrap().revision(), rev);
    assert_eq!(
        evs(&r),
        [
            ev("PUT", "t/a", "1", rev, rev, 1, None),
            ev("DELETE", "t/b", "", 0, rev, 0, Some("0")),
            ev("PUT", "t/c", "1", rev, rev, 1, None),
        ]
    );
}

#[tokio::test]
async fn filters_noput_and_nodelete() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let (_w1, mut no_put) = c
        .watch(
            "f",
            Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])),
        )
        .await
        .unwrap();
    let (_w2, mut no_del) = c
        .watch(
            "f",
            Some(WatchOptions::new().with_filters([WatchFilterType::NoDelete])),
        )
        .await
        .unwrap();
    let p = put(&mut c, "f", "1").await;
    let d = c
        .delete("f", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(
        evs(&next(&mut no_put).await),
        [ev("DELETE", "f", "", 0, d, 0, None)]
    );
    assert_eq!(
        evs(&next(&mut no_del).await),
        [ev("PUT", "f", "1", p, p, 1, None)]
    );
    quiet(&mut no_put, Duration::from_millis(300)).await;
    quiet(&mut no_del, Duration::from_millis(300)).await;
}

/// Several watchers on one stream: ids 0, 1, …; a client-chosen id; a
/// duplicate id is refused with etcd's reason; cancel gets `canceled`.
#[tokio::test]
async fn many_watchers_on_one_stream_ids_and_cancel() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let mut wc = c.watch_client();
    let (mut w, mut s) = wc.watch("x", None).await.unwrap();
    assert_eq!(w.watch_id(), 0);
    w.watch("y", None).await.unwrap();
    let r = next(&mut s).await;
    assert!(r.created() && !r.canceled());
    assert_eq!(r.watch_id(), 1);
    w.watch("z", Some(WatchOptions::new().with_watch_id(100)))
        .await
        .unwrap();
    let r = next(&mut s).await;
    assert_eq!((r.created(), r.watch_id()), (true, 100));
    w.watch("z", Some(WatchOptions::new().with_watch_id(100)))
        .await
        .unwrap();
    let r = next(&mut s).await;
    assert!(r.created() && r.canceled(), "{r:?}");
    assert_eq!(r.watch_id(), -1);
    assert_eq!(
        r.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    // An empty range is refused too.
    w.watch("b", Some(WatchOptions::new().with_range("a")))
        .await
        .unwrap();
    let r = next(&mut s).await;
    assert!(r.created() && r.canceled());
    assert_eq!(r.cancel_reason(), "mvcc: watcher range is empty");

    let ry = put(&mut c, "y", "1").await;
    let r = next(&mut s).await;
    assert_eq!((r.watch_id(), evs(&r)[0].4), (1, ry));
    let rz = put(&mut c, "z", "1").await;
    let r = next(&mut s).await;
    assert_eq!((r.watch_id(), evs(&r)[0].4), (100, rz));

    w.cancel_by_id(1).await.unwrap();
    let r = next(&mut s).await;
    assert!(r.canceled() && !r.created());
    assert_eq!(r.watch_id(), 1);
    assert_eq!(r.header().unwrap().revision(), rz);
    // Cancelling an unknown id answers nothing.
    w.cancel_by_id(77).await.unwrap();
    put(&mut c, "y", "2").await;
    let rx = put(&mut c, "x", "2").await;
    let r = next(&mut s).await;
    assert_eq!((r.watch_id(), evs(&r)[0].4), (0, rx));
}

/// kube-apiserver's pattern: a prefix with prev_kv from revision R, writes,
/// then RequestProgress → one response with watch id -1 and a revision at
/// least the last write, after every event up to it.
#[tokio::test]
async fn kube_apiserver_progress_request() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let r = put(&mut c, "/registry/pods/a", "1").await;
    let opts = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(r + 1)
        .with_progress_notify();
    let (mut w, mut s) = c.watch("/registry/pods/", Some(opts)).await.unwrap();
    let mut last = 0;
    for i in 0..20 {
        last = put(&mut c, "/registry/pods/a", &i.to_string()).await;
    }
    w.request_progress().await.unwrap();
    let mut seen = 0;
    loop {
        let r = next(&mut s).await;
        if r.events().is_empty() {
            assert_eq!(r.watch_id(), -1, "{r:?}");
            assert!(r.header().unwrap().revision() >= last);
            assert_eq!(seen, 20, "progress before all events");
            break;
        }
        for e in evs(&r) {
            assert!(e.6.is_some(), "an update without prev_kv: {e:?}");
            seen += 1;
        }
    }
    // Exactly one reply.
    quiet(&mut s, Duration::from_millis(500)).await;
}

/// A RequestProgress on a stream with no events at all.
#[tokio::test]
async fn progress_request_on_an_idle_watch() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let rev = put(&mut c, "x", "1").await;
    let (mut w, mut s) = c.watch("idle", None).await.unwrap();
    w.request_progress().await.unwrap();
    let r = next(&mut s).await;
    assert_eq!(r.watch_id(), -1);
    assert!(r.events().is_empty() && !r.created() && !r.canceled());
    assert_eq!(r.header().unwrap().revision(), rev);
}

/// Watching from below the compacted revision: `created`, then a response
/// with compact_revision set and canceled.
#[tokio::test]
async fn compacted_start_revision() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let old = put(&mut c, "c", "1").await;
    put(&mut c, "c", "2").await;
    let cr = put(&mut c, "c", "3").await;
    c.compact(cr, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let (w, mut s) = c
        .watch("c", Some(WatchOptions::new().with_start_revision(old)))
        .await
        .unwrap();
    let r = next(&mut s).await;
    assert_eq!(r.watch_id(), w.watch_id());
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), cr);
    assert!(r.events().is_empty());
    assert_eq!(r.header().unwrap().revision(), 0, "etcd leaves it at 0");
    // From the compact revision itself: allowed.
    let (_w, mut s) = c
        .watch("c", Some(WatchOptions::new().with_start_revision(cr)))
        .await
        .unwrap();
    assert_eq!(evs(&next(&mut s).await)[0].4, cr);
}

/// A start revision in the future: nothing until the store gets there.
#[tokio::test]
async fn future_start_revision_waits() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let cur = current_rev(&mut c).await;
    let (_w, mut s) = c
        .watch("f", Some(WatchOptions::new().with_start_revision(cur + 3)))
        .await
        .unwrap();
    put(&mut c, "f", "1").await;
    put(&mut c, "f", "2").await;
    let r3 = put(&mut c, "f", "3").await;
    let r = next(&mut s).await;
    assert_eq!(evs(&r), [ev("PUT", "f", "3", cur + 1, r3, 3, None)]);
}

#[tokio::test]
async fn periodic_progress_notify() {
    let srv = TestServer::start_with(StartOptions {
        args: vec!["--experimental-watch-progress-notify-interval=1s".into()],
        ..Default::default()
    })
    .await;
    let mut c = srv.client().await;
    let rev = put(&mut c, "p", "1").await;
    let (w, mut s) = c
        .watch("p", Some(WatchOptions::new().with_progress_notify()))
        .await
        .unwrap();
    let (_w2, mut plain) = c.watch("p", None).await.unwrap();
    let t = Instant::now();
    let r = next(&mut s).await;
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert!(r.events().is_empty());
    assert_eq!(r.watch_id(), w.watch_id());
    assert_eq!(r.header().unwrap().revision(), rev);
    // Without progress_notify: nothing.
    quiet(&mut plain, Duration::from_millis(1500)).await;
}

/// A consumer that does not read while thousands of writes land: the writes
/// are not slowed down by it, and it then gets every event once, in order.
#[tokio::test]
async fn slow_consumer_loses_nothing() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let start = current_rev(&mut c).await + 1;
    let (_w, mut s) = c
        .watch(
            "s/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    let value = "v".repeat(1024);
    let n = 3000;
    let mut handles = vec![];
    for t in 0..4 {
        let mut c = c.clone();
        let value = value.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..n / 4 {
                c.put(format!("s/{t}/{}", i % 10), value.as_str(), None)
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let got = collect(&mut s, n).await;
    let revs: Vec<i64> = got.iter().map(|e| e.4).collect();
    let want: Vec<i64> = (start..start + n as i64).collect();
    assert_eq!(revs, want);
    assert!(got.iter().all(|e| e.3 == e.4 || e.6.is_some()));
}

/// The stream of a `hasleader` client works while there is a leader.
#[tokio::test]
async fn require_leader_stream_serves_with_a_leader() {
    let srv = TestServer::start().await;
    let opts = etcd_client::ConnectOptions::new().with_require_leader(true);
    let mut c = Client::connect([srv.endpoint()], Some(opts)).await.unwrap();
    let (_w, mut s) = c.watch("l", None).await.unwrap();
    let r = put(&mut c, "l", "1").await;
    assert_eq!(evs(&next(&mut s).await)[0].4, r);
}

/// Random writes, deletes and txns with watchers from random past
/// revisions on random prefixes: each sees exactly the history.
#[tokio::test]
async fn random_history_end_to_end() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    let mut rnd = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let keys = ["r/a", "r/ab", "r/b", "r/ba", "r/c"];
    let first = current_rev(&mut c).await + 1;
    // history: (rev, key, is_delete)
    let mut history: Vec<(i64, String, bool)> = vec![];
    let mut values: HashMap<String, bool> = HashMap::new();
    let mut watchers = vec![];
    for step in 0..300 {
        if step % 40 == 10 {
            let cur = current_rev(&mut c).await;
            let from = first + rnd((cur - first + 1) as u64) as i64;
            let prefix = ["r/", "r/a", "r/b"][rnd(3) as usize];
            let (w, s) = c
                .watch(
                    prefix,
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_prev_key()
                            .with_start_revision(from),
                    ),
                )
                .await
                .unwrap();
            watchers.push((w, s, prefix, from));
        }
        let k = keys[rnd(keys.len() as u64) as usize];
        match rnd(4) {
            0 | 1 => {
                let r = put(&mut c, k, &step.to_string()).await;
                history.push((r, k.into(), false));
                values.insert(k.into(), true);
            }
            2 => {
                let d = c.delete(k, None).await.unwrap();
                if d.deleted() > 0 {
                    history.push((d.header().unwrap().revision(), k.into(), true));
                    values.insert(k.into(), false);
                }
            }
            _ => {
                let k2 = keys[rnd(keys.len() as u64) as usize];
                let ops = if k2 == k {
                    vec![TxnOp::put(k, "t", Some(PutOptions::new()))]
                } else {
                    vec![TxnOp::put(k, "t", None), TxnOp::delete(k2, None)]
                };
                let r = c.txn(Txn::new().and_then(ops)).await.unwrap();
                let rev = r.header().unwrap().revision();
                history.push((rev, k.into(), false));
                values.insert(k.into(), true);
                if k2 != k && values.get(k2) == Some(&true) {
                    history.push((rev, k2.into(), true));
                    values.insert(k2.into(), false);
                }
            }
        }
    }
    for (_w, s, prefix, from) in &mut watchers {
        let want: Vec<(i64, String, bool)> = history
            .iter()
            .filter(|(r, k, _)| *r >= *from && k.starts_with(*prefix))
            .cloned()
            .collect();
        let got = collect(s, want.len()).await;
        let got: Vec<(i64, String, bool)> = got
            .into_iter()
            .map(|e| (e.4, e.1, e.0 == "DELETE"))
            .collect();
        assert_eq!(got, want, "watcher on {prefix} from {from}");
        quiet(s, Duration::from_millis(200)).await;
    }
}

/// Runs `etcdctl watch ARGS` until it printed `lines` lines, then kills it.
fn etcdctl_watch(
    srv: &TestServer,
    args: &[&str],
    lines: usize,
    during: impl FnOnce(),
) -> Vec<String> {
    let mut child = Command::new(etcdctl_bin())
        .arg(format!("--endpoints={}", srv.endpoint()))
        .arg("watch")
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcdctl watch");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    // Give the watch time to be created before the writes.
    std::thread::sleep(Duration::from_millis(500));
    during();
    let mut out = vec![];
    let deadline = Instant::now() + WAIT;
    while out.len() < lines {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => out.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    out
}

#[tokio::test]
async fn etcdctl_watch_key_prefix_rev_prev_kv() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let r1 = put(&mut c, "w/a", "1").await;
    put(&mut c, "w/a", "2").await;
    put(&mut c, "w/b", "1").await;

    // --rev: history of one key.
    let out = etcdctl_watch(&srv, &["w/a", &format!("--rev={r1}")], 6, || {});
    assert_eq!(out, ["PUT", "w/a", "1", "PUT", "w/a", "2"]);

    // --prefix --prev-kv: live events with the previous value first.
    let ep = srv.endpoint();
    let out = etcdctl_watch(&srv, &["--prefix", "w/", "--prev-kv"], 8, move || {
        let ctl = |args: &[&str]| {
            let st = Command::new(etcdctl_bin())
                .arg(format!("--endpoints={ep}"))
                .args(args)
                .env("ETCDCTL_API", "3")
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
        };
        ctl(&["put", "w/b", "2"]);
        ctl(&["del", "w/a"]);
    });
    assert_eq!(out, ["PUT", "w/b", "1", "w/b", "2", "DELETE", "w/a", "2"]);

    // A single key, live.
    let ep = srv.endpoint();
    let out = etcdctl_watch(&srv, &["w/c"], 3, move || {
        let st = Command::new(etcdctl_bin())
            .arg(format!("--endpoints={ep}"))
            .args(["put", "w/c", "x"])
            .env("ETCDCTL_API", "3")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    });
    assert_eq!(out, ["PUT", "w/c", "x"]);
}
