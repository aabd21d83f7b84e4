//! The write-ahead log, which is the Raft log.
//!
//! # On disk
//!
//! A directory of segment files, each named `{seq:016x}-{first_index:016x}.wal`
//! (`seq` orders the segments, `first_index` is the log index the segment was
//! opened to receive), each a plain sequence of framed records (see
//! [`record`]):
//!
//! ```text
//! <dir>/0000000000000001-0000000000000001.wal   [Vote][Committed][E1][E2]...[E900]
//! <dir>/0000000000000002-0000000000000385.wal   [Vote][Committed][Purged][E901]...
//!        └ seq              └ first index        └ head: the state when it was opened
//! ```
//!
//! Record types: `Entry{index, data}`, `Vote`, `Committed`, `Purged{index,
//! log_id}`. Vote, committed and purged are "last one wins" in scan order.
//!
//! # Invariants
//!
//! - Entry indexes strictly increase in scan order. openraft never leaves a
//!   hole, but its conformance suite appends with gaps, so a forward gap is
//!   representable; a repeated or decreasing index is corruption.
//! - Conflict truncation is physical: the file is cut at the record offset and
//!   later segments are deleted, so no stale entry is ever left to shadow a
//!   newer one.
//! - Every new segment starts with the current vote, committed and purged
//!   records, so deleting any segment but the newest never loses them.
//! - A segment is removed by a purge only when every entry it holds is at or
//!   below the purged index and it is not the newest segment.
//!
//! # Durability points
//!
//! - Appends are queued to one writer thread that owns the files. It drains
//!   everything queued, writes it, issues **one** `fdatasync` for the batch,
//!   and only then completes every waiter (and openraft's `LogFlushed`).
//! - `save_vote` waits for that fsync. `save_committed` does not wake a
//!   busy writer: the newest committed record is written with the writer's
//!   next batch, or alone at most [`COMMITTED_DELAY`] after it was saved if
//!   no batch comes (without an fsync: it is durable with the next one), or
//!   at close. Only a writer that expects nothing (idle before the commit)
//!   is woken for it.
//! - Segments are preallocated (`segment::create`): an append writes at the
//!   end of the records, inside the file, so its `fdatasync` need not write
//!   the inode too. Only the newest segment has a zero tail; recovery reads
//!   it as the end.
//! - Rolling to a new segment cuts the old one to its records and fsyncs
//!   it first, then creates the new file and fsyncs the directory.
//! - Truncate deletes later segments (newest first), fsyncs the directory,
//!   zeroes the file from the cut on and fsyncs it before anything else is
//!   written, so a crash leaves either the old log or a prefix of it, never
//!   a mix, and no cut record is ever read back behind newer ones.
//! - Purge writes and fsyncs the `Purged` record before deleting segments
//!   (oldest first), then fsyncs the directory.
//!
//! # Recovery (see [`recovery`])
//!
//! Every segment is scanned on open. A bad record (short header, short
//! payload, bad length, CRC mismatch) in the newest segment with no valid
//! record anywhere after it up to EOF is a torn write from a crash: the file
//! is zeroed from there and a warning logged (zeros alone are the
//! preallocated end, not a torn write). Anything else — a bad record in an
//! older segment, a bad record followed by a valid one, or an index that does
//! not increase — is
//! corruption: `open` fails with [`WalError::Corrupt`] naming file and offset.
//!
//! # Reads
//!
//! An in-memory map index → slot serves reads. A slot holds either the
//! encoded entry (between `append` and the writer writing it, so entries are
//! readable as soon as `append` returns) or its file and offset; disk reads
//! verify the CRC again so bit rot is never served.

pub mod record;
pub mod recovery;
pub mod segment;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use record::Record;
use segment::SegmentId;

/// Longest a committed record waits for a batch to ride with before the
/// writer writes it alone. Of the order of an fsync under load, which the
/// record used to queue behind.
pub const COMMITTED_DELAY: Duration = Duration::from_millis(2);

/// Errors from the WAL. `Corrupt` is the one an operator sees when the
/// server refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("wal corrupt: {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("wal: invalid request: {0}")]
    Invalid(String),
    #[error("wal writer failed earlier, refusing further writes: {0}")]
    Failed(String),
}

impl WalError {
    pub(crate) fn io(path: &Path, source: io::Error) -> WalError {
        WalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Roll to a new segment once the current one reaches this size.
    pub segment_size: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: 64 * 1024 * 1024,
        }
    }
}

/// Called by the writer thread once the operation is durable (or failed).
pub type Completion = Box<dyn FnOnce(Result<(), WalError>) + Send>;

enum SlotData {
    /// Queued, not yet written: served from memory.
    Pending(Arc<[u8]>),
    /// Written at `offset` (framed record of `len` bytes) in segment `seq`.
    OnDisk {
        file: Arc<File>,
        seq: u64,
        offset: u64,
        len: u32,
    },
}

struct Slot {
    /// Distinguishes this append of `index` from an earlier, truncated one,
    /// so the writer never marks a replaced slot as written.
    generation: u64,
    data: SlotData,
}

/// State shared by callers, readers and the writer thread.
struct Shared {
    dir: PathBuf,
    slots: BTreeMap<u64, Slot>,
    next_generation: u64,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    /// `committed` changed since the writer last wrote it.
    committed_unwritten: bool,
    /// The writer is blocked until the next command, with no deadline:
    /// `save_committed` must wake it.
    writer_idle: bool,
    purged: Option<(u64, Vec<u8>)>,
    /// Set when the writer hit an I/O error; all later writes fail.
    failed: Option<String>,
}

enum Cmd {
    Append {
        entries: Vec<(u64, u64, Arc<[u8]>)>,
        done: Completion,
    },
    Vote(Vec<u8>, Completion),
    /// Nothing to do but write the committed record (see `save_committed`).
    Wake,
    Truncate(u64, Completion),
    Purge(u64, Vec<u8>, Completion),
}

struct Inner {
    shared: Arc<Mutex<Shared>>,
    syncs: Arc<AtomicU64>,
    /// Commands sent and not yet taken by the writer (see [`Backlog`]).
    queued: Arc<AtomicUsize>,
    /// Locked before `shared` is unlocked, so commands queue in the order
    /// of their changes to it, and the writer is woken only after `shared`
    /// is free (see [`Wal::send`]).
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel stops the writer after it drains the queue;
        // joining makes a reopen of the same directory safe.
        drop(self.tx.get_mut().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

/// How many commands wait for the writer; read from a completion, whether
/// the next batch was already queued when this one became durable (the
/// log is under load, and its callers' threads are busy).
#[derive(Clone)]
pub struct Backlog(Arc<AtomicUsize>);

impl Backlog {
    pub fn is_empty(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }
}

/// A handle to the WAL; clones share it. See the module docs.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`, running recovery.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(|e| WalError::io(dir, e))?;
        let rec = recovery::recover(dir)?;

        let mut segs = Vec::new();
        for s in &rec.segments {
            let path = s.id.path(dir);
            let file = segment::open_rw(&path).map_err(|e| WalError::io(&path, e))?;
            let max_index = rec
                .entries
                .iter()
                .rev()
                .find(|(_, p)| p.seq == s.id.seq)
                .map(|(i, _)| *i);
            segs.push(WSeg {
                id: s.id,
                file,
                size: s.size,
                max_index,
            });
        }
        // The newest segment receives appends: preallocate it if it is not
        // (written before segments were, or cut short by a crash).
        if let Some(last) = segs.last() {
            let path = last.id.path(dir);
            let len = last
                .file
                .metadata()
                .map_err(|e| WalError::io(&path, e))?
                .len();
            if len < opts.segment_size {
                last.file
                    .set_len(opts.segment_size)
                    .map_err(|e| WalError::io(&path, e))?;
            }
        }
        let mut fresh = false;
        if segs.is_empty() {
            let first_index = rec.purged.as_ref().map_or(1, |(p, _)| p + 1);
            let id = SegmentId {
                seq: 1,
                first_index,
            };
            let file =
                segment::create(dir, id, opts.segment_size).map_err(|e| WalError::io(dir, e))?;
            segs.push(WSeg {
                id,
                file,
                size: 0,
                max_index: None,
            });
            fresh = true;
        }

        let mut slots = BTreeMap::new();
        let mut index = BTreeMap::new();
        for (i, p) in &rec.entries {
            let file = segs
                .iter()
                .find(|s| s.id.seq == p.seq)
                .expect("segment of entry")
                .file
                .clone();
            slots.insert(
                *i,
                Slot {
                    generation: 0,
                    data: SlotData::OnDisk {
                        file,
                        seq: p.seq,
                        offset: p.offset,
                        len: p.len,
                    },
                },
            );
            index.insert(*i, (p.seq, p.offset));
        }
        tracing::info!(
            dir = %dir.display(),
            segments = segs.len(),
            first_index = ?rec.entries.keys().next(),
            last_index = ?rec.entries.keys().next_back(),
            fresh,
            "wal opened"
        );

        let shared = Arc::new(Mutex::new(Shared {
            dir: dir.to_path_buf(),
            slots,
            next_generation: 1,
            vote: rec.vote.clone(),
            committed: rec.committed.clone(),
            committed_unwritten: false,
            writer_idle: false,
            purged: rec.purged.clone(),
            failed: None,
        }));
        let syncs = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            opts,
            shared: shared.clone(),
            syncs: syncs.clone(),
            queued: queued.clone(),
            segs,
            index,
            vote: rec.vote,
            committed: rec.committed,
            purged: rec.purged,
            buf: Vec::new(),
            written: Vec::new(),
            dirty: false,
        };
        let handle = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| WalError::io(dir, e))?;
        Ok(Wal {
            inner: Arc::new(Inner {
                shared,
                syncs,
                queued,
                tx: Mutex::new(Some(tx)),
                writer: Some(handle),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.inner.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `cmds` for the writer, after the changes made under `sh`.
    /// The queue is taken before `sh` is released, so commands keep the
    /// order of those changes, and `sh` is released before the writer is
    /// woken: a writer woken while the caller still held `sh` ran straight
    /// into it (it takes `sh` right away), blocked, and had to be woken
    /// again, two more context switches per append.
    fn send(
        &self,
        sh: MutexGuard<'_, Shared>,
        cmds: impl IntoIterator<Item = Cmd>,
    ) -> Result<(), WalError> {
        if let Some(f) = &sh.failed {
            return Err(WalError::Failed(f.clone()));
        }
        let tx = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
        drop(sh);
        let tx = tx.as_ref().expect("sender lives as long as Inner");
        for cmd in cmds {
            self.inner.queued.fetch_add(1, Ordering::AcqRel);
            tx.send(cmd)
                .map_err(|_| WalError::Failed("writer thread is gone".into()))?;
        }
        Ok(())
    }

    /// A handle on the number of commands waiting for the writer.
    pub fn backlog(&self) -> Backlog {
        Backlog(self.inner.queued.clone())
    }

    /// Number of fsyncs the writer has issued (data syncs of segment files).
    pub fn sync_count(&self) -> u64 {
        self.inner.syncs.load(Ordering::Relaxed)
    }

    /// Queues `entries` (index, encoded entry; indexes increasing). If the
    /// first index is not past the last entry, the log is truncated there
    /// first. They are readable when this returns; `done` runs after the
    /// fsync that covers them.
    pub fn append(&self, entries: Vec<(u64, Vec<u8>)>, done: Completion) -> Result<(), WalError> {
        let mut sh = self.lock();
        let mut prev: Option<u64> = None;
        for (i, _) in &entries {
            if prev.is_some_and(|p| *i <= p) {
                return Err(WalError::Invalid(format!(
                    "append batch not increasing at index {i}"
                )));
            }
            prev = Some(*i);
        }
        // Entries a purge already covers are dropped, as recovery would drop
        // them (openraft never sends them; its conformance suite does).
        let purged = sh.purged.as_ref().map(|(p, _)| *p);
        let mut entries = entries;
        entries.retain(|(i, _)| purged.is_none_or(|p| *i > p));
        let Some(first) = entries.first().map(|(i, _)| *i) else {
            return self.send(
                sh,
                [Cmd::Append {
                    entries: Vec::new(),
                    done,
                }],
            );
        };
        let mut cmds = Vec::with_capacity(2);
        if sh.slots.keys().next_back().is_some_and(|l| first <= *l) {
            // Overwrite: an implicit truncate, queued before the append.
            drop(sh.slots.split_off(&first));
            cmds.push(Cmd::Truncate(first, Box::new(|_| {})));
        }
        let mut queued = Vec::with_capacity(entries.len());
        for (i, data) in entries {
            let generation = sh.next_generation;
            sh.next_generation += 1;
            let data: Arc<[u8]> = data.into();
            sh.slots.insert(
                i,
                Slot {
                    generation,
                    data: SlotData::Pending(data.clone()),
                },
            );
            queued.push((i, generation, data));
        }
        cmds.push(Cmd::Append {
            entries: queued,
            done,
        });
        self.send(sh, cmds)
    }

    /// Persists the vote; returns after it is fsynced.
    pub async fn save_vote(&self, vote: Vec<u8>) -> Result<(), WalError> {
        let (done, rx) = completion();
        {
            let mut sh = self.lock();
            sh.vote = Some(vote.clone());
            self.send(sh, [Cmd::Vote(vote, done)])?;
        }
        wait(rx).await
    }

    /// Records the committed log id: written within [`COMMITTED_DELAY`]
    /// (with the next append when one comes by then), durable with the next
    /// fsync. Waking the writer for every commit was a wake-up and a context
    /// switch per apply on every member; a writer that just wrote an append
    /// is waiting for its commit anyway.
    pub fn save_committed(&self, committed: Vec<u8>) -> Result<(), WalError> {
        let mut sh = self.lock();
        if let Some(f) = &sh.failed {
            return Err(WalError::Failed(f.clone()));
        }
        sh.committed = Some(committed);
        sh.committed_unwritten = true;
        if sh.writer_idle {
            sh.writer_idle = false;
            self.send(sh, [Cmd::Wake])?;
        }
        Ok(())
    }

    /// Deletes entries with index >= `index`; returns once that is durable.
    pub async fn truncate(&self, index: u64) -> Result<(), WalError> {
        let (done, rx) = completion();
        {
            let mut sh = self.lock();
            drop(sh.slots.split_off(&index));
            self.send(sh, [Cmd::Truncate(index, done)])?;
        }
        wait(rx).await
    }

    /// Deletes entries with index <= `index` and records `log_id` (encoded)
    /// as the last purged log id; returns once the record is durable.
    pub async fn purge(&self, index: u64, log_id: Vec<u8>) -> Result<(), WalError> {
        let (done, rx) = completion();
        {
            let mut sh = self.lock();
            if sh.purged.as_ref().is_some_and(|(p, _)| *p >= index) {
                return Ok(());
            }
            sh.slots = sh.slots.split_off(&(index + 1));
            sh.purged = Some((index, log_id.clone()));
            self.send(sh, [Cmd::Purge(index, log_id, done)])?;
        }
        wait(rx).await
    }

    /// Encoded entries in `range` that exist, in index order.
    pub fn read<R: RangeBounds<u64>>(&self, range: R) -> Result<Vec<(u64, Vec<u8>)>, WalError> {
        let sh = self.lock();
        let mut out = Vec::new();
        for (i, slot) in sh.slots.range(range) {
            let data = match &slot.data {
                SlotData::Pending(d) => d.to_vec(),
                SlotData::OnDisk {
                    file,
                    seq,
                    offset,
                    len,
                } => read_entry(&sh.dir, file, *seq, *offset, *len, *i)?,
            };
            out.push((*i, data));
        }
        Ok(out)
    }

    pub fn first_index(&self) -> Option<u64> {
        self.lock().slots.keys().next().copied()
    }

    pub fn last_index(&self) -> Option<u64> {
        self.lock().slots.keys().next_back().copied()
    }

    pub fn vote(&self) -> Option<Vec<u8>> {
        self.lock().vote.clone()
    }

    pub fn committed(&self) -> Option<Vec<u8>> {
        self.lock().committed.clone()
    }

    /// `(index, encoded log id)` of the last purged entry.
    pub fn purged(&self) -> Option<(u64, Vec<u8>)> {
        self.lock().purged.clone()
    }
}

fn read_entry(
    dir: &Path,
    file: &File,
    seq: u64,
    offset: u64,
    len: u32,
    index: u64,
) -> Result<Vec<u8>, WalError> {
    let path = || {
        segment::list(dir)
            .ok()
            .and_then(|ids| ids.into_iter().find(|id| id.seq == seq))
            .map_or_else(|| dir.join(format!("segment seq {seq}")), |id| id.path(dir))
    };
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| WalError::io(&path(), e))?;
    match record::decode(&buf) {
        Ok((Record::Entry { index: got, data }, _)) if got == index => Ok(data),
        Ok((other, _)) => Err(WalError::Corrupt {
            path: path(),
            offset,
            reason: format!("expected entry {index}, found {other:?}"),
        }),
        Err(why) => Err(WalError::Corrupt {
            path: path(),
            offset,
            reason: why.to_string(),
        }),
    }
}

fn completion() -> (
    Completion,
    tokio::sync::oneshot::Receiver<Result<(), WalError>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    (
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
        rx,
    )
}

async fn wait(rx: tokio::sync::oneshot::Receiver<Result<(), WalError>>) -> Result<(), WalError> {
    rx.await
        .unwrap_or_else(|_| Err(WalError::Failed("writer thread dropped the request".into())))
}

/// A segment as the writer sees it.
struct WSeg {
    id: SegmentId,
    file: Arc<File>,
    /// Bytes written to the file (excluding `Writer::buf`).
    size: u64,
    /// Highest entry index it holds, for purge decisions.
    max_index: Option<u64>,
}

/// The writer thread's state: the only code that writes segment files.
struct Writer {
    dir: PathBuf,
    opts: WalOptions,
    shared: Arc<Mutex<Shared>>,
    syncs: Arc<AtomicU64>,
    /// Decremented for every command taken (see [`Backlog`]).
    queued: Arc<AtomicUsize>,
    /// Oldest first; the last one receives writes.
    segs: Vec<WSeg>,
    /// index → (segment seq, record offset): where truncation cuts.
    index: BTreeMap<u64, (u64, u64)>,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
    /// Records encoded for the newest segment, not yet written.
    buf: Vec<u8>,
    /// Slots to mark on-disk once `buf` is written: (index, generation, offset, len).
    written: Vec<(u64, u64, u64, u32)>,
    /// Something was written since the last fsync.
    dirty: bool,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Cmd>) {
        // After a batch of appends their commit is on its way: the next
        // command is awaited at most COMMITTED_DELAY, so that the committed
        // record needs no wake-up of its own (it rides with the next batch,
        // or is written when the wait runs out).
        let mut expect_commit = false;
        loop {
            let first = if self.park(expect_commit) {
                match rx.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(COMMITTED_DELAY) {
                    Ok(c) => c,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        expect_commit = false;
                        // A lone committed record: written, not fsynced
                        // (durable with the next fsync; losing it in a
                        // crash only means learning the commit again).
                        self.take_committed();
                        if let Err(e) = self.flush() {
                            self.fail(&e);
                            return fail_queued(&rx);
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut batch = vec![first];
            while let Ok(c) = rx.try_recv() {
                batch.push(c);
            }
            self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
            expect_commit = batch.iter().any(|c| matches!(c, Cmd::Append { .. }));
            let mut waiters: Vec<Completion> = Vec::new();
            let mut result: Result<(), WalError> = Ok(());
            for cmd in batch {
                if result.is_ok() {
                    result = self.apply(cmd, &mut waiters);
                } else {
                    waiters.extend(cmd.into_completion());
                }
            }
            if result.is_ok() {
                self.take_committed();
                // Only a batch someone waits on (appends, votes, truncates,
                // purges) pays for an fsync; a wake-up for the committed
                // record alone does not.
                result = self.flush().and_then(|_| {
                    if waiters.is_empty() {
                        Ok(())
                    } else {
                        self.sync_if_dirty()
                    }
                });
            }
            if let Err(e) = &result {
                self.fail(e);
            }
            let mut first_err = result.err();
            for w in waiters {
                match first_err.take() {
                    Some(e) => w(Err(e)),
                    None if self.failed() => w(Err(WalError::Failed("see earlier error".into()))),
                    None => w(Ok(())),
                }
            }
            if self.failed() {
                return fail_queued(&rx);
            }
        }
        // Closing: the newest committed record.
        self.take_committed();
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "writing the committed record at close failed");
        }
    }

    /// Whether to block for the next command without a deadline: not while
    /// a committed record waits to be written or a commit is expected. When
    /// it blocks, `save_committed` wakes it (`writer_idle`).
    fn park(&self, expect_commit: bool) -> bool {
        let mut sh = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        sh.writer_idle = !expect_commit && !sh.committed_unwritten;
        sh.writer_idle
    }

    fn fail(&self, e: &WalError) {
        tracing::error!(error = %e, "wal writer failed; the log refuses further writes");
        let mut sh = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        sh.failed = Some(e.to_string());
    }

    /// Encodes the committed record `save_committed` left, if any, into the
    /// buffer (after this batch's records: the last one read wins).
    fn take_committed(&mut self) {
        let c = {
            let mut sh = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            if !sh.committed_unwritten {
                return;
            }
            sh.committed_unwritten = false;
            sh.committed.clone()
        };
        if let Some(c) = c {
            Record::Committed(c.clone()).encode_into(&mut self.buf);
            self.committed = Some(c);
        }
    }

    fn failed(&self) -> bool {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed
            .is_some()
    }

    fn cur(&mut self) -> &mut WSeg {
        self.segs.last_mut().expect("at least one segment")
    }

    fn cur_path(&self) -> PathBuf {
        self.segs
            .last()
            .expect("at least one segment")
            .id
            .path(&self.dir)
    }

    fn apply(&mut self, cmd: Cmd, waiters: &mut Vec<Completion>) -> Result<(), WalError> {
        match cmd {
            Cmd::Append { entries, done } => {
                waiters.push(done);
                for (index, generation, data) in entries {
                    self.maybe_roll(index)?;
                    let offset = self.cur().size + self.buf.len() as u64;
                    let before = self.buf.len();
                    Record::Entry {
                        index,
                        data: data.to_vec(),
                    }
                    .encode_into(&mut self.buf);
                    let len = (self.buf.len() - before) as u32;
                    let seq = self.cur().id.seq;
                    self.index.insert(index, (seq, offset));
                    self.cur().max_index = Some(index);
                    self.written.push((index, generation, offset, len));
                }
            }
            Cmd::Wake => {}
            Cmd::Vote(v, done) => {
                waiters.push(done);
                Record::Vote(v.clone()).encode_into(&mut self.buf);
                self.vote = Some(v);
            }
            Cmd::Truncate(index, done) => {
                waiters.push(done);
                self.truncate(index)?;
            }
            Cmd::Purge(index, log_id, done) => {
                waiters.push(done);
                self.purge(index, log_id)?;
            }
        }
        Ok(())
    }

    fn write_meta(&mut self) {
        if let Some(v) = &self.vote {
            Record::Vote(v.clone()).encode_into(&mut self.buf);
        }
        if let Some(c) = &self.committed {
            Record::Committed(c.clone()).encode_into(&mut self.buf);
        }
        if let Some((index, log_id)) = &self.purged {
            Record::Purged {
                index: *index,
                log_id: log_id.clone(),
            }
            .encode_into(&mut self.buf);
        }
    }

    fn maybe_roll(&mut self, next_index: u64) -> Result<(), WalError> {
        let cur = self.segs.last().expect("at least one segment");
        if cur.size + (self.buf.len() as u64) < self.opts.segment_size || cur.max_index.is_none() {
            return Ok(());
        }
        let seq = cur.id.seq + 1;
        self.flush()?;
        // Only the newest segment may end in preallocated zeros (recovery
        // refuses a bad record anywhere else): cut this one to its records.
        let (size, path) = (self.cur().size, self.cur_path());
        self.cur()
            .file
            .set_len(size)
            .map_err(|e| WalError::io(&path, e))?;
        self.sync()?;
        let id = SegmentId {
            seq,
            first_index: next_index,
        };
        let file = segment::create(&self.dir, id, self.opts.segment_size)
            .map_err(|e| WalError::io(&id.path(&self.dir), e))?;
        tracing::debug!(segment = %id.file_name(), "wal: rolled to new segment");
        self.segs.push(WSeg {
            id,
            file,
            size: 0,
            max_index: None,
        });
        self.write_meta();
        Ok(())
    }

    /// Writes `buf` to the newest segment and publishes the slots it holds.
    fn flush(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.cur_path();
        let cur = self.segs.last_mut().expect("at least one segment");
        cur.file
            .write_all_at(&self.buf, cur.size)
            .map_err(|e| WalError::io(&path, e))?;
        cur.size += self.buf.len() as u64;
        self.buf.clear();
        self.dirty = true;
        let (file, seq) = (cur.file.clone(), cur.id.seq);
        let mut sh = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        for (index, generation, offset, len) in self.written.drain(..) {
            if let Some(slot) = sh.slots.get_mut(&index) {
                if slot.generation == generation {
                    slot.data = SlotData::OnDisk {
                        file: file.clone(),
                        seq,
                        offset,
                        len,
                    };
                }
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WalError> {
        self.sync_file(false)
    }

    /// fdatasync the newest segment, or with `all` a full fsync (after a
    /// cut, which changes the file's block map rather than its data).
    fn sync_file(&mut self, all: bool) -> Result<(), WalError> {
        let path = self.cur_path();
        let file = &self.cur().file;
        let synced = if all {
            file.sync_all()
        } else {
            file.sync_data()
        };
        synced.map_err(|e| WalError::io(&path, e))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
        Ok(())
    }

    fn sync_if_dirty(&mut self) -> Result<(), WalError> {
        if self.dirty {
            self.sync()?;
        }
        Ok(())
    }

    fn truncate(&mut self, index: u64) -> Result<(), WalError> {
        self.flush()?;
        let Some((_, &(seq, offset))) = self.index.range(index..).next() else {
            return Ok(());
        };
        // Newest first, so a crash part-way leaves a prefix of the log.
        let mut removed = false;
        while self.segs.len() > 1 && self.cur().id.seq > seq {
            let s = self.segs.pop().expect("len > 1");
            let path = s.id.path(&self.dir);
            std::fs::remove_file(&path).map_err(|e| WalError::io(&path, e))?;
            removed = true;
        }
        if removed {
            segment::sync_dir(&self.dir).map_err(|e| WalError::io(&self.dir, e))?;
        }
        let path = self.cur_path();
        let prealloc = self.opts.segment_size;
        let cur = self.cur();
        debug_assert_eq!(cur.id.seq, seq);
        // Zeros from the cut on, so that no cut record can be read back
        // behind the shorter records appended next.
        segment::cut_at(&cur.file, offset, prealloc).map_err(|e| WalError::io(&path, e))?;
        cur.size = offset;
        // Durable before anything new lands on the same bytes.
        self.sync_file(true)?;
        drop(self.index.split_off(&index));
        let seq = self.cur().id.seq;
        let max = self
            .index
            .iter()
            .next_back()
            .filter(|(_, (s, _))| *s == seq)
            .map(|(i, _)| *i);
        self.cur().max_index = max;
        // The cut may have removed the latest vote/committed/purged records.
        self.write_meta();
        tracing::info!(index, segment = %path.display(), "wal: truncated log");
        Ok(())
    }

    fn purge(&mut self, index: u64, log_id: Vec<u8>) -> Result<(), WalError> {
        Record::Purged {
            index,
            log_id: log_id.clone(),
        }
        .encode_into(&mut self.buf);
        self.purged = Some((index, log_id));
        self.flush()?;
        self.sync()?;
        // Oldest first, so a crash part-way leaves a suffix of the segments.
        let mut removed = 0;
        while self.segs.len() > 1 && self.segs[0].max_index.is_none_or(|m| m <= index) {
            let s = self.segs.remove(0);
            let path = s.id.path(&self.dir);
            std::fs::remove_file(&path).map_err(|e| WalError::io(&path, e))?;
            removed += 1;
        }
        if removed > 0 {
            segment::sync_dir(&self.dir).map_err(|e| WalError::io(&self.dir, e))?;
        }
        self.index = self.index.split_off(&(index + 1));
        tracing::info!(index, removed_segments = removed, "wal: purged log");
        Ok(())
    }
}

/// After a write failed: fails everything still queued, until the channel
/// closes.
fn fail_queued(rx: &mpsc::Receiver<Cmd>) {
    while let Ok(c) = rx.recv() {
        if let Some(w) = c.into_completion() {
            w(Err(WalError::Failed(
                "wal writer stopped after an I/O error".into(),
            )));
        }
    }
}

impl Cmd {
    fn into_completion(self) -> Option<Completion> {
        match self {
            Cmd::Append { done, .. }
            | Cmd::Vote(_, done)
            | Cmd::Truncate(_, done)
            | Cmd::Purge(_, _, done) => Some(done),
            Cmd::Wake => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;

    use futures::executor::block_on;
    use proptest::prelude::*;

    use super::*;

    fn open(dir: &Path, segment_size: u64) -> Result<Wal, WalError> {
        Wal::open(dir, WalOptions { segment_size })
    }

    fn data(i: u64, salt: u8) -> Vec<u8> {
        format!("entry-{i}-{salt}").into_bytes()
    }

    fn append_wait(w: &Wal, entries: Vec<(u64, Vec<u8>)>) {
        let (tx, rx) = std::sync::mpsc::channel();
        w.append(entries, Box::new(move |r| tx.send(r).unwrap()))
            .unwrap();
        rx.recv().unwrap().unwrap();
    }

    fn all(w: &Wal) -> Vec<(u64, Vec<u8>)> {
        w.read(..).unwrap()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        segment::list(dir)
            .unwrap()
            .iter()
            .map(|id| id.path(dir))
            .collect()
    }

    /// Start offsets of the records in a segment file, and where they end
    /// (only zeros, the preallocated space, may follow).
    fn records(path: &Path) -> (Vec<usize>, usize) {
        let buf = fs::read(path).unwrap();
        let mut offs = Vec::new();
        let mut off = 0;
        while off < buf.len() {
            match record::decode(&buf[off..]) {
                Ok((_, n)) => {
                    offs.push(off);
                    off += n;
                }
                Err(e) => {
                    assert!(buf[off..].iter().all(|&b| b == 0), "{e} at {off}");
                    break;
                }
            }
        }
        (offs, off)
    }

    fn record_offsets(path: &Path) -> Vec<usize> {
        records(path).0
    }

    fn records_end(path: &Path) -> usize {
        records(path).1
    }

    fn flip(path: &Path, pos: usize) {
        let mut buf = fs::read(path).unwrap();
        buf[pos] ^= 0x5a;
        fs::write(path, buf).unwrap();
    }

    fn five(dir: &Path) {
        let w = open(dir, 1 << 20).unwrap();
        append_wait(&w, (1..=5).map(|i| (i, data(i, 0))).collect());
    }

    #[test]
    fn torn_tail_is_truncated_and_appends_continue() {
        let d = tempfile::tempdir().unwrap();
        five(d.path());
        let seg = &segments(d.path())[0];
        let len = records_end(seg) as u64;
        fs::OpenOptions::new()
            .write(true)
            .open(seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        {
            let w = open(d.path(), 1 << 20).unwrap();
            assert_eq!(w.last_index(), Some(4));
            append_wait(&w, vec![(5, data(5, 1))]);
        }
        let w = open(d.path(), 1 << 20).unwrap();
        let want: Vec<_> = (1..=4)
            .map(|i| (i, data(i, 0)))
            .chain([(5, data(5, 1))])
            .collect();
        assert_eq!(all(&w), want);
    }

    #[test]
    fn segments_are_preallocated_and_older_ones_cut_to_their_records() {
        let d = tempfile::tempdir().unwrap();
        let seg_size = 4096;
        {
            let w = open(d.path(), seg_size).unwrap();
            for i in 1..=3 {
                append_wait(&w, vec![(i, data(i, 0))]);
            }
            let segs = segments(d.path());
            assert_eq!(segs.len(), 1);
            assert_eq!(fs::metadata(&segs[0]).unwrap().len(), seg_size);
            assert_eq!(record_offsets(&segs[0]).len(), 3);
        }
        // Reopen: the zero tail is the end, not a torn record; appends go
        // right after the records, inside the preallocated space.
        {
            let w = open(d.path(), seg_size).unwrap();
            assert_eq!(w.last_index(), Some(3));
            for i in 4..=200 {
                append_wait(&w, vec![(i, data(i, 0))]);
            }
        }
        let segs = segments(d.path());
        assert!(segs.len() > 1);
        for (k, p) in segs.iter().enumerate() {
            let len = fs::metadata(p).unwrap().len();
            if k + 1 < segs.len() {
                assert_eq!(len, records_end(p) as u64, "{} keeps zeros", p.display());
            } else {
                assert_eq!(len, seg_size);
            }
        }
        let w = open(d.path(), seg_size).unwrap();
        assert_eq!(
            all(&w),
            (1..=200).map(|i| (i, data(i, 0))).collect::<Vec<_>>()
        );
    }

    /// A torn record in front of the zero tail is zeroed, not just skipped:
    /// shorter records appended over it must not leave its bytes behind.
    #[test]
    fn torn_record_in_preallocated_space_is_zeroed() {
        let d = tempfile::tempdir().unwrap();
        five(d.path());
        let seg = segments(d.path())[0].clone();
        let end = records_end(&seg);
        let mut torn = Vec::new();
        Record::Entry {
            index: 6,
            data: vec![7u8; 300],
        }
        .encode_into(&mut torn);
        torn.truncate(200);
        let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&torn, end as u64).unwrap();
        drop(f);
        {
            let w = open(d.path(), 1 << 20).unwrap();
            assert_eq!(w.last_index(), Some(5));
            let buf = fs::read(&seg).unwrap();
            assert_eq!(buf.len(), 1 << 20);
            assert!(buf[end..].iter().all(|&b| b == 0), "torn bytes left");
            append_wait(&w, vec![(6, data(6, 1))]);
        }
        let w = open(d.path(), 1 << 20).unwrap();
        let want: Vec<_> = (1..=5)
            .map(|i| (i, data(i, 0)))
            .chain([(6, data(6, 1))])
            .collect();
        assert_eq!(all(&w), want);
    }

    #[test]
    fn flipped_byte_mid_log_fails_naming_file_and_offset() {
        let d = tempfile::tempdir().unwrap();
        five(d.path());
        let seg = segments(d.path())[0].clone();
        let offs = record_offsets(&seg);
        flip(&seg, offs[2] + 10);
        let err = open(d.path(), 1 << 20)
            .err()
            .expect("corruption must be refused");
        let msg = err.to_string();
        assert!(msg.contains(&seg.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("offset {}", offs[2])), "{msg}");
    }

    #[test]
    fn flipped_byte_in_last_record_is_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        five(d.path());
        let seg = segments(d.path())[0].clone();
        let offs = record_offsets(&seg);
        flip(&seg, *offs.last().unwrap() + 9);
        let w = open(d.path(), 1 << 20).unwrap();
        assert_eq!(
            all(&w),
            (1..=4).map(|i| (i, data(i, 0))).collect::<Vec<_>>()
        );
    }

    #[test]
    fn flipped_byte_in_older_segment_tail_is_corruption() {
        let d = tempfile::tempdir().unwrap();
        {
            let w = open(d.path(), 100).unwrap();
            for i in 1..=20 {
                append_wait(&w, vec![(i, data(i, 0))]);
            }
        }
        let segs = segments(d.path());
        assert!(segs.len() > 2);
        let offs = record_offsets(&segs[0]);
        flip(&segs[0], *offs.last().unwrap() + 9);
        let msg = open(d.path(), 100).err().expect("must refuse").to_string();
        assert!(msg.contains(&segs[0].display().to_string()), "{msg}");
    }

    #[test]
    fn vote_committed_purged_survive_roll_purge_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let w = open(d.path(), 120).unwrap();
            block_on(w.save_vote(b"vote-1".to_vec())).unwrap();
            w.save_committed(b"c-7".to_vec()).unwrap();
            for i in 1..=50 {
                append_wait(&w, vec![(i, data(i, 0))]);
            }
            let before = segments(d.path()).len();
            block_on(w.purge(40, b"p-40".to_vec())).unwrap();
            assert!(
                segments(d.path()).len() < before,
                "purge removes covered segments"
            );
            assert_eq!(w.first_index(), Some(41));
        }
        let w = open(d.path(), 120).unwrap();
        assert_eq!(w.vote(), Some(b"vote-1".to_vec()));
        assert_eq!(w.committed(), Some(b"c-7".to_vec()));
        assert_eq!(w.purged(), Some((40, b"p-40".to_vec())));
        assert_eq!(
            all(&w),
            (41..=50).map(|i| (i, data(i, 0))).collect::<Vec<_>>()
        );
    }

    /// The committed records written to a segment file so far, in order.
    fn committed_records(path: &Path) -> Vec<Vec<u8>> {
        let buf = fs::read(path).unwrap();
        let mut out = Vec::new();
        let mut off = 0;
        while let Ok((rec, n)) = record::decode(&buf[off..]) {
            if let Record::Committed(c) = rec {
                out.push(c);
            }
            off += n;
        }
        out
    }

    /// `save_committed` wakes no busy writer: the record rides with the next
    /// append (under its one fsync), or is written alone and unsynced once
    /// `COMMITTED_DELAY` has passed; an idle writer is woken for it; a close
    /// writes the newest one.
    #[test]
    fn committed_rides_with_an_append_or_is_written_after_a_delay() {
        let written = |seg: &Path, want: &[u8]| {
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while committed_records(seg).last().map(Vec::as_slice) != Some(want) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{want:?} never written"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let d = tempfile::tempdir().unwrap();
        {
            let w = open(d.path(), 1 << 20).unwrap();
            for i in 1..=3 {
                append_wait(&w, vec![(i, data(i, 0))]);
            }
            let seg = segments(d.path()).pop().unwrap();
            let syncs = w.sync_count();
            w.save_committed(b"c-2".to_vec()).unwrap();
            append_wait(&w, vec![(4, data(4, 0))]);
            assert_eq!(committed_records(&seg).last(), Some(&b"c-2".to_vec()));
            assert_eq!(
                w.sync_count(),
                syncs + 1,
                "one fsync for the append and the record"
            );

            w.save_committed(b"c-3".to_vec()).unwrap();
            assert_eq!(w.committed(), Some(b"c-3".to_vec()), "readable at once");
            written(&seg, b"c-3");
            // The writer now waits with no deadline: the next one wakes it.
            std::thread::sleep(COMMITTED_DELAY * 5);
            w.save_committed(b"c-4".to_vec()).unwrap();
            written(&seg, b"c-4");
            assert_eq!(
                w.sync_count(),
                syncs + 1,
                "a lone committed record is not fsynced"
            );
            w.save_committed(b"c-5".to_vec()).unwrap();
        }
        let w = open(d.path(), 1 << 20).unwrap();
        assert_eq!(w.committed(), Some(b"c-5".to_vec()));
        assert_eq!(all(&w).len(), 4);
    }

    #[test]
    fn truncate_across_segments_then_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let w = open(d.path(), 100).unwrap();
            block_on(w.save_vote(b"v".to_vec())).unwrap();
            for i in 1..=30 {
                append_wait(&w, vec![(i, data(i, 0))]);
            }
            let before = segments(d.path()).len();
            block_on(w.truncate(10)).unwrap();
            assert!(segments(d.path()).len() < before);
            append_wait(&w, vec![(10, data(10, 9))]);
        }
        let w = open(d.path(), 100).unwrap();
        let want: Vec<_> = (1..=9)
            .map(|i| (i, data(i, 0)))
            .chain([(10, data(10, 9))])
            .collect();
        assert_eq!(all(&w), want);
        assert_eq!(w.vote(), Some(b"v".to_vec()));
    }

    #[test]
    fn group_commit_uses_fewer_fsyncs_than_appends() {
        let d = tempfile::tempdir().unwrap();
        let w = open(d.path(), 1 << 20).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let threads = 8;
        let per = 50u64;
        // Indexes must increase in queue order, so threads take a shared lock
        // only to pick the index and enqueue; nobody waits for the fsync.
        let next = Arc::new(Mutex::new(1u64));
        std::thread::scope(|s| {
            for _ in 0..threads {
                let (w, tx, next) = (w.clone(), tx.clone(), next.clone());
                s.spawn(move || {
                    for _ in 0..per {
                        let mut n = next.lock().unwrap();
                        let tx = tx.clone();
                        w.append(
                            vec![(*n, data(*n, 0))],
                            Box::new(move |r| tx.send(r).unwrap()),
                        )
                        .unwrap();
                        *n += 1;
                    }
                });
            }
        });
        let total = threads * per;
        for _ in 0..total {
            rx.recv().unwrap().unwrap();
        }
        let syncs = w.sync_count();
        assert!(syncs < total, "{syncs} fsyncs for {total} appends");
        assert_eq!(w.read(..).unwrap().len() as u64, total);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8),
        Truncate(u8),
        Purge(u8),
        Vote(u8),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u8..6).prop_map(Op::Append),
            2 => any::<u8>().prop_map(Op::Truncate),
            1 => any::<u8>().prop_map(Op::Purge),
            1 => any::<u8>().prop_map(Op::Vote),
            1 => Just(Op::Reopen),
        ]
    }

    /// What the WAL should hold. `written` keeps purged entries too: a cut
    /// that loses the `Purged` record may legitimately bring them back.
    #[derive(Default)]
    struct Model {
        live: BTreeMap<u64, Vec<u8>>,
        written: BTreeMap<u64, Vec<u8>>,
        purged: Option<u64>,
        vote: Option<Vec<u8>>,
    }

    fn run_ops(dir: &Path, ops: &[Op]) -> Model {
        const SEG: u64 = 160;
        let mut m = Model::default();
        let mut w = open(dir, SEG).unwrap();
        for (k, op) in ops.iter().enumerate() {
            let salt = k as u8;
            match op {
                Op::Append(n) => {
                    let start = m
                        .live
                        .keys()
                        .next_back()
                        .or(m.purged.as_ref())
                        .map_or(1, |l| l + 1);
                    let batch: Vec<_> = (start..start + *n as u64)
                        .map(|i| (i, data(i, salt)))
                        .collect();
                    for (i, d) in &batch {
                        m.live.insert(*i, d.clone());
                        m.written.insert(*i, d.clone());
                    }
                    append_wait(&w, batch);
                }
                Op::Truncate(x) => {
                    let Some((&lo, &hi)) = m.live.keys().next().zip(m.live.keys().next_back())
                    else {
                        continue;
                    };
                    let at = lo + (*x as u64) % (hi - lo + 1);
                    block_on(w.truncate(at)).unwrap();
                    m.live.split_off(&at);
                    m.written.split_off(&at);
                }
                Op::Purge(x) => {
                    let Some((&lo, &hi)) = m.live.keys().next().zip(m.live.keys().next_back())
                    else {
                        continue;
                    };
                    let at = lo + (*x as u64) % (hi - lo + 1);
                    block_on(w.purge(at, at.to_le_bytes().to_vec())).unwrap();
                    m.live = m.live.split_off(&(at + 1));
                    m.purged = Some(at);
                }
                Op::Vote(v) => {
                    block_on(w.save_vote(vec![*v])).unwrap();
                    m.vote = Some(vec![*v]);
                }
                Op::Reopen => {
                    drop(w);
                    w = open(dir, SEG).unwrap();
                }
            }
        }
        m
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn reopen_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
            let d = tempfile::tempdir().unwrap();
            let m = run_ops(d.path(), &ops);
            let w = open(d.path(), 160).unwrap();
            prop_assert_eq!(all(&w), m.live.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(w.purged().map(|p| p.0), m.purged);
            prop_assert_eq!(w.vote(), m.vote);
        }

        #[test]
        fn cut_newest_segment_keeps_a_prefix(ops in proptest::collection::vec(op(), 1..40), cut in any::<prop::sample::Index>()) {
            let d = tempfile::tempdir().unwrap();
            let m = run_ops(d.path(), &ops);
            let newest = segment::list(d.path()).unwrap().pop().unwrap();
            let path = newest.path(d.path());
            let len = records_end(&path);
            let at = cut.index(len + 1) as u64;
            fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(at).unwrap();
            let w = open(d.path(), 160).unwrap();
            let got = all(&w);
            // Every entry returned is one that was written, in order, with no
            // entry of the live log skipped.
            for (i, d) in &got {
                prop_assert_eq!(m.written.get(i), Some(d));
            }
            let expect_prefix: Vec<_> = m.live.range(got.first().map_or(0, |g| g.0)..).take(got.len()).map(|(i, d)| (*i, d.clone())).collect();
            let got_live: Vec<_> = got.iter().filter(|(i, _)| m.live.contains_key(i)).cloned().collect();
            prop_assert_eq!(&got_live, &expect_prefix[..got_live.len()]);
            // Everything in older (untouched) segments survives.
            for (i, d) in m.live.range(..newest.first_index) {
                prop_assert_eq!(got.iter().find(|g| g.0 == *i).map(|g| &g.1), Some(d));
            }
        }

        #[test]
        fn flipped_byte_is_refused_or_torn(ops in proptest::collection::vec(op(), 1..40), pick in any::<prop::sample::Index>(), pos in any::<prop::sample::Index>()) {
            let d = tempfile::tempdir().unwrap();
            let m = run_ops(d.path(), &ops);
            let segs: Vec<_> = segments(d.path()).into_iter().filter(|p| records_end(p) > 0).collect();
            prop_assume!(!segs.is_empty());
            let k = pick.index(segs.len());
            let path = segs[k].clone();
            let newest = path == *segments(d.path()).last().unwrap();
            let last_rec = *record_offsets(&path).last().unwrap();
            let at = pos.index(records_end(&path));
            flip(&path, at);
            match open(d.path(), 160) {
                Err(WalError::Corrupt { path: p, .. }) => prop_assert_eq!(p, path),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
                Ok(w) => {
                    prop_assert!(newest && at >= last_rec, "flip at {at} in {} accepted", path.display());
                    for (i, d) in all(&w) {
                        prop_assert_eq!(m.written.get(&i), Some(&d));
                    }
                }
            }
        }
    }
}
