//! Acknowledged writes survive kill -9: several clients stream puts, the
//! server is SIGKILLed mid-stream, and after restart every acknowledged write
//! is there with the revision it was acknowledged at.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::GetOptions;

use crate::support::{current_rev, TestServer};

const WRITERS: usize = 4;
const PUTS_PER_WRITER: usize = 500;
/// Kill once this many puts have been acknowledged.
const KILL_AFTER: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill9() {
    let mut srv = TestServer::start().await;
    let acked: Arc<Mutex<Vec<(String, String, i64)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = srv.client().await;
        let acked = acked.clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PUTS_PER_WRITER {
                let (k, v) = (format!("dur/{w}/{i:04}"), format!("value-{w}-{i}"));
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    c.put(k.clone(), v.clone(), None),
                )
                .await
                {
                    Ok(Ok(r)) => {
                        let rev = r.header().unwrap().revision();
                        acked.lock().unwrap().push((k, v, rev));
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    // The server died under us: stop writing.
                    _ => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(Instant::now() < deadline, "writers too slow: {count:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    srv.kill9();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("writer did not stop after kill")
            .unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= KILL_AFTER);
    assert!(
        acked.len() < WRITERS * PUTS_PER_WRITER,
        "the kill came after every write: the test proved nothing"
    );
    // Distinct revisions, one per put (each put is its own revision).
    let mut revs: Vec<i64> = acked.iter().map(|a| a.2).collect();
    revs.sort();
    revs.dedup();
    assert_eq!(
        revs.len(),
        acked.len(),
        "two acknowledged puts share a revision"
    );

    srv.restart().await;
    let mut c = srv.client().await;
    let g = c
        .get("dur/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let found: std::collections::HashMap<Vec<u8>, (Vec<u8>, i64, i64, i64)> = g
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                (
                    kv.value().to_vec(),
                    kv.mod_revision(),
                    kv.create_revision(),
                    kv.version(),
                ),
            )
        })
        .collect();
    let mut lost = Vec::new();
    for (k, v, rev) in &acked {
        match found.get(k.as_bytes()) {
            Some((fv, mrev, crev, ver)) => {
                assert_eq!(fv, v.as_bytes(), "{k}");
                assert_eq!((*mrev, *crev, *ver), (*rev, *rev, 1), "{k}");
            }
            None => lost.push(k.clone()),
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // Unacknowledged writes may or may not have landed, but nothing else.
    assert!(found.len() >= acked.len());
    assert!(
        found.len() <= acked.len() + WRITERS,
        "more writes than were sent"
    );
    let max_acked = *revs.last().unwrap();
    let rev = current_rev(&mut c).await;
    assert!(rev >= max_acked);
    // Revision 1 + one per put that landed.
    assert_eq!(rev, 1 + found.len() as i64);
    // The counter continues from there.
    let r = c.put("after", "restart", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), rev + 1);
}

#[tokio::test]
async fn compaction_and_history_survive_restart() {
    let mut srv = TestServer::start().await;
    let mut c = srv.client().await;
    for i in 0..5 {
        c.put("h", format!("v{i}"), None).await.unwrap(); // 2..=6
    }
    c.delete("h", None).await.unwrap(); // 7
    c.compact(4, None).await.unwrap();
    srv.restart().await;
    let mut c = srv.client().await;
    assert_eq!(current_rev(&mut c).await, 7);
    let at = |r| GetOptions::new().with_revision(r);
    let s = crate::support::grpc_status(c.get("h", Some(at(3))).await);
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    let g = c.get("h", Some(at(5))).await.unwrap();
    assert_eq!(g.kvs()[0].value(), b"v3");
    assert_eq!(g.kvs()[0].version(), 4);
    assert!(c.get("h", None).await.unwrap().kvs().is_empty());
    let r = c.put("h", "again", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 8);
    let kv = c.get("h", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.create_revision(), kv.version()), (8, 1));
}
