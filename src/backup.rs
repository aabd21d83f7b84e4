//! Backups as etcd takes and restores them: `Maintenance.Snapshot` streams
//! one (what `etcdctl snapshot save` writes to a file), `oxcd snapshot
//! restore` turns one into the data dir of a member of a new cluster (as
//! `etcdutl snapshot restore` does) and `oxcd snapshot status` checks one and
//! says what it holds.
//!
//! ```text
//! oxcd snapshot restore FILE [--data-dir DIR] [--name NAME] [--initial-cluster ...]
//!                            [--initial-cluster-token TOKEN] [--initial-advertise-peer-urls URLS]
//! oxcd snapshot status FILE [-w simple|table|json]
//! ```
//!
//! The file has etcd's shape and oxcd's contents: a payload, padded with
//! zeros to a multiple of 512 bytes as a bbolt file is, then the SHA-256 of
//! the payload, the 32 bytes that etcd's server sends as the stream's last
//! message and that its clients and restore check. The payload is
//! [`MAGIC`] and the MVCC store's logical snapshot at one revision (every
//! revision not compacted, the compaction point, the leases), without
//! Raft's applied state. A restore writes it as the Raft snapshot that a
//! new cluster's log starts after (with the new membership), as etcd's
//! restore writes a snapshot and a WAL that starts after it: members
//! install it on their first start, and a member that joins without one
//! is sent it. etcd's bbolt snapshots and oxcd's backups are not
//! interchangeable; each tool refuses the other's file and says so.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::cluster::Bootstrap;
use crate::config::{Config, ETCD_CLUSTER_VERSION};
use crate::error::Error;
use crate::mvcc::{self, StorageError, Store};
use crate::proto::etcdserverpb::SnapshotResponse;
use crate::raft::state_machine::write_restored_snapshot;

/// The first bytes of every backup's payload.
pub const MAGIC: &[u8; 16] = b"oxcd-backup-v1\n\0";
/// The SHA-256 of the payload ends the file.
pub const SHA_LEN: usize = 32;
/// Bytes per SnapshotResponse, as etcd's `snapshotSendBufferSize`.
pub const CHUNK: usize = 32 * 1024;

/// etcd's clients take a download for a snapshot only if its length is 32
/// more than a multiple of 512 (a bbolt file's pages, then the SHA-256):
/// the payload is padded with zeros to a multiple of this.
pub const PAD_TO: u64 = 512;

/// Writes a backup payload of `store` at its current revision to `w` and
/// returns that revision. Holds compaction back while it writes; writers
/// and readers go on.
pub fn write_payload(store: &Store, w: &mut impl Write) -> Result<i64, StorageError> {
    let snapshot = store.snapshot()?.without_applied_meta();
    let mut w = Counting { inner: w, n: 0 };
    w.write_all(MAGIC)?;
    snapshot.write_to(&mut w)?;
    let pad = (PAD_TO - w.n % PAD_TO) % PAD_TO;
    w.write_all(&vec![0; pad as usize])?;
    Ok(snapshot.revision())
}

struct Counting<'a, W> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The payload, in an unnamed file in `dir` (gone when dropped), read from
/// its start; with its length and revision. A snapshot install from the
/// leader that replaces the store meanwhile voids a write; it is retried.
fn payload_file(store: &Store, dir: &Path) -> Result<(File, u64, i64), StorageError> {
    const ATTEMPTS: usize = 3;
    for attempt in 1.. {
        let mut w = BufWriter::new(tempfile::tempfile_in(dir)?);
        match write_payload(store, &mut w) {
            Ok(revision) => {
                let mut f = w.into_inner().map_err(|e| e.into_error())?;
                let len = f.stream_position()?;
                f.seek(SeekFrom::Start(0))?;
                return Ok((f, len, revision));
            }
            Err(StorageError::SnapshotSuperseded) if attempt < ATTEMPTS => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

/// Serves `Maintenance.Snapshot`: the payload is written to a temporary
/// file in `dir` first (so compaction, and a snapshot install from the
/// leader, wait only for the store's pace, not the client's, and
/// `remaining_bytes` is exact), then sent in [`CHUNK`]s and followed by
/// its SHA-256, as etcd sends its database. One backup is staged at a
/// time, and only with the store's size free beside it.
pub fn serve(store: Store, dir: PathBuf) -> ReceiverStream<Result<SnapshotResponse, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = send(&store, &dir, &tx) {
            tracing::warn!(error = %e, "sending a snapshot failed");
            let _ = tx.blocking_send(Err(Error::internal(e).into()));
        }
    });
    ReceiverStream::new(rx)
}

type Sender = tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>;

/// Room left free in the data dir's file system after staging a backup.
const STAGING_HEADROOM: u64 = 64 << 20;

/// One backup is staged at a time per member.
static STAGING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Free bytes for an unprivileged writer in `dir`'s file system.
fn free_space(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

fn send(store: &Store, dir: &Path, tx: &Sender) -> Result<(), StorageError> {
    // The staged copy must not take the space the store itself needs to go
    // on applying (a failed write there stops the member): the logical
    // copy is smaller than the store's files, so their size bounds it.
    let staging = STAGING.lock().unwrap_or_else(|e| e.into_inner());
    let need = store.size_on_disk().max(0) as u64 + STAGING_HEADROOM;
    let free = free_space(dir)?;
    if free < need {
        return Err(StorageError::Io(std::io::Error::other(format!(
            "not enough free space in {} to stage a snapshot: {free} bytes free, {need} needed",
            dir.display()
        ))));
    }
    let (mut file, total, revision) = payload_file(store, dir)?;
    drop(staging);
    tracing::info!(
        revision,
        total_bytes = total,
        "sending a snapshot to a client"
    );
    let response = |remaining_bytes, blob| SnapshotResponse {
        header: None,
        remaining_bytes,
        blob,
        version: ETCD_CLUSTER_VERSION.to_string(),
    };
    let mut sha = Sha256::new();
    let mut sent = 0u64;
    while sent < total {
        let mut blob = vec![0; (total - sent).min(CHUNK as u64) as usize];
        file.read_exact(&mut blob)?;
        sent += blob.len() as u64;
        sha.update(&blob);
        if tx.blocking_send(Ok(response(total - sent, blob))).is_err() {
            tracing::info!(revision, sent, "snapshot client went away");
            return Ok(());
        }
    }
    let _ = tx.blocking_send(Ok(response(0, sha.finalize().to_vec())));
    tracing::info!(revision, total_bytes = total, "sent a snapshot");
    Ok(())
}

/// A backup file whose trailer matched: its payload's length (the file's,
/// less the trailer) and CRC-32C (`status`'s hash).
#[derive(Debug)]
pub struct Verified {
    pub payload: u64,
    pub crc32c: u32,
}

/// Checks a backup file: its SHA-256 trailer and its magic, in one read.
pub fn verify(path: &Path) -> anyhow::Result<Verified> {
    let mut f =
        BufReader::new(File::open(path).with_context(|| format!("open {}", path.display()))?);
    let len = f.get_ref().metadata()?.len();
    // etcd's rule for whether a file ends in its hash.
    if len % PAD_TO != SHA_LEN as u64 || len < PAD_TO {
        bail!(
            "{}: snapshot missing hash ({len} bytes is not 32 past a multiple of 512: cut short?)",
            path.display()
        );
    }
    let mut magic = [0u8; MAGIC.len()];
    f.read_exact(&mut magic)?;
    if &magic != MAGIC {
        bail!(
            "{}: not an oxcd snapshot (etcd's bbolt snapshots cannot be restored by oxcd)",
            path.display()
        );
    }
    let payload = len - SHA_LEN as u64;
    let mut digests = Digests {
        sha: Sha256::new(),
        crc32c: 0,
    };
    digests.write_all(&magic)?;
    std::io::copy(
        &mut (&mut f).take(payload - MAGIC.len() as u64),
        &mut digests,
    )?;
    let Digests { sha, crc32c } = digests;
    let mut want = [0u8; SHA_LEN];
    f.read_exact(&mut want)?;
    let got = sha.finalize();
    if got.as_slice() != want {
        // etcdutl's words, with the file named.
        bail!(
            "{}: expected sha256 {}, got {}",
            path.display(),
            go_bytes(&want),
            go_bytes(&got)
        );
    }
    Ok(Verified { payload, crc32c })
}

/// A byte slice as Go's `%v` prints it (`[1 237 102]`), as etcdutl does.
fn go_bytes(bytes: &[u8]) -> String {
    let parts: Vec<String> = bytes.iter().map(|b| b.to_string()).collect();
    format!("[{}]", parts.join(" "))
}

/// The two digests of a payload, fed as it is read.
struct Digests {
    sha: Sha256,
    crc32c: u32,
}

impl Write for Digests {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sha.update(buf);
        self.crc32c = crc32c::crc32c_append(self.crc32c, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The payload's MVCC stream (past the magic), up to the trailer.
fn open_payload(path: &Path, payload: u64) -> anyhow::Result<std::io::Take<BufReader<File>>> {
    let mut f = BufReader::new(File::open(path)?);
    f.seek(SeekFrom::Start(MAGIC.len() as u64))?;
    Ok(f.take(payload - MAGIC.len() as u64))
}

/// After the MVCC stream's end record: only the padding, zeros.
fn check_padding(r: &mut impl Read) -> anyhow::Result<()> {
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)?;
    if rest.len() as u64 >= PAD_TO || rest.iter().any(|&b| b != 0) {
        bail!(
            "{} unexpected bytes after the snapshot's end record",
            rest.len()
        );
    }
    Ok(())
}

#[derive(Debug, Parser)]
#[command(
    name = "oxcd snapshot",
    about = "Restore or check a snapshot taken with `etcdctl snapshot save`"
)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Make a new member's data dir from a snapshot (as `etcdutl snapshot restore`).
    Restore(RestoreArgs),
    /// Check a snapshot and print its hash, revision, keys and size (as `etcdutl snapshot status`).
    Status(StatusArgs),
}

/// etcdutl's flags and defaults, but for the data dir's (oxcd's `<name>.oxcd`).
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// The data dir to create (default: `<name>.oxcd`); it must not exist or be empty.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// This member's name in `--initial-cluster`.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The new cluster's members, `name=peerURL,...`.
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// The new cluster's token.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// Output format: simple, table or json.
    #[arg(short = 'w', long = "write-out", default_value = "simple")]
    pub write_out: String,
}

/// `oxcd snapshot ...` with `args` (without the `snapshot` word itself).
pub fn main(args: impl Iterator<Item = String>) -> std::process::ExitCode {
    let args = SnapshotArgs::parse_from(std::iter::once("oxcd snapshot".to_string()).chain(args));
    let result = match args.command {
        SnapshotCommand::Restore(a) => restore(&a).map(|r| {
            println!(
                "restored snapshot at revision {} into {} (member {:x} of cluster {:x})",
                r.revision,
                r.data_dir.display(),
                r.member_id,
                r.cluster_id
            )
        }),
        SnapshotCommand::Status(a) => status(&a).map(|s| print!("{s}")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What a restore made.
#[derive(Debug)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub revision: i64,
    pub cluster_id: u64,
    pub member_id: u64,
}

/// Checks the new cluster's flags and the file's SHA-256, then writes the
/// data dir: a Raft snapshot of the backup at the start of the new
/// cluster's log, with its membership
/// (`state_machine::write_restored_snapshot`), which the member installs
/// on its first start. A member that joins the new cluster without a
/// restored data dir therefore receives the snapshot, never a log replay
/// onto an empty store. The MVCC stream is checked record by record as it
/// is copied; nothing is left behind on any failure (an empty data dir
/// that existed is left empty).
pub fn restore(a: &RestoreArgs) -> anyhow::Result<Restored> {
    // The same parsing and checks as the server's own start-up.
    let config = Config::try_parse_from([
        "oxcd",
        "--name",
        &a.name,
        "--initial-cluster",
        &a.initial_cluster,
        "--initial-cluster-token",
        &a.initial_cluster_token,
        "--initial-advertise-peer-urls",
        &a.initial_advertise_peer_urls,
    ])?;
    let boot = Bootstrap::from_config(&config).map_err(anyhow::Error::msg)?;
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.oxcd", a.name)));
    // As etcdutl 3.5: an empty dir may be restored into, nothing else.
    if data_dir.exists() && !is_empty_dir(&data_dir) {
        bail!(
            "data-dir {:?} not empty or could not be read",
            data_dir.display().to_string()
        );
    }
    let payload = verify(&a.file)?.payload;
    let existed = data_dir.exists();
    let written = (|| -> anyhow::Result<mvcc::SnapshotSummary> {
        std::fs::create_dir_all(&data_dir)?;
        let mut r = open_payload(&a.file, payload)?;
        let summary =
            write_restored_snapshot(&data_dir.join("snap"), boot.members.clone(), &mut r)?;
        check_padding(&mut r)?;
        File::open(&data_dir)?.sync_all()?;
        let parent = match data_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
        Ok(summary)
    })();
    match written {
        Ok(summary) => Ok(Restored {
            data_dir,
            revision: summary.revision,
            cluster_id: boot.cluster_id,
            member_id: boot.member_id,
        }),
        Err(e) => {
            let _ = if existed {
                std::fs::remove_dir_all(data_dir.join("snap"))
            } else {
                std::fs::remove_dir_all(&data_dir)
            };
            Err(e.context(format!("restore {}", a.file.display())))
        }
    }
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// etcdutl's `snapshot status` columns, after the SHA-256 check (which
/// etcdutl's status skips). The hash is the CRC-32C of the payload (etcd's
/// is a CRC-32 of its bbolt buckets); total keys are the key revisions and
/// leases stored; the size is the payload's, without the SHA-256.
pub fn status(a: &StatusArgs) -> anyhow::Result<String> {
    let Verified {
        payload,
        crc32c: crc,
    } = verify(&a.file)?;
    let mut r = open_payload(&a.file, payload)?;
    let summary = mvcc::read_snapshot_summary(&mut r)
        .with_context(|| format!("read {}", a.file.display()))?;
    check_padding(&mut r)?;
    let total_keys = summary.revisions + summary.leases;
    // As etcd's, the size of what the hash covers.
    let size = payload;
    Ok(match a.write_out.as_str() {
        "simple" => format!(
            "{crc:x}, {}, {total_keys}, {}\n",
            summary.revision,
            human_bytes(size)
        ),
        "table" => {
            let row = [
                format!("{crc:x}"),
                summary.revision.to_string(),
                total_keys.to_string(),
                human_bytes(size),
            ];
            let head = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let w: Vec<usize> = (0..4).map(|i| head[i].len().max(row[i].len())).collect();
            let line = format!(
                "+{}+\n",
                w.iter()
                    .map(|n| "-".repeat(n + 2))
                    .collect::<Vec<_>>()
                    .join("+")
            );
            let cells = |c: &[String]| {
                format!(
                    "|{}|\n",
                    (0..4)
                        .map(|i| format!(" {:>width$} ", c[i], width = w[i]))
                        .collect::<Vec<_>>()
                        .join("|")
                )
            };
            let head: Vec<String> = head.iter().map(|h| h.to_string()).collect();
            format!("{line}{}{line}{}{line}", cells(&head), cells(&row))
        }
        "json" => format!(
            "{{\"hash\":{crc},\"revision\":{},\"totalKey\":{total_keys},\"totalSize\":{size}}}\n",
            summary.revision
        ),
        other => bail!("unknown output format {other:?} (simple, table or json)"),
    })
}

/// go-humanize's `Bytes`, which etcdutl prints sizes with: SI units, one
/// decimal below 10.
fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let v = ((n as f64 / 1000f64.powi(e as i32)) * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 {
        format!("{v:.1} {}", units[e])
    } else {
        format!("{v:.0} {}", units[e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state_machine::{restored_log_id, StateMachine};

    /// A file of `payload` and its SHA-256, in `dir`.
    fn file_with_hash(dir: &Path, payload: &[u8]) -> PathBuf {
        let path = dir.join("f.db");
        let mut bytes = payload.to_vec();
        bytes.extend_from_slice(&Sha256::digest(payload));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn verify_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        // Hash right, but not ours (an etcd bbolt file starts with a page).
        let path = file_with_hash(dir.path(), &[0u8; 1024]);
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("not an oxcd snapshot"), "{err}");
        // Ours, hash wrong.
        let mut payload = MAGIC.to_vec();
        payload.resize(512, 0);
        let path = file_with_hash(dir.path(), &payload);
        assert_eq!(verify(&path).unwrap().payload, 512);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] = 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("expected sha256 ["), "{err}");
        // Cut short.
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("snapshot missing hash"), "{err}");
    }

    #[test]
    fn payload_is_padded_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("source")).unwrap();
        for i in 0..50 {
            let mut a = store.begin_apply();
            a.put(&crate::proto::etcdserverpb::PutRequest {
                key: format!("k{i}").into(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .unwrap();
            a.commit().unwrap();
        }
        let (mut f, len, revision) = payload_file(&store, dir.path()).unwrap();
        assert_eq!((len % PAD_TO, revision), (0, 51));
        let mut payload = Vec::new();
        f.read_to_end(&mut payload).unwrap();
        let path = file_with_hash(dir.path(), &payload);
        let summary = status(&StatusArgs {
            file: path.clone(),
            write_out: "json".into(),
        })
        .unwrap();
        assert!(
            summary.contains("\"revision\":51,\"totalKey\":50,"),
            "{summary}"
        );
        // Padding that is not zeros is refused.
        let mut bad = payload.clone();
        *bad.last_mut().unwrap() = 7;
        let bad_path = file_with_hash(dir.path(), &bad);
        let args = |file: PathBuf, data_dir: PathBuf| RestoreArgs {
            file,
            data_dir: Some(data_dir),
            name: "default".into(),
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: "http://localhost:2380".into(),
        };
        let err = restore(&args(bad_path, dir.path().join("bad"))).unwrap_err();
        assert!(format!("{err:#}").contains("unexpected bytes"), "{err:#}");
        assert!(!dir.path().join("bad").exists());
        let path = file_with_hash(dir.path(), &payload);
        let good = dir.path().join("good");
        let restored = restore(&args(path, good.clone())).unwrap();
        assert_eq!(restored.revision, 51);
        // The member's first start installs it, at the new log's start.
        let store = Store::open(&good.join("db")).unwrap();
        assert_eq!(store.current_revision(), 1);
        let sm = StateMachine::open(store.clone(), &good.join("snap")).unwrap();
        assert_eq!(store.current_revision(), 51);
        assert_eq!(*sm.applied_index().borrow(), restored_log_id().index);
    }

    #[test]
    fn human_bytes_matches_go_humanize() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_000), "1.0 kB");
        assert_eq!(human_bytes(20_480), "20 kB");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
        assert_eq!(human_bytes(82_000_000), "82 MB");
    }
}
