//! Backups: `etcdctl snapshot save` from a running member, then the target's
//! offline tool (`oxcd snapshot`, etcd's `etcdutl snapshot`) to check and
//! restore the file, and members started on the restored data dirs.
//!
//! etcd facts pinned here (etcd 3.5.1, etcdctl and etcdutl 3.5.1):
//! - `etcdctl snapshot save FILE` prints `Snapshot saved at FILE`. The file is
//!   the database, then its SHA-256 (the stream's last message); etcdctl
//!   refuses a download whose length is not 32 more than a multiple of 512
//!   (`sha256 checksum not found [bytes: N]`), so oxcd pads its payload.
//! - The snapshot is one revision of the member's store, taken while writes
//!   go on; `snapshot status -w json` reports it as `revision`.
//! - A member restored from it serves every key as it was at that revision
//!   (value, create and mod revision, version, lease), at that revision; the
//!   compaction point and the leases (with their keys) come along; the next
//!   write is the next revision. Restoring the same file into three data dirs
//!   with a new `--initial-cluster` makes a three-member cluster.
//! - `snapshot restore` refuses a data dir that is not empty (`data-dir "D"
//!   not empty or could not be read`; an empty one is used), a file whose
//!   SHA-256 does not match (`expected sha256 [..], got [..]`) and one cut
//!   short (`snapshot missing hash ...`). etcdutl leaves a partial data
//!   dir behind after the last two; oxcd builds it beside its final path
//!   and leaves nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use etcd_client::{
    Client, CompactionOptions, DeleteOptions, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp,
};

use crate::support::{
    all_keys, current_rev, etcdctl_at, grpc_status, json, ok_stdout, snapshot_tool, target, KvRow,
    Target, TestCluster, TestServer,
};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const LEASE_ID: i64 = 0x5eed;

/// Every key at `rev` (0: current), from this member's own store.
async fn keys_at(c: &mut Client, rev: i64) -> (Vec<KvRow>, i64) {
    all_keys(c, rev).await.unwrap()
}

/// A history with every kind of record a snapshot carries: several
/// versions of keys, deletes (tombstones), a physical compaction, a lease
/// with keys, an empty value. Returns the compaction revision.
async fn write_history(c: &mut Client) -> i64 {
    c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(LEASE_ID)))
        .await
        .unwrap();
    for i in 0..120 {
        c.put(format!("k/{:03}", i % 40), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.delete("k/007", None).await.unwrap();
    c.delete("k/02", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let compact = current_rev(c).await;
    c.compact(compact, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    for i in 0..30 {
        c.put(format!("k/{:03}", i), format!("after-{i}"), None)
            .await
            .unwrap();
    }
    c.put("k/empty", "", None).await.unwrap();
    let lease = PutOptions::new().with_lease(LEASE_ID);
    c.put("leased/a", "1", Some(lease.clone())).await.unwrap();
    c.put("leased/b", "2", Some(lease)).await.unwrap();
    c.put("k/020", "reborn", None).await.unwrap();
    compact
}

/// `etcdctl snapshot save` into `dir`; checks etcdctl's answer and the
/// file's shape.
fn save(endpoint: &str, dir: &Path) -> PathBuf {
    let file = dir.join("backup.db");
    let out = etcdctl_at(endpoint, &["snapshot", "save", file.to_str().unwrap()]);
    let text = ok_stdout(&out);
    assert!(
        text.contains(&format!("Snapshot saved at {}", file.display())),
        "{text}"
    );
    let len = std::fs::metadata(&file).unwrap().len();
    assert_eq!(
        len % 512,
        32,
        "{len} bytes: a 512-byte multiple and a SHA-256"
    );
    file
}

/// `snapshot status -w json`'s revision.
fn status_revision(file: &Path) -> i64 {
    let out = snapshot_tool(&["status", file.to_str().unwrap(), "-w", "json"]);
    json(&ok_stdout(&out))["revision"].as_i64().unwrap()
}

/// What a restored member must serve: everything the source held at `rev`.
async fn assert_restored(c: &mut Client, expect: &[KvRow], rev: i64, compact: i64) {
    let (kvs, header_rev) = keys_at(c, 0).await;
    assert_eq!(
        header_rev, rev,
        "a restored member is at the snapshot's revision"
    );
    assert_eq!(kvs.len(), expect.len());
    assert!(
        kvs == expect,
        "restored keys differ from the source at {rev}"
    );
    // History older than the compaction is gone, what is newer is there.
    let below = c
        .get("k/000", Some(GetOptions::new().with_revision(compact - 1)))
        .await;
    assert_eq!(grpc_status(below).message(), COMPACTED);
    let at = c
        .get("k/000", Some(GetOptions::new().with_revision(compact)))
        .await
        .unwrap();
    assert_eq!(at.kvs().len(), 1);
    // The lease came along with its keys.
    let ttl = c
        .lease_time_to_live(LEASE_ID, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert!(
        ttl.ttl() > 0,
        "lease alive after the restore: {}",
        ttl.ttl()
    );
    let mut keys = ttl.keys().to_vec();
    keys.sort();
    assert_eq!(keys, vec![b"leased/a".to_vec(), b"leased/b".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_under_writes_then_restore() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let compact = write_history(&mut c).await;
    // Some bulk (3 MB, under the client's 4 MiB response limit), so that
    // the save takes a while.
    for t in 0..12 {
        let ops: Vec<TxnOp> = (0..125)
            .map(|i| TxnOp::put(format!("bulk/{t:02}/{i:03}"), vec![b'b'; 2048], None))
            .collect();
        c.txn(Txn::new().and_then(ops)).await.unwrap();
    }

    // Writers keep going while the snapshot is taken: it is one revision.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut w, stop) = (s.client().await, stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                w.put(format!("w/{n:05}"), "x", None).await.unwrap();
                n += 1;
            }
            n
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let endpoint = s.endpoint();
    let out_dir = dir.path().to_path_buf();
    let file = tokio::task::spawn_blocking(move || save(&endpoint, &out_dir))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let rev = status_revision(&file);
    assert!(rev > compact, "snapshot revision {rev}");
    eprintln!("snapshot at revision {rev}, {written} puts ran alongside");
    let (expect, _) = keys_at(&mut c, rev).await;
    let (now, now_rev) = keys_at(&mut c, 0).await;
    assert!(
        now_rev > rev && now.len() > expect.len(),
        "no write came after the snapshot's revision"
    );

    let r = TestServer::start_restored(&file).await;
    let mut rc = r.client().await;
    assert_restored(&mut rc, &expect, rev, compact).await;
    // The restored member goes on from there.
    let put = rc.put("k/next", "n", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), rev + 1);
}

/// A backup of `write_history` from a one-member server (stopped
/// afterwards): its dir, the file, every key and the revision, and the
/// compaction revision.
struct Backup {
    _dir: tempfile::TempDir,
    file: PathBuf,
    keys: Vec<KvRow>,
    rev: i64,
    compact: i64,
}

async fn take_backup() -> Backup {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let compact = write_history(&mut c).await;
    let dir = tempfile::tempdir().unwrap();
    let file = save(&s.endpoint(), dir.path());
    let (keys, rev) = keys_at(&mut c, 0).await;
    Backup {
        _dir: dir,
        file,
        keys,
        rev,
        compact,
    }
}

/// One new cluster: a write through member 0 is the revision after the
/// backup's, read linearizably through member 2 (which waits for its
/// apply).
async fn write_through_0_read_through_2(cluster: &TestCluster, rev: i64) {
    let mut c0 = cluster.member(0).client().await;
    let put = c0.put("k/next", "n", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), rev + 1);
    let mut c2 = cluster.member(2).client().await;
    let got = c2.get("k/next", None).await.unwrap();
    assert_eq!(got.kvs()[0].mod_revision(), rev + 1);
}

#[tokio::test]
async fn restore_into_three_members() {
    let b = take_backup().await;
    let cluster = TestCluster::start_restored(3, &b.file, &[]).await;
    for i in 0..3 {
        let mut mc = cluster.member(i).client().await;
        assert_restored(&mut mc, &b.keys, b.rev, b.compact).await;
    }
    write_through_0_read_through_2(&cluster, b.rev).await;
}

/// A member that joins the restored cluster with an empty data dir (its
/// restore forgotten) must catch up to the restored data, not replay the
/// new cluster's log onto an empty store: the log starts after the
/// restored snapshot, so the leader sends it the snapshot.
#[tokio::test]
async fn member_without_a_restore_receives_the_snapshot() {
    if target() == Target::Etcd {
        // etcd's procedure restores every member from the file; this pins
        // down what oxcd does when one was forgotten.
        eprintln!("skipped on etcd: oxcd's behaviour for an unrestored member");
        return;
    }
    let b = take_backup().await;
    let (expect, rev, compact) = (&b.keys, b.rev, b.compact);
    let cluster = TestCluster::start_restored(3, &b.file, &[2]).await;
    write_through_0_read_through_2(&cluster, rev).await;
    let mut c2 = cluster.member(2).client().await;
    let (now, now_rev) = keys_at(&mut c2, 0).await;
    assert_eq!(now_rev, rev + 1);
    let (before, _) = keys_at(&mut c2, rev).await;
    assert!(
        &before == expect,
        "the blank member's keys at {rev} differ from the backup's"
    );
    assert_eq!(now.len(), expect.len() + 1);
    let below = c2
        .get("k/000", Some(GetOptions::new().with_revision(compact - 1)))
        .await;
    assert_eq!(grpc_status(below).message(), COMPACTED);
    assert!(cluster.member(2).full_log().contains("installed snapshot"));
}

/// Runs `snapshot restore FILE --data-dir DIR` (one member, defaults).
fn restore(file: &Path, data_dir: &Path) -> std::process::Output {
    snapshot_tool(&[
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
    ])
}

fn stderr(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Writes `bytes` as a snapshot file named `name` in `dir` and checks that
/// restore refuses it with `message`.
fn assert_refused(dir: &Path, name: &str, bytes: &[u8], message: &str) {
    let file = dir.join(format!("{name}.db"));
    std::fs::write(&file, bytes).unwrap();
    let data_dir = dir.join(format!("from-{name}"));
    let out = restore(&file, &data_dir);
    assert!(!out.status.success(), "restored {name}: {}", stderr(&out));
    assert!(stderr(&out).contains(message), "{}", stderr(&out));
    if target() == Target::Oxcd {
        // etcdutl 3.5.1 leaves a partial data dir behind, and its status
        // does not check the hash; oxcd does neither.
        assert!(
            !data_dir.exists(),
            "a failed restore left {}",
            data_dir.display()
        );
        let status = snapshot_tool(&["status", file.to_str().unwrap()]);
        assert!(!status.status.success(), "status of {name} succeeded");
    }
}

#[tokio::test]
async fn restore_refuses_damaged_files_and_existing_dirs() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    for i in 0..200 {
        c.put(format!("k/{i:03}"), vec![b'x'; 100], None)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = save(&s.endpoint(), dir.path());
    let bytes = std::fs::read(&file).unwrap();

    // One flipped bit in the middle.
    let mut damaged = bytes.clone();
    damaged[bytes.len() / 2] ^= 0x10;
    assert_refused(dir.path(), "flipped", &damaged, "expected sha256 [");
    // Cut short: the tail (and so the checksum) is missing.
    assert_refused(
        dir.path(),
        "cut",
        &bytes[..bytes.len() - 1000],
        "snapshot missing hash",
    );

    // A data dir that exists is never touched.
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("keep"), "mine").unwrap();
    let out = restore(&file, &existing);
    assert!(!out.status.success());
    let refused = format!(
        "data-dir {:?} not empty or could not be read",
        existing.display().to_string()
    );
    assert!(stderr(&out).contains(&refused), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(existing.join("keep")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&existing).unwrap().count(), 1);

    // The undamaged file restores, also into an empty dir that exists.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = restore(&file, &empty);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read_dir(&empty).unwrap().count() > 0);
}

/// The stream as a client library sees it, from a follower: data in chunks
/// of at most 32 KiB with `remaining_bytes` counting down to 0, then one
/// message of the data's SHA-256 (also `remaining_bytes` 0); the data a
/// multiple of 512 bytes.
#[tokio::test]
async fn snapshot_stream_from_a_follower() {
    use sha2::{Digest, Sha256};

    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await.expect("a leader");
    let mut c = cluster.member(leader).client().await;
    for i in 0..300 {
        c.put(format!("k/{i:03}"), vec![b'v'; 1000], None)
            .await
            .unwrap();
    }
    let follower = (leader + 1) % 3;
    let mut fc = cluster.member(follower).client().await;
    // The follower has applied everything the leader acknowledged.
    fc.get("k/299", None).await.unwrap();
    let mut stream = fc.snapshot().await.unwrap();
    let mut messages = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        messages.push((m.remaining_bytes(), m.blob().to_vec()));
    }
    let (sha, data) = messages.split_last().expect("messages");
    let total: usize = data.iter().map(|(_, b)| b.len()).sum();
    assert!(total > 300_000, "{total} bytes for 300 KB of values");
    assert_eq!(total % 512, 0);
    let mut left = total;
    let mut all = Vec::with_capacity(total);
    for (remaining, blob) in data {
        assert!(
            !blob.is_empty() && blob.len() <= 32 * 1024,
            "{}",
            blob.len()
        );
        left -= blob.len();
        assert_eq!(*remaining, left as u64);
        all.extend_from_slice(blob);
    }
    assert_eq!(sha.0, 0);
    assert_eq!(sha.1, Sha256::digest(&all).to_vec());
}
