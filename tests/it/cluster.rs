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
//! - every member answers the same HashKV (checked wherever members are
//!   compared, and at every revision in `hashes_agree_3`);
//! - leader failover time (median of several kills), printed, not asserted.
//!
//! etcd 3.5.1 facts these tests pin down (flags: `--heartbeat-interval 50
//! --election-timeout 500`, so etcd's request timeout is 5 s + 2 x 500 ms):
//! - A leader that loses its quorum keeps accepting proposals until
//!   CheckQuorum makes it step down (one election timeout); a put it took
//!   fails after the request timeout (~6 s) with Unavailable
//!   `etcdserver: request timed out`.
//! - Once no member knows a leader (Status `leader` 0), a put fails after ~6 s
//!   with **Unknown `context deadline exceeded`** (raft refuses proposals
//!   without a leader and etcd returns the raw context error); a
//!   linearizable Range fails after ~6 s with Unavailable `etcdserver:
//!   request timed out`; a serializable Range is served.
//! - (Other timings give other messages: a follower whose leader vanished
//!   answers `etcdserver: request timed out, possibly due to connection
//!   lost`; etcdctl retries reads until its command timeout. The tests
//!   avoid these races.)
//! - MemberList lists every member's name, peer URLs and client URLs, from
//!   any member; `etcdctl endpoint status --cluster` finds the members that
//!   way.
//! - Without `--experimental-snapshot-catchup-entries` (not in 3.5.1) etcd
//!   keeps 5,000 entries after a snapshot for slow followers, so a member
//!   must miss more than 5,000 + `--snapshot-count` entries to need one.
//! - Failover with these flags: a new leader in ~0.55-0.9 s after kill -9
//!   (median ~0.65 s over 5 kills on the 2-core CI box).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::support::{
    all_keys, grpc_status, json, ok_stdout, target, Member, Target, TestCluster, ELECTION_MS,
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
    let (kvs, rev) = all_keys(&mut m.client().await, 0)
        .await
        .unwrap_or_else(|e| panic!("serializable dump of {}: {e}\n{}", m.name(), m.logs()));
    let kvs = kvs
        .into_iter()
        .map(|(k, v, create, modr, version, lease)| (k, (v, create, modr, version, lease)))
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
                .get(
                    "oxcd-it-rev-probe",
                    Some(GetOptions::new().with_serializable()),
                )
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
                        .map(|(k, v)| {
                            (
                                String::from_utf8_lossy(k).into_owned(),
                                v.clone(),
                                kvs0.get(k).cloned(),
                            )
                        })
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
    let (_, rev, state) = first.expect("no running member");
    // etcd's consistency check agrees: HashKV at that revision, and the
    // compact revision it was computed with, are the same on every member.
    let mut hashes = vec![];
    for &i in &running {
        let mut c = c.member(i).client().await;
        let h = c
            .hash_kv(rev)
            .await
            .unwrap_or_else(|e| panic!("hash_kv on m{i}: {e}"));
        hashes.push((i, h.hash(), h.compact_version()));
    }
    assert!(
        hashes
            .windows(2)
            .all(|w| (w[0].1, w[0].2) == (w[1].1, w[1].2)),
        "HashKV at {rev} differs between members (member, hash, compact revision): {hashes:?}"
    );
    state
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
        let (rev1, rev2) = (
            r1.header().unwrap().revision(),
            r2.header().unwrap().revision(),
        );
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

    for (j, c) in clients.iter_mut().enumerate() {
        // Linearizable first: it must see every acknowledged write at once.
        let g = c
            .get("agree/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(
            g.header().unwrap().revision(),
            del_rev,
            "linearizable revision on m{j}"
        );
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

/// Many clients writing at once through every member: followers send the
/// writes that queue up together to the leader (one peer call for many),
/// so each answer must still reach the client that wrote it. Every client
/// puts its own key again and again with `prev_kv`: its answers must carry
/// distinct revisions (distinct from every other client's too), the
/// previous value it wrote itself, and a revision at which a read finds
/// exactly its value.
async fn concurrent_writes_through_every_member(n: usize) {
    const PER_MEMBER: usize = 16;
    const ROUNDS: usize = 25;
    let cl = TestCluster::start(n).await;
    let mut tasks = Vec::new();
    for i in 0..n {
        for j in 0..PER_MEMBER {
            let mut c = cl.member(i).client().await;
            tasks.push(tokio::spawn(async move {
                let key = format!("conc/{i}/{j}");
                let mut acks = Vec::new();
                let mut prev: Option<String> = None;
                for round in 0..ROUNDS {
                    let value = format!("m{i}-c{j}-r{round}");
                    let r = c
                        .put(
                            key.as_str(),
                            value.as_str(),
                            Some(etcd_client::PutOptions::new().with_prev_key()),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("put {key} through m{i}: {e}"));
                    let got_prev = r
                        .prev_key()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                    assert_eq!(got_prev, prev, "prev_kv of {key}, round {round}");
                    acks.push((key.clone(), value.clone(), r.header().unwrap().revision()));
                    prev = Some(value);
                }
                acks
            }));
        }
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.unwrap());
    }
    let mut revs: Vec<i64> = acks.iter().map(|a| a.2).collect();
    revs.sort();
    revs.dedup();
    assert_eq!(
        revs.len(),
        acks.len(),
        "two writes answered with one revision"
    );

    let mut c = cl.member(0).client().await;
    for (key, value, rev) in &acks {
        let g = c
            .get(key.as_str(), Some(GetOptions::new().with_revision(*rev)))
            .await
            .unwrap();
        assert_eq!(
            kv_of(&g).map(|x| (x.0, x.2)),
            Some((value.clone().into_bytes(), *rev)),
            "{key} at the revision its put was answered with"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_every_member_3() {
    concurrent_writes_through_every_member(3).await;
}

/// Linearizable reads through followers, while other follower reads keep
/// the ReadIndex batching busy (a follower shares one call to the leader
/// among the reads that arrived meanwhile): a read that starts after a put
/// was acknowledged sees it, and no reader ever sees a value go back.
/// A read answered by a round that started before it arrived would see
/// the previous value.
async fn follower_reads_see_every_acknowledged_write(n: usize) {
    const WRITES: u32 = 150;
    const READS_PER_WRITE: usize = 6;
    let mut cl = TestCluster::start(n).await;
    let leader = cl.wait_for_leader(Duration::from_secs(10)).await;
    let followers: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
    let key = "lin/k";
    let value_of = |r: &etcd_client::GetResponse| -> u32 {
        kv_of(r).map_or(0, |kv| String::from_utf8(kv.0).unwrap().parse().unwrap())
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut background = Vec::new();
    for &f in &followers {
        for _ in 0..2 {
            let mut c = cl.member(f).client().await;
            let stop = stop.clone();
            background.push(tokio::spawn(async move {
                let (mut last, mut reads) = (0u32, 0u32);
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let v = value_of(&c.get(key, None).await.unwrap());
                    assert!(v >= last, "m{f}: read {v} after {last}");
                    last = v;
                    reads += 1;
                }
                reads
            }));
        }
    }
    let mut writer = cl.member(leader).client().await;
    let mut readers = Vec::new();
    for &f in &followers {
        for _ in 0..READS_PER_WRITE {
            readers.push((f, cl.member(f).client().await));
        }
    }
    for i in 1..=WRITES {
        writer.put(key, format!("{i}"), None).await.unwrap();
        let checks = readers.iter_mut().map(|(f, c)| async move {
            let v = value_of(&c.get(key, None).await.unwrap());
            assert_eq!(v, i, "m{f} read {v} after put {i} was acknowledged");
        });
        futures::future::join_all(checks).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in background {
        assert!(t.await.unwrap() > 0, "a background reader never read");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_reads_see_every_acknowledged_write_3() {
    follower_reads_see_every_acknowledged_write(3).await;
}

// ------------------------------------------------------------- HashKV

/// etcd's consistency check across members: after writes of every kind
/// through every member (puts, a txn, a range delete, a lease revoke, a
/// compaction), every member answers the same HashKV at every revision
/// above the compact revision, and at revision 0. On oxcd also the same
/// `Hash` and the same compaction hash at the compact revision (etcd 3.5.1
/// refuses HashKV there; etcd's own `Hash` covers member-local buckets).
async fn hashes_agree(n: usize) {
    let mut cl = TestCluster::start(n).await;
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(cl.member(i).client().await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        for j in 0..3 {
            c.put(format!("hash/{i}/{j}"), format!("v{j}"), None)
                .await
                .unwrap();
        }
        c.txn(Txn::new().and_then([
            TxnOp::put(format!("hash/t/{i}"), "t", None),
            TxnOp::delete(format!("hash/{i}/0"), None),
        ]))
        .await
        .unwrap();
    }
    let lease = clients[0].lease_grant(600, None).await.unwrap().id();
    for k in ["hash/l/a", "hash/l/b"] {
        let on = etcd_client::PutOptions::new().with_lease(lease);
        clients[1 % n].put(k, "l", Some(on)).await.unwrap();
    }
    clients[n - 1].lease_revoke(lease).await.unwrap();
    let c = &mut clients[0];
    let compact_at = c.put("hash/1/1", "x", None).await.unwrap();
    let compact_at = compact_at.header().unwrap().revision();
    let before = c.hash_kv(compact_at).await.unwrap().hash();
    c.delete(
        "hash/1/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    let physical = etcd_client::CompactionOptions::new().with_physical();
    c.compact(compact_at, Some(physical)).await.unwrap();
    let last = c.put("hash/after", "a", None).await.unwrap();
    let last = last.header().unwrap().revision();
    assert_identical(&mut cl).await;

    let mut answers = Vec::new();
    for i in 0..n {
        let mut c = cl.member(i).client().await;
        let mut a = Vec::new();
        for rev in (compact_at + 1..=last).chain([0]) {
            let h = c.hash_kv(rev).await.unwrap();
            a.push((rev, h.hash(), h.compact_version()));
        }
        if target() == Target::Oxcd {
            // Each member stores its compaction hash when its own
            // compaction runs, which may trail the one we waited for.
            let mut h = c.hash_kv(compact_at).await.unwrap();
            for _ in 0..200 {
                if h.compact_version() != compact_at {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                h = c.hash_kv(compact_at).await.unwrap();
            }
            assert_eq!(h.hash(), before, "compaction hash on m{i}");
            a.push((compact_at, h.hash(), h.compact_version()));
            a.push((-1, c.hash().await.unwrap().hash(), 0));
        }
        answers.push(a);
    }
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(
            a, &answers[0],
            "m{i} vs m0 (revision, hash, compact revision)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashes_agree_3() {
    hashes_agree(3).await;
}

// ------------------------------------------------------- leader kill -9

/// One acknowledged write: key, value, the revision its response carried.
type Ack = (String, String, i64);

/// A writer that puts distinct keys `{prefix}/{w}/{i}` one after another,
/// starting on member `w % n`. A put that fails or times out is retried with
/// the same key and value on the next member (bounded attempts); every
/// acknowledged put is recorded with the instant it was acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(usize, Ack, Instant)>>>,
    count: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
}

/// Attempts per put, and the time they may take, before a writer gives up
/// (and fails the test). Attempts fail fast while there is no leader, so
/// the time bound is what rides out an election storm on a loaded host
/// (the compose test builds its image beside these tests).
const PUT_ATTEMPTS: usize = 2000;
const PUT_PATIENCE: Duration = Duration::from_secs(60);
/// Bound on one put attempt.
const PUT_TIMEOUT: Duration = Duration::from_secs(5);

impl Writers {
    fn start(cl: &TestCluster, prefix: &str, writers: usize, max_puts: usize) -> Writers {
        let endpoints: Vec<String> = cl.members().iter().map(Member::endpoint).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<(usize, Ack, Instant)>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (endpoints, stop, acked, count) = (
                endpoints.clone(),
                stop.clone(),
                acked.clone(),
                count.clone(),
            );
            let prefix = prefix.to_string();
            tasks.push(tokio::spawn(async move {
                let n = endpoints.len();
                let mut at = w % n;
                let mut client: Option<Client> = None;
                for i in 0..max_puts {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    let (k, v) = (format!("{prefix}/{w}/{i:05}"), format!("v-{w}-{i}"));
                    let mut errors = Vec::new();
                    let mut done = false;
                    let give_up = Instant::now() + PUT_PATIENCE;
                    for _attempt in 0..PUT_ATTEMPTS {
                        if Instant::now() > give_up {
                            break;
                        }
                        if client.is_none() {
                            let opts = etcd_client::ConnectOptions::new()
                                .with_connect_timeout(Duration::from_secs(1))
                                .with_timeout(PUT_TIMEOUT);
                            match tokio::time::timeout(
                                Duration::from_secs(2),
                                Client::connect([endpoints[at].clone()], Some(opts)),
                            )
                            .await
                            {
                                Ok(Ok(c)) => client = Some(c),
                                other => {
                                    errors.push(format!(
                                        "connect m{at}: {:?}",
                                        other.map(|r| r.err())
                                    ));
                                    at = (at + 1) % n;
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                    continue;
                                }
                            }
                        }
                        let c = client.as_mut().unwrap();
                        match tokio::time::timeout(PUT_TIMEOUT, c.put(k.as_str(), v.as_str(), None))
                            .await
                        {
                            Ok(Ok(r)) => {
                                let rev = r.header().unwrap().revision();
                                acked.lock().unwrap().push((
                                    w,
                                    (k.clone(), v.clone(), rev),
                                    Instant::now(),
                                ));
                                count.fetch_add(1, Ordering::SeqCst);
                                done = true;
                                break;
                            }
                            Ok(Err(e)) => errors.push(format!("put m{at}: {e}")),
                            Err(_) => errors.push(format!("put m{at}: timed out")),
                        }
                        // Another member may serve us: move on.
                        client = None;
                        at = (at + 1) % n;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if !done {
                        let tail = &errors[errors.len().saturating_sub(6)..];
                        return Err(format!(
                            "writer {w}: {k} not acknowledged after {} attempts: {tail:?}",
                            errors.len()
                        ));
                    }
                }
                Ok(())
            }));
        }
        Writers {
            stop,
            acked,
            count,
            tasks,
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `n` puts in all have been acknowledged.
    async fn wait_count(&self, n: usize, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {n} puts acknowledged after {timeout:?}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the writers and returns every acknowledged put.
    async fn finish(self) -> Vec<(usize, Ack, Instant)> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            // A put in flight gives up within its patience, plus one
            // attempt's connect and put timeouts.
            tokio::time::timeout(PUT_PATIENCE + PUT_TIMEOUT + Duration::from_secs(5), t)
                .await
                .expect("writer did not stop")
                .unwrap()
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// Asserts every acknowledged put is on every running member with its
/// value at its acknowledged mod revision, and that no two acknowledged puts
/// share a revision.
async fn assert_acked_everywhere(cl: &mut TestCluster, acked: &[(usize, Ack, Instant)]) {
    let mut revs: Vec<i64> = acked.iter().map(|a| a.1 .2).collect();
    revs.sort();
    revs.dedup();
    assert_eq!(
        revs.len(),
        acked.len(),
        "two acknowledged puts share a revision"
    );
    let state = assert_identical(cl).await;
    let mut lost = Vec::new();
    for (_, (k, v, rev), _) in acked {
        match state.get(k.as_bytes()) {
            // A retry of a put that had landed makes version 2: fine. The
            // acknowledged one is the newest.
            Some((fv, _crev, mrev, _ver, _)) => {
                assert_eq!((fv.as_slice(), *mrev), (v.as_bytes(), *rev), "{k}");
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
}

/// Kill -9 the leader under a stream of writes: a new leader is elected,
/// retrying clients succeed, every acknowledged write is on every member —
/// also on the old leader once it is back, under the same member id.
async fn leader_kill9_under_writes(n: usize) {
    const WRITERS: usize = 6;
    let mut cl = TestCluster::start(n).await;
    let old = cl.wait_for_leader(LEADER_TIMEOUT).await;
    let old_id = cl
        .member(old)
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .member_id();
    let writers = Writers::start(&cl, "kill", WRITERS, 5_000);
    writers
        .wait_count(300, Duration::from_secs(60), "before the kill")
        .await;

    let killed_at = Instant::now();
    let acked_before = writers.count();
    cl.member_mut(old).kill9();
    let new = cl.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(new, old);
    eprintln!(
        "leader m{old} killed; m{new} leads after {:?}",
        killed_at.elapsed()
    );
    writers
        .wait_count(
            acked_before + 300,
            Duration::from_secs(60),
            "after the kill",
        )
        .await;
    let acked = writers.finish().await;
    // Every writer, wherever it was connected, got writes through after the
    // kill.
    for w in 0..WRITERS {
        assert!(
            acked.iter().any(|(ww, _, t)| *ww == w && *t > killed_at),
            "writer {w} acknowledged nothing after the kill"
        );
    }
    assert_acked_everywhere(&mut cl, &acked).await;

    // The old leader rejoins from its data dir, as a member with the same id,
    // and holds everything too.
    cl.member_mut(old).start();
    cl.member_mut(old)
        .wait_ready(CATCH_UP_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let s = cl.member(old).status().await.unwrap();
    assert_eq!(
        s.header().unwrap().member_id(),
        old_id,
        "member id after restart"
    );
    assert_acked_everywhere(&mut cl, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_under_writes_3() {
    leader_kill9_under_writes(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_under_writes_5() {
    leader_kill9_under_writes(5).await;
}

/// How long a request without a quorum may take to fail: etcd's request
/// timeout is 5 s + 2 x election timeout; this leaves room for a loaded box.
const NO_QUORUM_BOUND: Duration = Duration::from_secs(15);

/// Runs `f` with a hard bound of 30 s; returns how long it took and its result.
async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> (Duration, Result<T, etcd_client::Error>) {
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| {
            Err(etcd_client::Error::InvalidArgs(
                "no answer within 30 s".into(),
            ))
        });
    (t0.elapsed(), r)
}

/// Asserts a request failed with exactly this code and message, within
/// `NO_QUORUM_BOUND`.
#[track_caller]
fn assert_grpc_within<T: std::fmt::Debug>(
    r: Result<T, etcd_client::Error>,
    code: tonic::Code,
    message: &str,
    took: Duration,
    what: &str,
) {
    let r = r.map_err(|e| match e {
        etcd_client::Error::GRpcStatus(s) => etcd_client::Error::GRpcStatus(s),
        other => panic!("{what}: expected gRPC {code:?} {message:?}, got {other:?} after {took:?}"),
    });
    let s = grpc_status(r);
    assert_eq!(
        (s.code(), s.message()),
        (code, message),
        "{what}: wrong status after {took:?}: {s:?}"
    );
    assert!(took < NO_QUORUM_BOUND, "{what}: failed only after {took:?}");
}

/// Waits until every member in `live` reports no leader (Status leader 0).
async fn wait_leaderless(cl: &mut TestCluster, live: &[usize]) {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    let mut last = Vec::new();
    for _ in 0..10_000 {
        last.clear();
        for &i in live {
            last.push(cl.member(i).status().await.map(|s| s.leader()));
        }
        if last.iter().all(|l| l == &Ok(0)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members {live:?} still see a leader without a quorum: {last:?}\n{}",
            cl.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------- minority and majority

/// Stops a minority (the leader among them): the rest elects a leader and
/// serves reads and writes through every live member. Then stops one more
/// (a majority is down): a write fails within a bounded time with etcd's
/// error, a linearizable read fails, a serializable read is still served;
/// once the stopped members return, writes succeed again.
async fn minority_then_majority_down(n: usize) {
    let mut cl = TestCluster::start(n).await;
    let minority = n / 2;
    let leader = cl.wait_for_leader(LEADER_TIMEOUT).await;
    let mut down = vec![leader];
    down.extend((0..n).filter(|&i| i != leader).take(minority - 1));
    for &i in &down {
        cl.member_mut(i).stop();
    }
    let new = cl.wait_for_leader(LEADER_TIMEOUT).await;
    assert!(!down.contains(&new));
    let live: Vec<usize> = (0..n).filter(|i| !down.contains(i)).collect();
    let mut last_rev = 0;
    for &i in &live {
        let mut c = cl.member(i).client().await;
        let r = c
            .put(format!("minority/{i}"), "ok", None)
            .await
            .unwrap_or_else(|e| {
                panic!("put through m{i} with a minority down: {e}\n{}", cl.logs())
            });
        last_rev = r.header().unwrap().revision();
    }
    for &i in &live {
        let mut c = cl.member(i).client().await;
        let g = c
            .get("minority/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(g.header().unwrap().revision(), last_rev);
        assert_eq!(g.kvs().len(), live.len());
    }

    // One more down (SIGSTOP, so it is gone at once): a majority is lost.
    // The current leader stays up, so the first write meets a leader that
    // does not know yet that it has lost its quorum.
    let extra = *live.iter().find(|&&i| i != new).unwrap();
    cl.member_mut(extra).pause();
    let live: Vec<usize> = live.into_iter().filter(|&i| i != extra).collect();
    let mut c = cl.member(new).client().await;
    let (took, r) = timed(c.put("majority/lost/1", "x", None)).await;
    eprintln!("majority down ({n} members): put through the leader at once: {took:?} {r:?}");
    assert_grpc_within(
        r,
        tonic::Code::Unavailable,
        "etcdserver: request timed out",
        took,
        &format!("put through the old leader m{new} right after the majority was lost"),
    );

    // Once every live member knows there is no leader (Status says leader
    // 0): writes fail, linearizable reads fail, serializable reads are
    // served; through every live member, concurrently (each takes etcd's
    // request timeout, 5 s + 2 x election timeout).
    wait_leaderless(&mut cl, &live).await;
    let mut checks = Vec::new();
    for &i in &live {
        let mut c = cl.member(i).client().await;
        let expect_kvs = n - minority;
        checks.push(tokio::spawn(async move {
            let (took, r) = timed(c.put(format!("majority/lost/m{i}"), "x", None)).await;
            eprintln!("majority down ({n} members), no leader: put through m{i}: {took:?} {r:?}");
            assert_grpc_within(
                r,
                tonic::Code::Unknown,
                "context deadline exceeded",
                took,
                &format!("put through m{i} with no leader"),
            );
            let (took, r) = timed(c.get("minority/", Some(GetOptions::new().with_prefix()))).await;
            eprintln!("majority down ({n} members), no leader: linearizable get through m{i}: {took:?} {:?}", r.as_ref().map(|_| ()));
            assert_grpc_within(
                r,
                tonic::Code::Unavailable,
                "etcdserver: request timed out",
                took,
                &format!("linearizable get through m{i} with no leader"),
            );
            let g = c
                .get("minority/", Some(GetOptions::new().with_prefix().with_serializable()))
                .await
                .unwrap_or_else(|e| panic!("serializable get through m{i} with no leader: {e}"));
            assert_eq!(g.kvs().len(), expect_kvs);
        }));
    }
    for t in checks {
        if let Err(e) = t.await {
            panic!("{e}\n{}", cl.logs());
        }
    }
    cl.member_mut(extra).resume();

    // The majority returns: writes work again (bounded retries).
    for &i in &down {
        cl.member_mut(i).start();
    }
    cl.wait_for_leader(LEADER_TIMEOUT).await;
    let mut c = cl.member(live[0]).client().await;
    let mut ok = None;
    for _ in 0..100 {
        match c.put("majority/back", "y", None).await {
            Ok(r) => {
                ok = Some(r.header().unwrap().revision());
                break;
            }
            Err(e) => eprintln!("put after the majority returned: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rev = ok.expect("no write succeeded after the majority returned");
    cl.wait_all_ready(CATCH_UP_TIMEOUT).await.unwrap();
    let state = assert_identical(&mut cl).await;
    assert_eq!(state.get(&b"majority/back"[..]).map(|s| s.2), Some(rev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_then_majority_down_3() {
    minority_then_majority_down(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_then_majority_down_5() {
    minority_then_majority_down(5).await;
}

// ---------------------------------------------------- snapshot catch-up

/// `--snapshot-count`: a snapshot every 100 applied entries.
const SNAPSHOT_COUNT: &str = "100";
/// Entries written while the member is down. etcd 3.5.1 keeps 5,000 entries
/// behind each snapshot for slow followers (`snapshotCatchUpEntries`, not a
/// flag before 3.5.x's `--experimental-snapshot-catchup-entries`); past that
/// and a snapshot interval, the member's next entry is gone from every log.
const ENTRIES_WHILE_DOWN: usize = 5_600;

/// The line a member's log carries when it installed a snapshot from the
/// leader; checked so the test cannot pass by plain log replication.
fn snapshot_installed_marker() -> &'static str {
    match target() {
        Target::Etcd => "applied snapshot",
        Target::Oxcd => "installed snapshot",
    }
}

/// A member stopped while the others write past the retained log catches
/// up by snapshot, then holds identical data (every key, value, revision,
/// version, lease, and the compaction).
///
/// `with_lease`: also a key attached to a lease, which must come through the
/// snapshot with its lease (kept apart so the main check does not depend on
/// the Lease service).
async fn lagging_member_catches_up_by_snapshot(n: usize, with_lease: bool) {
    const WRITERS: usize = 8;
    // etcd 3.5.1 keeps a fixed 5,000 entries behind a snapshot, hence the
    // 5,600 writes. oxcd proposes concurrent writes as one log entry, so the
    // 8 writers below produce fewer entries than writes; it takes etcd's
    // later flag for the retained tail instead, set low enough that the
    // stopped member must get a snapshot.
    let mut args = vec!["--snapshot-count", SNAPSHOT_COUNT];
    if target() == Target::Oxcd {
        args.extend(["--experimental-snapshot-catchup-entries", "100"]);
    }
    let mut cl = TestCluster::start_with(n, &args).await;
    let leader = cl.wait_for_leader(LEADER_TIMEOUT).await;
    let mut c = cl.member(leader).client().await;
    // Some history the member sees before it stops: versions, a delete,
    // a lease.
    for i in 0..3 {
        c.put("snap/hist", format!("h{i}"), None).await.unwrap();
    }
    c.put("snap/gone", "x", None).await.unwrap();
    c.delete("snap/gone", None).await.unwrap();
    let lease = if with_lease {
        let lease = c.lease_grant(600, None).await.unwrap().id();
        c.put(
            "snap/leased",
            "l",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
        lease
    } else {
        0
    };

    let lag = (leader + 1) % n;
    cl.member_mut(lag).stop();
    let lag_log_before = cl.member(lag).full_log();

    let t0 = Instant::now();
    let writers = Writers::start(&cl, "snap/w", WRITERS, ENTRIES_WHILE_DOWN / WRITERS);
    writers
        .wait_count(
            ENTRIES_WHILE_DOWN,
            Duration::from_secs(240),
            "while a member is down",
        )
        .await;
    let acked = writers.finish().await;
    eprintln!(
        "{} puts with m{lag} down in {:?}",
        acked.len(),
        t0.elapsed()
    );
    // More history while it is down: overwrite, a range delete, a compaction.
    let leader = cl.wait_for_leader(LEADER_TIMEOUT).await;
    let mut c = cl.member(leader).client().await;
    let r = c.put("snap/hist", "h-late", None).await.unwrap();
    let compact_at = r.header().unwrap().revision();
    let d = c
        .delete(
            "snap/w/0/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(d.deleted() as usize, ENTRIES_WHILE_DOWN / WRITERS);
    c.compact(compact_at, None).await.unwrap();
    c.put("snap/hist", "h-last", None).await.unwrap();

    cl.member_mut(lag).start();
    cl.member_mut(lag)
        .wait_ready(CATCH_UP_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let state = assert_identical(&mut cl).await;
    assert_eq!(
        state.get(&b"snap/hist"[..]).map(|s| (s.0.clone(), s.3)),
        Some((b"h-last".to_vec(), 5))
    );
    if with_lease {
        assert_eq!(state.get(&b"snap/leased"[..]).map(|s| s.4), Some(lease));
    }
    assert!(!state.contains_key(&b"snap/gone"[..]));
    let acked: Vec<_> = acked
        .into_iter()
        .filter(|a| !a.1 .0.starts_with("snap/w/0/"))
        .collect();
    assert_acked_everywhere(&mut cl, &acked).await;

    let marker = snapshot_installed_marker();
    let log = cl.member(lag).full_log();
    assert!(
        log.contains(marker) && !lag_log_before.contains(marker),
        "m{lag} caught up without installing a snapshot (no {marker:?} in its log): \
         the test proved nothing\n{}",
        cl.member(lag).logs()
    );

    // The caught-up member has the compaction and the lease too.
    let mut lc = cl.member(lag).client().await;
    let s = grpc_status(
        lc.get(
            "snap/hist",
            Some(
                GetOptions::new()
                    .with_revision(compact_at - 1)
                    .with_serializable(),
            ),
        )
        .await,
    );
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    let g = lc
        .get(
            "snap/hist",
            Some(
                GetOptions::new()
                    .with_revision(compact_at)
                    .with_serializable(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(g.kvs()[0].value(), b"h-late");
    if with_lease {
        let leases = lc.leases().await.unwrap();
        assert!(
            leases.leases().iter().any(|l| l.id() == lease),
            "lease lost on m{lag}"
        );
        let ttl = lc.lease_time_to_live(lease, None).await.unwrap();
        assert!(
            ttl.ttl() > 0 && ttl.ttl() <= 600,
            "lease ttl on m{lag}: {}",
            ttl.ttl()
        );
    }
    // And it takes writes.
    let r = lc.put("snap/after", "a", None).await.unwrap();
    let rev = r.header().unwrap().revision();
    let state = assert_identical(&mut cl).await;
    assert_eq!(state.get(&b"snap/after"[..]).map(|s| s.2), Some(rev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_member_catches_up_by_snapshot_3() {
    lagging_member_catches_up_by_snapshot(3, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_key_comes_through_snapshot_catch_up_3() {
    lagging_member_catches_up_by_snapshot(3, true).await;
}

// ------------------------------------------------------------- etcdctl

/// etcdctl with `--endpoints=a,b,c`: put/get, `endpoint status --cluster`,
/// `endpoint health --cluster`, `member list`; and put/get keep working with
/// the leader killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_with_every_endpoint_3() {
    let n = 3;
    let mut cl = TestCluster::start(n).await;
    assert_eq!(ok_stdout(&cl.etcdctl(&["put", "ctl/a", "1"])), "OK\n");
    assert_eq!(ok_stdout(&cl.etcdctl(&["get", "ctl/a"])), "ctl/a\n1\n");

    let leader = cl.wait_for_leader(LEADER_TIMEOUT).await;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            cl.member(i)
                .status()
                .await
                .unwrap()
                .header()
                .unwrap()
                .member_id(),
        );
    }

    // member list: every member, its name, peer and client URLs.
    let ml = json(&ok_stdout(&cl.etcdctl(&["member", "list", "-w", "json"])));
    let members = ml["members"].as_array().expect("members");
    assert_eq!(members.len(), n);
    for (i, &id) in ids.iter().enumerate() {
        let m = members
            .iter()
            .find(|m| m["ID"].as_u64() == Some(id))
            .unwrap_or_else(|| panic!("m{i} ({id:x}) not in member list: {ml}"));
        assert_eq!(m["name"], format!("m{i}"));
        assert_eq!(m["peerURLs"], serde_json::json!([cl.member(i).peer_url()]));
        assert_eq!(
            m["clientURLs"],
            serde_json::json!([cl.member(i).endpoint()])
        );
    }
    // Table: `<id hex>, started, <name>, <peer url>, <client url>, false`.
    let table = ok_stdout(&cl.etcdctl(&["member", "list"]));
    let mut lines: Vec<&str> = table.lines().collect();
    lines.sort();
    let mut expected: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{:x}, started, m{i}, {}, {}, false",
                ids[i],
                cl.member(i).peer_url(),
                cl.member(i).endpoint()
            )
        })
        .collect();
    expected.sort();
    assert_eq!(lines, expected);

    // endpoint status --cluster: every member, one leader, one term.
    let st = json(&ok_stdout(&cl.etcdctl(&[
        "endpoint",
        "status",
        "--cluster",
        "-w",
        "json",
    ])));
    let st = st.as_array().expect("array");
    assert_eq!(st.len(), n, "{st:?}");
    let mut eps: Vec<&str> = st.iter().map(|e| e["Endpoint"].as_str().unwrap()).collect();
    eps.sort();
    let mut want: Vec<String> = (0..n).map(|i| cl.member(i).endpoint()).collect();
    want.sort();
    assert_eq!(eps, want);
    let terms: Vec<u64> = st
        .iter()
        .map(|e| e["Status"]["raftTerm"].as_u64().unwrap())
        .collect();
    assert!(
        terms.iter().all(|&t| t == terms[0] && t >= 1),
        "terms {terms:?}"
    );
    for e in st {
        assert_eq!(e["Status"]["leader"].as_u64(), Some(ids[leader]), "{e}");
        let version = e["Status"]["version"].as_str().unwrap();
        assert!(version.starts_with("3.5."), "{e}");
        let (index, applied) = (
            e["Status"]["raftIndex"].as_u64().unwrap(),
            e["Status"]["raftAppliedIndex"].as_u64().unwrap(),
        );
        assert!(applied >= 1 && applied <= index, "{e}");
    }
    // Table form: one line per member, exactly one `true` in IS LEADER.
    let table = ok_stdout(&cl.etcdctl(&["endpoint", "status", "--cluster"]));
    let leaders: Vec<&str> = table
        .lines()
        .filter(|l| l.split(", ").nth(4) == Some("true"))
        .collect();
    assert_eq!(table.lines().count(), n, "{table}");
    assert_eq!(leaders.len(), 1, "{table}");
    assert!(
        leaders[0].starts_with(&format!(
            "{}, {:x}, ",
            cl.member(leader).endpoint(),
            ids[leader]
        )),
        "{table}"
    );

    let health = ok_stdout(&cl.etcdctl(&["endpoint", "health", "--cluster"]));
    assert_eq!(health.lines().count(), n, "{health}");
    assert!(
        health
            .lines()
            .all(|l| l.contains(" is healthy: successfully committed proposal")),
        "{health}"
    );

    // The leader dies: etcdctl with every endpoint still writes and reads
    // once a new leader is elected (bounded retries).
    cl.member_mut(leader).kill9();
    cl.wait_for_leader(LEADER_TIMEOUT).await;
    let mut out = None;
    for _ in 0..20 {
        let o = cl.etcdctl(&["put", "ctl/b", "2"]);
        if o.status.success() {
            out = Some(o);
            break;
        }
        eprintln!(
            "etcdctl put with the leader down: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        ok_stdout(&out.expect("etcdctl put never succeeded with the leader down")),
        "OK\n"
    );
    assert_eq!(
        ok_stdout(&cl.etcdctl(&["get", "ctl/", "--prefix"])),
        "ctl/a\n1\nctl/b\n2\n"
    );
}

// ------------------------------------------------------- failover time

/// Kills the leader of a 3-member cluster several times and prints the
/// median time until a new leader is agreed and until a write succeeds
/// again (for the note; not asserted beyond being bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_time_3() {
    const KILLS: usize = 5;
    let mut cl = TestCluster::start(3).await;
    let mut to_leader = Vec::new();
    let mut to_write = Vec::new();
    for round in 0..KILLS {
        let old = cl.wait_for_leader(LEADER_TIMEOUT).await;
        let survivor = (old + 1) % 3;
        let mut c = cl.member(survivor).client().await;
        c.put("failover/warm", "x", None).await.unwrap();
        let t0 = Instant::now();
        cl.member_mut(old).kill9();
        // First successful write through a survivor: a new attempt every
        // 10 ms, none cancelled (an attempt sent to the dead leader hangs
        // until etcd's request timeout; a later one gets through).
        let write_task = {
            let c = c.clone();
            tokio::spawn(async move {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..1_000 {
                    let mut c = c.clone();
                    set.spawn(async move {
                        match tokio::time::timeout(
                            Duration::from_secs(10),
                            c.put("failover/k", "v", None),
                        )
                        .await
                        {
                            Ok(Ok(_)) => Some(t0.elapsed()),
                            _ => None,
                        }
                    });
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    while let Some(done) = set.try_join_next() {
                        if let Ok(Some(t)) = done {
                            return Some(t);
                        }
                    }
                }
                None
            })
        };
        cl.wait_for_leader(LEADER_TIMEOUT).await;
        to_leader.push(t0.elapsed());
        let w = tokio::time::timeout(LEADER_TIMEOUT, write_task)
            .await
            .expect("no write within the bound")
            .unwrap()
            .expect("no write succeeded");
        to_write.push(w);
        eprintln!(
            "round {round}: leader m{old} killed; new leader after {:?}, first write after {w:?}",
            to_leader[round]
        );
        cl.member_mut(old).start();
        cl.wait_all_ready(CATCH_UP_TIMEOUT).await.unwrap();
    }
    to_leader.sort();
    to_write.sort();
    eprintln!(
        "FAILOVER ({:?}, 3 members, --heartbeat-interval 50 --election-timeout {ELECTION_MS}): \
         median new leader {:?}, median first write {:?} over {KILLS} kills; writes: {to_write:?}",
        target(),
        to_leader[KILLS / 2],
        to_write[KILLS / 2]
    );
}

// ------------------------------------------------------- leases on failover

/// Polls a prefix through `c` until it is empty or `limit` passes; returns
/// the time it took, or `None` if keys were still there.
async fn gone_within(c: &mut Client, prefix: &str, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    for _ in 0..10_000 {
        if let Ok(r) = c
            .get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_count_only()
                        .with_serializable(),
                ),
            )
            .await
        {
            if r.count() == 0 {
                return Some(t0.elapsed());
            }
        }
        if t0.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A lease kept alive through a client connected to a follower survives a
/// leader kill: the follower forwards keepalives to whichever member leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_kept_alive_through_a_follower_survives_a_leader_kill_3() {
    let mut cl = TestCluster::start(3).await;
    let leader = cl.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = (leader + 1) % 3;
    let mut c = cl.member(follower).client().await;
    let lease = c.lease_grant(3, None).await.unwrap().id();
    c.put(
        "kept/k",
        "v",
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    let (mut keeper, mut replies) = c.lease_keep_alive(lease).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let renewer = tokio::spawn(async move {
        let mut acks = 0usize;
        for _ in 0..200 {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            if keeper.keep_alive().await.is_ok() {
                if let Ok(Ok(Some(r))) =
                    tokio::time::timeout(Duration::from_secs(2), replies.message()).await
                {
                    if r.ttl() > 0 {
                        acks += 1;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        acks
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cl.member_mut(leader).kill9();
    // Well past the 3 s TTL, across the election.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut c = cl.member(follower).client().await;
    let r = c.get("kept/k", None).await.unwrap();
    assert_eq!(
        r.kvs().len(),
        1,
        "a lease kept alive through a follower expired\n{}",
        cl.logs()
    );
    stop.store(true, Ordering::Relaxed);
    let acks = renewer.await.unwrap();
    assert!(acks >= 8, "only {acks} keepalives answered with a TTL");
    // Once the keepalives stop, the lease still expires (on the new leader).
    assert!(
        gone_within(&mut c, "kept/", Duration::from_secs(3 + 5))
            .await
            .is_some(),
        "the lease did not expire after the keepalives stopped\n{}",
        cl.logs()
    );
}

/// An unrefreshed lease on a cluster whose leader is killed still expires,
/// once: its keys go in one revision on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrefreshed_lease_expires_once_after_a_leader_kill_3() {
    let mut cl = TestCluster::start(3).await;
    let leader = cl.wait_for_leader(LEADER_TIMEOUT).await;
    let mut c = cl.member(leader).client().await;
    let lease = c.lease_grant(3, None).await.unwrap().id();
    for i in 0..20 {
        c.put(
            format!("lapse/{i:02}"),
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    }
    let before = c
        .get("lapse/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    cl.member_mut(leader).kill9();
    let survivor = (leader + 1) % 3;
    let mut c = cl.member(survivor).client().await;
    // A new leader gives the lease at least its TTL again (etcd's rule), so
    // it lapses within TTL + election timeout + the election itself.
    let took = gone_within(&mut c, "lapse/", Duration::from_secs(9)).await;
    assert!(took.is_some(), "the lease never expired\n{}", cl.logs());
    cl.member_mut(leader).restart();
    cl.wait_for_leader(LEADER_TIMEOUT).await;
    cl.member_mut(leader)
        .wait_ready(LEADER_TIMEOUT)
        .await
        .unwrap();
    // Every member agrees: the keys went in exactly one revision, once.
    let mut revs = Vec::new();
    for i in 0..3 {
        let mut c = cl.member(i).client().await;
        let r = c
            .get("lapse/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(r.kvs().len(), 0, "m{i} still holds leased keys");
        let now = r.header().unwrap().revision();
        revs.push(now);
    }
    assert!(
        revs.iter().all(|r| *r == revs[0]),
        "members disagree: {revs:?}"
    );
    assert_eq!(
        revs[0],
        before + 1,
        "the expiry took more than one revision (or ran twice)"
    );
}

// ---------------------------------------------------- watch across failover

/// One received event: (mod_revision, key, is_delete).
type Seen = (i64, Vec<u8>, bool);

/// Watches `w/` from `from` on member `start`, reconnecting to the next
/// member (from the last revision + 1) whenever a stream breaks, until it
/// has seen `until`. Returns every event in arrival order.
async fn gapless_watcher(
    endpoints: Vec<String>,
    start: usize,
    until: Arc<AtomicUsize>,
) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    let mut next_rev = 1i64;
    let mut member = start;
    let t0 = Instant::now();
    'connect: for _ in 0..200 {
        if t0.elapsed() > Duration::from_secs(60) {
            break;
        }
        let target = until.load(Ordering::SeqCst) as i64;
        if target > 0 && next_rev > target {
            break;
        }
        let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
        let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_secs(2),
            Client::connect([endpoints[member].clone()], Some(opts)),
        )
        .await
        else {
            member = (member + 1) % endpoints.len();
            continue;
        };
        let wopts = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(next_rev);
        let Ok(Ok((_w, mut stream))) =
            tokio::time::timeout(Duration::from_secs(2), c.watch("w/", Some(wopts))).await
        else {
            member = (member + 1) % endpoints.len();
            continue;
        };
        loop {
            let target = until.load(Ordering::SeqCst) as i64;
            if target > 0 && next_rev > target {
                break 'connect;
            }
            match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                Ok(Ok(Some(resp))) => {
                    for e in resp.events() {
                        let kv = e.kv().unwrap();
                        seen.push((
                            kv.mod_revision(),
                            kv.key().to_vec(),
                            e.event_type() == etcd_client::EventType::Delete,
                        ));
                        next_rev = kv.mod_revision() + 1;
                    }
                }
                // Quiet for a while: if the writes are done and we are not
                // caught up, this member may be dead; try another.
                Err(_) if target > 0 => {
                    member = (member + 1) % endpoints.len();
                    continue 'connect;
                }
                Err(_) => {}
                Ok(_) => {
                    member = (member + 1) % endpoints.len();
                    continue 'connect;
                }
            }
        }
    }
    seen
}

/// Watchers on every member of a 3-member cluster, a stream of puts and
/// deletes, and a leader kill in the middle: each watcher that reconnects
/// from its last revision + 1 sees exactly the cluster's history, in order,
/// nothing missing, nothing twice; and every acknowledged write is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_a_gapless_history_across_a_leader_kill_3() {
    let mut cl = TestCluster::start(3).await;
    let leader = cl.wait_for_leader(LEADER_TIMEOUT).await;
    let endpoints: Vec<String> = (0..3).map(|i| cl.member(i).endpoint()).collect();
    let until = Arc::new(AtomicUsize::new(0));
    let watchers: Vec<_> = (0..3)
        .map(|i| tokio::spawn(gapless_watcher(endpoints.clone(), i, until.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Writes through a member that is not the leader (it survives the
    // kill); a failed write is retried, an acknowledged one recorded.
    let writer_at = (leader + 1) % 3;
    let mut c = cl.member(writer_at).client().await;
    let mut acked: Vec<(i64, String, bool)> = Vec::new();
    for i in 0..240 {
        if i == 120 {
            cl.member_mut(leader).kill9();
        }
        let key = format!("w/{:02}", i % 12);
        let delete = i % 5 == 4;
        for _attempt in 0..50 {
            let r = if delete {
                c.delete(key.as_str(), None)
                    .await
                    .map(|r| (r.deleted() > 0, r.header().unwrap().revision()))
            } else {
                c.put(key.as_str(), format!("v{i}"), None)
                    .await
                    .map(|r| (true, r.header().unwrap().revision()))
            };
            match r {
                Ok((changed, rev)) => {
                    if changed {
                        acked.push((rev, key.clone(), delete));
                    }
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    let last = c
        .get("w/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    until.store(last as usize, Ordering::SeqCst);

    // The cluster's history, from a fresh watch on a surviving member.
    let reference = gapless_watcher(vec![endpoints[writer_at].clone()], 0, until.clone()).await;
    let revs: Vec<i64> = reference.iter().map(|s| s.0).collect();
    assert!(
        revs.windows(2).all(|w| w[0] <= w[1]),
        "reference history out of order"
    );
    assert_eq!(
        revs.last().copied(),
        Some(last),
        "reference history incomplete"
    );
    for (rev, key, delete) in &acked {
        assert!(
            reference
                .iter()
                .any(|s| s.0 == *rev && s.1 == key.as_bytes() && s.2 == *delete),
            "acknowledged write at revision {rev} ({key}) missing from the history"
        );
    }
    for (i, w) in watchers.into_iter().enumerate() {
        let seen = w.await.unwrap();
        assert_eq!(
            seen.len(),
            reference.len(),
            "watcher {i} saw {} events, the history has {}",
            seen.len(),
            reference.len()
        );
        assert!(seen == reference, "watcher {i} saw a different history");
    }
}
