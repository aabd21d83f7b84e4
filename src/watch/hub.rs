//! Hub state, the dispatcher thread and the catch-up thread (see the module
//! docs in `mod.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::mvcc::{ApplyError, Change, Store};
use crate::proto::etcdserverpb::RangeRequest;
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// Messages a stream's buffer holds (etcd `chanBufLen`).
pub const SINK_CAPACITY: usize = 128;
/// Most changes one catch-up round reads from the store.
const CATCHUP_CHANGES: usize = 10_000;
/// How often the catch-up thread retries watchers whose buffer was full.
const CATCHUP_RETRY: Duration = Duration::from_millis(10);

pub type StreamId = u64;
pub type WatcherHandle = u64;

/// One event, shared by every watcher it reaches.
#[derive(Debug)]
pub struct Ev {
    pub delete: bool,
    /// For a delete: the key and the delete's `mod_revision` only.
    pub kv: KeyValue,
    /// The key's value just before this event, looked up once on demand.
    prev: OnceLock<Option<KeyValue>>,
    /// The wire event, encoded once for every watcher that takes it:
    /// without and with `prev_kv`.
    wire: OnceLock<Event>,
    wire_with_prev: OnceLock<Event>,
}

impl Ev {
    pub fn new(change: Change) -> Ev {
        Ev {
            delete: change.is_delete,
            kv: change.kv,
            prev: OnceLock::new(),
            wire: OnceLock::new(),
            wire_with_prev: OnceLock::new(),
        }
    }

    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }

    /// etcd `IsCreateEvent`: a put that starts a generation.
    pub fn is_create(&self) -> bool {
        !self.delete && self.kv.create_revision == self.kv.mod_revision
    }

    /// etcd's watch server reads the key at `mod_revision - 1`; nothing
    /// when that revision has been compacted away.
    pub fn prev_kv(&self, store: &Store) -> Option<&KeyValue> {
        self.prev
            .get_or_init(|| {
                let req = RangeRequest {
                    key: self.kv.key.to_vec(),
                    revision: self.kv.mod_revision - 1,
                    ..Default::default()
                };
                store
                    .range(&req)
                    .ok()
                    .and_then(|r| r.kvs.into_iter().next())
            })
            .as_ref()
    }

    /// The wire event; `prev_kv` for every event but a create when asked.
    /// Encoded on first use, then shared.
    pub fn to_proto(&self, store: &Store, with_prev: bool) -> Event {
        let kind = if self.delete {
            EventType::Delete
        } else {
            EventType::Put
        };
        let wire = if with_prev && !self.is_create() {
            self.wire_with_prev
                .get_or_init(|| Event::new(kind, &self.kv, self.prev_kv(store)))
        } else {
            self.wire.get_or_init(|| Event::new(kind, &self.kv, None))
        };
        wire.clone()
    }
}

/// The end of a watched range, as etcd's watch server normalises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEnd {
    /// `range_end` empty: the key alone.
    Single,
    /// `range_end` = "\0": every key ≥ key.
    Unbounded,
    /// `[key, end)`.
    Until(Vec<u8>),
}

/// What a watcher wants, fixed at creation.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    pub end: KeyEnd,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub fragment: bool,
}

impl WatchSpec {
    pub fn matches(&self, key: &[u8]) -> bool {
        match &self.end {
            KeyEnd::Single => key == self.key.as_slice(),
            KeyEnd::Unbounded => key >= self.key.as_slice(),
            KeyEnd::Until(end) => key >= self.key.as_slice() && key < end.as_slice(),
        }
    }

    fn wants(&self, ev: &Ev) -> bool {
        !(ev.delete && self.no_delete || !ev.delete && self.no_put) && self.matches(&ev.kv.key)
    }
}

/// What the hub hands a stream; the stream turns it into `WatchResponse`s.
#[derive(Debug)]
pub enum Msg {
    /// Events for one watcher: one revision (live) or a run of revisions
    /// (catch-up), never part of one.
    Events {
        watch_id: i64,
        header_rev: i64,
        /// Shared by every watcher that takes all of a revision's events.
        events: Arc<[Arc<Ev>]>,
        prev_kv: bool,
        fragment: bool,
    },
    /// The watcher's start is below the compacted revision; it is removed.
    Compacted {
        watch_id: i64,
        compact_rev: i64,
    },
    /// Progress: every event up to `rev` has been sent (`watch_id` -1 for
    /// a WatchProgressRequest, the watcher's id for a periodic one).
    Progress {
        watch_id: i64,
        rev: i64,
    },
    /// Control messages the stream itself queues behind earlier events.
    Created {
        watch_id: i64,
        rev: i64,
        cancel_reason: Option<String>,
    },
    Canceled {
        watch_id: i64,
        rev: i64,
    },
    /// Ends the stream with this status.
    Fail(tonic::Status),
}

struct Watcher {
    watch_id: i64,
    stream: StreamId,
    spec: Arc<WatchSpec>,
    /// The start revision the client asked for (0: from now on).
    start_rev: i64,
    /// First revision not yet handed to the stream.
    next_rev: i64,
    synced: bool,
    /// Periodic progress only for watchers that got no events since the
    /// last tick (etcd elides the notification after an update).
    quiet: bool,
    progress_notify: bool,
}

struct StreamState {
    sink: mpsc::Sender<Msg>,
    watchers: HashSet<WatcherHandle>,
    /// A WatchProgressRequest waiting until the stream's watchers are
    /// synced and `dispatched` reaches this revision.
    progress_target: Option<i64>,
}

struct State {
    /// Every revision at or below this has been offered to synced watchers.
    dispatched: i64,
    next_id: u64,
    watchers: HashMap<WatcherHandle, Watcher>,
    streams: HashMap<StreamId, StreamState>,
    /// Synced single-key watchers by key.
    keys: HashMap<Vec<u8>, Vec<WatcherHandle>>,
    /// Synced range watchers, with what they watch (no lookup per event).
    ranges: HashMap<WatcherHandle, Arc<WatchSpec>>,
    unsynced: HashSet<WatcherHandle>,
    /// Streams with a deferred progress request.
    progress_waiting: HashSet<StreamId>,
}

enum Publish {
    Changes(Vec<Change>),
    /// A snapshot replaced the store: history up to `rev` arrived without
    /// events.
    Restored(i64),
}

struct Shared {
    state: Mutex<State>,
    store: Store,
    publish: Mutex<std_mpsc::Sender<Publish>>,
    /// Messages sent to the dispatcher thread and not yet taken by it.
    queued: AtomicUsize,
    wake_catchup: Mutex<std_mpsc::Sender<()>>,
}

/// The hub; cheap to clone. Threads stop when the last clone is dropped.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl State {
    fn add_synced(&mut self, h: WatcherHandle) {
        let w = self.watchers.get_mut(&h).expect("watcher");
        w.synced = true;
        if w.spec.end == KeyEnd::Single {
            self.keys.entry(w.spec.key.clone()).or_default().push(h);
        } else {
            self.ranges.insert(h, w.spec.clone());
        }
    }

    fn remove_synced(&mut self, h: WatcherHandle) {
        let Some(w) = self.watchers.get_mut(&h) else {
            return;
        };
        if !w.synced {
            return;
        }
        w.synced = false;
        if w.spec.end == KeyEnd::Single {
            if let Some(hs) = self.keys.get_mut(&w.spec.key) {
                hs.retain(|x| *x != h);
                if hs.is_empty() {
                    self.keys.remove(&w.spec.key);
                }
            }
        } else {
            self.ranges.remove(&h);
        }
    }

    fn remove(&mut self, h: WatcherHandle) -> Option<Watcher> {
        self.remove_synced(h);
        self.unsynced.remove(&h);
        let w = self.watchers.remove(&h)?;
        if let Some(s) = self.streams.get_mut(&w.stream) {
            s.watchers.remove(&h);
        }
        Some(w)
    }

    /// Offers one revision's events to the synced watchers. A watcher that
    /// wants every event of the revision (the usual case) gets the one
    /// shared list: no allocation per watcher.
    fn dispatch(&mut self, rev: i64, events: &[Arc<Ev>]) -> bool {
        let all: Arc<[Arc<Ev>]> = events.into();
        let mut fell_behind = false;
        for h in self.matching(events) {
            let w = self.watchers.get_mut(&h).expect("synced watcher");
            if rev < w.next_rev {
                continue; // caught up from the store past this revision
            }
            let wanted = events.iter().filter(|e| w.spec.wants(e)).count();
            let evs = match wanted {
                0 => continue,
                n if n == events.len() => all.clone(),
                _ => events.iter().filter(|e| w.spec.wants(e)).cloned().collect(),
            };
            let sink = &self.streams[&w.stream].sink;
            match sink.try_send(Msg::Events {
                watch_id: w.watch_id,
                header_rev: rev,
                events: evs,
                prev_kv: w.spec.prev_kv,
                fragment: w.spec.fragment,
            }) {
                Ok(()) => {
                    w.next_rev = rev + 1;
                    w.quiet = false;
                }
                Err(TrySendError::Full(_)) => {
                    // Slow consumer: catch up from the store from here.
                    w.next_rev = rev;
                    self.remove_synced(h);
                    self.unsynced.insert(h);
                    fell_behind = true;
                }
                // The stream is going away; its task removes the watchers.
                Err(TrySendError::Closed(_)) => {}
            }
        }
        self.dispatched = rev;
        fell_behind
    }

    /// The synced watchers whose key or range one revision's events touch,
    /// each once. Most revisions hold one event: that case needs no set.
    fn matching(&self, events: &[Arc<Ev>]) -> Vec<WatcherHandle> {
        if let [ev] = events {
            return self.touching(&ev.kv.key).collect();
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for ev in events {
            out.extend(self.touching(&ev.kv.key).filter(|h| seen.insert(*h)));
        }
        out
    }

    /// The synced watchers of `key`, then the synced ranges holding it.
    fn touching<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = WatcherHandle> + 'a {
        let singles = self.keys.get(key).into_iter().flatten().copied();
        let ranges = self
            .ranges
            .iter()
            .filter(move |(_, spec)| spec.matches(key))
            .map(|(h, _)| *h);
        singles.chain(ranges)
    }

    /// etcd `progressIfSync` over one stream: sends when every watcher of the
    /// stream is synced and `dispatched` reached `target`.
    fn try_progress_all(&mut self, stream: StreamId) {
        let Some(s) = self.streams.get_mut(&stream) else {
            self.progress_waiting.remove(&stream);
            return;
        };
        let Some(target) = s.progress_target else {
            return;
        };
        let ready = self.dispatched >= target
            && s.watchers.iter().all(|h| {
                let w = &self.watchers[h];
                w.synced && self.dispatched >= w.start_rev
            });
        if !ready {
            return;
        }
        let msg = Msg::Progress {
            watch_id: -1,
            rev: self.dispatched,
        };
        match s.sink.try_send(msg) {
            Err(TrySendError::Full(_)) => {} // retried on the next dispatch
            _ => {
                s.progress_target = None;
                self.progress_waiting.remove(&stream);
            }
        }
    }

    fn check_progress_waiting(&mut self) {
        if self.progress_waiting.is_empty() {
            return;
        }
        let waiting: Vec<_> = self.progress_waiting.iter().copied().collect();
        for s in waiting {
            self.try_progress_all(s);
        }
    }
}

impl Hub {
    /// A hub whose history starts at the store's current revision.
    pub fn new(store: Store) -> Hub {
        let (publish_tx, publish_rx) = std_mpsc::channel();
        let (wake_tx, wake_rx) = std_mpsc::channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                dispatched: store.current_revision(),
                next_id: 1,
                watchers: HashMap::new(),
                streams: HashMap::new(),
                keys: HashMap::new(),
                ranges: HashMap::new(),
                unsynced: HashSet::new(),
                progress_waiting: HashSet::new(),
            }),
            store,
            publish: Mutex::new(publish_tx),
            queued: AtomicUsize::new(0),
            wake_catchup: Mutex::new(wake_tx),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("watch-dispatch".into())
            .spawn(move || dispatch_loop(weak, publish_rx))
            .expect("spawn watch-dispatch");
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("watch-catchup".into())
            .spawn(move || catchup_loop(weak, wake_rx))
            .expect("spawn watch-catchup");
        Hub { shared }
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_catchup(&self) {
        let _ = self
            .shared
            .wake_catchup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(());
    }

    /// Called by apply after its batch is in sled, in revision order.
    /// Never blocks on watchers.
    pub fn publish(&self, changes: Vec<Change>) {
        let Some(last) = changes.iter().map(|c| c.revision.main).max() else {
            return;
        };
        {
            // No watcher to offer them to and nothing earlier queued: the
            // revisions are dispatched here, without waking the dispatcher
            // thread (a wake-up and a context switch per apply on a member
            // nobody watches). Applies publish one at a time, so nothing
            // is queued between the check and the update; a watcher that
            // arrives after them sees them in the store.
            let mut st = self.lock();
            if st.watchers.is_empty() && self.shared.queued.load(Ordering::Acquire) == 0 {
                st.dispatched = st.dispatched.max(last);
                st.check_progress_waiting();
                return;
            }
        }
        self.send(Publish::Changes(changes));
    }

    /// Called after a snapshot install moved the store to `rev`: every
    /// watcher catches up from the store again.
    pub fn restored(&self, rev: i64) {
        self.send(Publish::Restored(rev));
    }

    fn send(&self, p: Publish) {
        let tx = self
            .shared
            .publish
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if tx.send(p).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The revision every synced watcher has been offered.
    pub fn dispatched(&self) -> i64 {
        self.lock().dispatched
    }

    pub fn open_stream(&self, sink: mpsc::Sender<Msg>) -> StreamId {
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.streams.insert(
            id,
            StreamState {
                sink,
                watchers: HashSet::new(),
                progress_target: None,
            },
        );
        id
    }

    /// Removes the stream and all its watchers.
    pub fn close_stream(&self, stream: StreamId) {
        let mut st = self.lock();
        if let Some(s) = st.streams.remove(&stream) {
            for h in s.watchers {
                st.remove(h);
            }
        }
        st.progress_waiting.remove(&stream);
    }

    /// Adds a watcher that wants the events from `next_rev` on; `start_rev`
    /// is what the client asked for (0: from now on). The stream has
    /// already queued its `created`.
    pub fn add_watcher(
        &self,
        stream: StreamId,
        watch_id: i64,
        spec: WatchSpec,
        start_rev: i64,
        next_rev: i64,
        progress_notify: bool,
    ) -> WatcherHandle {
        let mut st = self.lock();
        let h = st.next_id;
        st.next_id += 1;
        st.watchers.insert(
            h,
            Watcher {
                watch_id,
                stream,
                spec: Arc::new(spec),
                start_rev,
                next_rev,
                synced: false,
                quiet: true,
                progress_notify,
            },
        );
        if let Some(s) = st.streams.get_mut(&stream) {
            s.watchers.insert(h);
        }
        if next_rev > st.dispatched {
            st.add_synced(h);
        } else {
            st.unsynced.insert(h);
            drop(st);
            self.wake_catchup();
        }
        h
    }

    /// Removes a watcher; once this returns the hub sends nothing more for it.
    pub fn remove_watcher(&self, h: WatcherHandle) {
        let mut st = self.lock();
        st.remove(h);
        st.check_progress_waiting();
    }

    /// etcd `RequestProgressAll`: one progress response with watch id -1 as
    /// soon as every watcher of the stream is synced (deferred until then).
    /// Requests made while one is pending share its reply; returns whether
    /// this request will get a reply of its own.
    pub fn request_progress(&self, stream: StreamId) -> bool {
        let target = self.shared.store.current_revision();
        let mut st = self.lock();
        let Some(s) = st.streams.get_mut(&stream) else {
            return false;
        };
        if s.progress_target.is_some() {
            return false;
        }
        s.progress_target = Some(target);
        st.progress_waiting.insert(stream);
        st.try_progress_all(stream);
        true
    }

    /// The periodic progress tick of one stream (etcd sendLoop's
    /// `progressTicker`): a notification for each synced `progress_notify`
    /// watcher that got no events since the last tick.
    pub fn progress_tick(&self, stream: StreamId) {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(s) = st.streams.get(&stream) else {
            return;
        };
        for h in &s.watchers {
            let w = st.watchers.get_mut(h).expect("stream watcher");
            if !w.progress_notify {
                continue;
            }
            if w.quiet && w.synced && st.dispatched >= w.start_rev {
                let _ = s.sink.try_send(Msg::Progress {
                    watch_id: w.watch_id,
                    rev: st.dispatched,
                });
            }
            w.quiet = true;
        }
    }

    /// (watchers, unsynced) for metrics and tests.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.watchers.len(), st.unsynced.len())
    }
}

fn group_by_revision(changes: Vec<Change>) -> Vec<(i64, Vec<Arc<Ev>>)> {
    let mut out: Vec<(i64, Vec<Arc<Ev>>)> = Vec::new();
    for c in changes {
        let rev = c.revision.main;
        match out.last_mut() {
            Some((r, evs)) if *r == rev => evs.push(Arc::new(Ev::new(c))),
            _ => out.push((rev, vec![Arc::new(Ev::new(c))])),
        }
    }
    out
}

fn dispatch_loop(shared: Weak<Shared>, rx: std_mpsc::Receiver<Publish>) {
    while let Ok(first) = rx.recv() {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut fell_behind = false;
        {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            // Take whatever else is queued under the same lock.
            for p in std::iter::once(first).chain(rx.try_iter()) {
                shared.queued.fetch_sub(1, Ordering::AcqRel);
                match p {
                    Publish::Changes(changes) => {
                        for (rev, evs) in group_by_revision(changes) {
                            if rev <= st.dispatched {
                                continue; // replay of what a restore covered
                            }
                            fell_behind |= st.dispatch(rev, &evs);
                        }
                    }
                    Publish::Restored(rev) => {
                        let synced: Vec<_> = st
                            .watchers
                            .iter()
                            .filter(|(_, w)| w.synced)
                            .map(|(h, _)| *h)
                            .collect();
                        let from = st.dispatched + 1;
                        for h in synced {
                            st.remove_synced(h);
                            let w = st.watchers.get_mut(&h).expect("watcher");
                            w.next_rev = w.next_rev.max(from);
                            st.unsynced.insert(h);
                        }
                        st.dispatched = st.dispatched.max(rev);
                        fell_behind = true;
                    }
                }
            }
            st.check_progress_waiting();
        }
        if fell_behind {
            let _ = shared
                .wake_catchup
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(());
        }
    }
}

/// One unsynced watcher as the catch-up thread saw it before reading.
struct Pending {
    h: WatcherHandle,
    next_rev: i64,
}

fn catchup_loop(shared: Weak<Shared>, wake: std_mpsc::Receiver<()>) {
    let mut idle = true;
    loop {
        let timeout = if idle {
            Duration::from_millis(100)
        } else {
            CATCHUP_RETRY
        };
        match wake.recv_timeout(timeout) {
            Ok(()) => while wake.try_recv().is_ok() {},
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        idle = catch_up_once(&shared);
    }
}

/// One catch-up round (etcd `syncWatchers`); true when nothing is left.
fn catch_up_once(shared: &Shared) -> bool {
    let store = &shared.store;
    let pending: Vec<Pending> = {
        let st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.unsynced
            .iter()
            .filter(|h| {
                let w = &st.watchers[*h];
                st.streams[&w.stream].sink.capacity() > 0
            })
            .map(|h| Pending {
                h: *h,
                next_rev: st.watchers[h].next_rev,
            })
            .collect()
    };
    if pending.is_empty() {
        return shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unsynced
            .is_empty();
    }
    let compact = store.compact_revision();
    let cur = store.current_revision();
    let from = pending
        .iter()
        .map(|p| p.next_rev)
        .filter(|r| *r >= compact)
        .min();
    // Read [from, upto] without splitting a revision.
    let (events, upto) = match from {
        None => (Vec::new(), cur),
        Some(from) if from > cur => (Vec::new(), cur),
        Some(from) => match read_history(store, from, cur) {
            Ok(x) => x,
            Err(ApplyError::Compacted) => return false, // compacted meanwhile: retry
            Err(e) => {
                tracing::error!(error = %e, "watch catch-up cannot read the store");
                return false;
            }
        },
    };

    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let st = &mut *st;
    for p in pending {
        let Some(w) = st.watchers.get_mut(&p.h) else {
            continue; // cancelled meanwhile
        };
        if w.synced || w.next_rev != p.next_rev {
            continue;
        }
        let sink = &st.streams[&w.stream].sink;
        if w.next_rev < compact {
            let msg = Msg::Compacted {
                watch_id: w.watch_id,
                compact_rev: compact,
            };
            if !matches!(sink.try_send(msg), Err(TrySendError::Full(_))) {
                st.remove(p.h);
            }
            continue;
        }
        if w.next_rev <= upto {
            let evs: Arc<[Arc<Ev>]> = events
                .iter()
                .filter(|e| e.revision() >= w.next_rev && w.spec.wants(e))
                .cloned()
                .collect();
            if !evs.is_empty() {
                let msg = Msg::Events {
                    watch_id: w.watch_id,
                    header_rev: cur,
                    events: evs,
                    prev_kv: w.spec.prev_kv,
                    fragment: w.spec.fragment,
                };
                if let Err(TrySendError::Full(_)) = sink.try_send(msg) {
                    continue; // still behind; next round
                }
                w.quiet = false;
            }
            w.next_rev = upto + 1;
        }
        if w.next_rev > st.dispatched {
            st.unsynced.remove(&p.h);
            st.add_synced(p.h);
        }
    }
    st.check_progress_waiting();
    st.unsynced.is_empty()
}

/// History from `from` to at most `cur`, whole revisions only; returns the
/// events and the last revision they cover.
fn read_history(store: &Store, from: i64, cur: i64) -> Result<(Vec<Arc<Ev>>, i64), ApplyError> {
    let mut changes = store.changes(from, cur, CATCHUP_CHANGES)?;
    let mut upto = cur;
    if changes.len() >= CATCHUP_CHANGES {
        let last = changes.last().expect("non-empty").revision.main;
        if last > from {
            changes.retain(|c| c.revision.main < last);
            upto = last - 1;
        } else {
            // One revision larger than the limit: take it whole.
            changes = store.changes(from, from, 0)?;
            upto = from;
        }
    }
    Ok((
        changes.into_iter().map(|c| Arc::new(Ev::new(c))).collect(),
        upto,
    ))
}
