//! The hub against a model: random writes, deletes, txns and compactions
//! applied to a real store and published to the hub, with random watchers
//! (past, present and future start revisions; single keys, prefixes, "\0";
//! filters; prev_kv) on streams with tiny buffers drained at random, so that
//! watchers keep falling back to catch-up. Every watcher must receive
//! exactly the model's events: in revision order, nothing missing, nothing
//! twice — or, if compaction overtook it, a prefix of them followed by its
//! compact revision. Every progress notification must come after all the
//! events at or below its revision.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tokio::sync::mpsc;

use super::*;
use crate::mvcc::{Change, Store};
use crate::proto::etcdserverpb::{
    request_op::Request as Op, CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp,
    TxnRequest,
};

const KEYS: &[&str] = &["a", "ab", "abc", "b", "ba", "c"];

#[derive(Debug, Clone)]
enum Step {
    Put(usize, u8),
    Delete(usize, bool),
    Txn(Vec<(usize, Option<u8>)>),
    Compact(u8),
    Watch {
        stream: usize,
        key: usize,
        end: u8,
        start: i8,
        no_put: bool,
        no_delete: bool,
        prev_kv: bool,
    },
    Cancel(usize),
    Drain(usize),
    Progress(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..KEYS.len(), any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0..KEYS.len(), any::<bool>()).prop_map(|(k, p)| Step::Delete(k, p)),
        2 => prop::collection::vec((0..KEYS.len(), prop::option::of(any::<u8>())), 1..4)
            .prop_map(Step::Txn),
        1 => any::<u8>().prop_map(Step::Compact),
        3 => (0..3usize, 0..KEYS.len(), 0..3u8, -3..6i8, prop::bool::weighted(0.2),
              prop::bool::weighted(0.2), any::<bool>())
            .prop_map(|(stream, key, end, start, no_put, no_delete, prev_kv)| Step::Watch {
                stream, key, end, start, no_put, no_delete, prev_kv,
            }),
        1 => any::<usize>().prop_map(Step::Cancel),
        4 => (0..3usize).prop_map(Step::Drain),
        1 => (0..3usize).prop_map(Step::Progress),
    ]
}

/// (revision, key, is_delete, prev_kv value)
type Got = (i64, Vec<u8>, bool, Option<Vec<u8>>);

struct TestWatcher {
    watch_id: i64,
    stream: usize,
    handle: WatcherHandle,
    spec: WatchSpec,
    from: i64,
    got: Vec<Got>,
    compacted: Option<i64>,
    /// Removed from the hub (its queued events may still be drained).
    removed: bool,
    cancelled: bool,
}

struct TestStream {
    id: StreamId,
    rx: mpsc::Receiver<Msg>,
}

struct Harness {
    store: Store,
    hub: Hub,
    history: Vec<Change>,
    streams: Vec<TestStream>,
    watchers: Vec<TestWatcher>,
    /// Values by (key, revision), for checking prev_kv.
    values: HashMap<(Vec<u8>, i64), Vec<u8>>,
    /// Revisions compacted at. As in etcd, compacting at R also drops the
    /// tombstones at R, so a watcher that reads R from the store (start =
    /// R, not below it, so it is not "compacted") cannot see a delete at R.
    compacted_at: Vec<i64>,
    /// Progress replies owed per stream. No watcher is added to a stream
    /// that is owed one, so each reply concerns exactly the watchers that
    /// exist when it is read.
    progress_owed: Vec<usize>,
}

impl Harness {
    fn apply(&mut self, f: impl FnOnce(&mut crate::mvcc::Applier<'_>)) {
        let mut a = self.store.begin_apply();
        f(&mut a);
        let changes = a.commit().unwrap();
        for c in &changes {
            if !c.is_delete {
                self.values
                    .insert((c.kv.key.to_vec(), c.revision.main), c.kv.value.to_vec());
            }
        }
        self.history.extend(changes.iter().cloned());
        self.hub.publish(changes);
    }

    /// What `w` must receive: every matching event from its start on.
    fn expected(&self, w: &TestWatcher) -> Vec<(i64, Vec<u8>, bool)> {
        self.history
            .iter()
            .filter(|c| c.revision.main >= w.from)
            .filter(|c| w.spec.matches(&c.kv.key))
            .filter(|c| !(c.is_delete && w.spec.no_delete || !c.is_delete && w.spec.no_put))
            .map(|c| (c.revision.main, c.kv.key.to_vec(), c.is_delete))
            .collect()
    }

    /// etcd's one exception (see `compacted_at`): deletes at a compact
    /// revision may be missing; compare without them.
    fn comparable(&self, evs: Vec<(i64, Vec<u8>, bool)>) -> Vec<(i64, Vec<u8>, bool)> {
        evs.into_iter()
            .filter(|e| !(e.2 && self.compacted_at.contains(&e.0)))
            .collect()
    }

    /// The value `key` had just before `rev` in the model.
    fn prev_value(&self, key: &[u8], rev: i64) -> Option<Vec<u8>> {
        let last = self
            .history
            .iter()
            .rfind(|c| c.kv.key == key && c.revision.main < rev)?;
        (!last.is_delete).then(|| last.kv.value.to_vec())
    }

    fn drain(&mut self, s: usize) {
        while let Ok(msg) = self.streams[s].rx.try_recv() {
            self.receive(s, msg);
        }
    }

    fn receive(&mut self, s: usize, msg: Msg) {
        if std::env::var_os("WATCH_DEBUG").is_some() {
            eprintln!("stream {s}: {msg:?}");
        }
        match msg {
            Msg::Events {
                watch_id, events, ..
            } => {
                let w = self.watcher(s, watch_id);
                assert!(!w.cancelled && w.compacted.is_none(), "event after the end");
                let rev = events[0].revision();
                let all_one_rev = events.iter().all(|e| e.revision() == rev);
                assert!(!events.is_empty());
                let prev_kv = w.spec.prev_kv;
                let store = self.store.clone();
                let got: Vec<_> = events
                    .iter()
                    .map(|e| {
                        let prev = (prev_kv && !e.is_create())
                            .then(|| e.prev_kv(&store).map(|kv| kv.value.to_vec()))
                            .flatten();
                        (e.revision(), e.kv.key.to_vec(), e.delete, prev)
                    })
                    .collect();
                let _ = all_one_rev;
                self.watcher(s, watch_id).got.extend(got);
            }
            Msg::Compacted {
                watch_id,
                compact_rev,
            } => {
                let w = self.watcher(s, watch_id);
                assert!(w.compacted.is_none());
                w.compacted = Some(compact_rev);
            }
            Msg::Progress { watch_id, rev } => {
                assert_eq!(watch_id, -1);
                assert!(
                    self.progress_owed[s] > 0,
                    "a progress reply nobody asked for"
                );
                self.progress_owed[s] -= 1;
                let ids: Vec<_> = self
                    .watchers
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.stream == s && !w.removed && w.compacted.is_none())
                    .map(|(i, _)| i)
                    .collect();
                for i in ids {
                    let w = &self.watchers[i];
                    let want: Vec<_> = self
                        .expected(w)
                        .into_iter()
                        .filter(|e| e.0 <= rev)
                        .collect();
                    let got: Vec<_> = w
                        .got
                        .iter()
                        .filter(|e| e.0 <= rev)
                        .map(|e| (e.0, e.1.clone(), e.2))
                        .collect();
                    let (want, got) = (self.comparable(want), self.comparable(got));
                    assert_eq!(
                        got, want,
                        "progress {rev} before all events reached the stream (watcher {} from {} {:?})",
                        w.watch_id, w.from, w.spec
                    );
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn watcher(&mut self, s: usize, watch_id: i64) -> &mut TestWatcher {
        self.watchers
            .iter_mut()
            .find(|w| w.stream == s && w.watch_id == watch_id)
            .expect("known watcher")
    }

    fn run(&mut self, steps: Vec<Step>) {
        for st in steps {
            match st {
                Step::Put(k, v) => self.apply(|a| {
                    a.put(&PutRequest {
                        key: KEYS[k].into(),
                        value: vec![v],
                        ..Default::default()
                    })
                    .unwrap();
                }),
                Step::Delete(k, prefix) => self.apply(|a| {
                    let key: Vec<u8> = KEYS[k].into();
                    let mut end = key.clone();
                    *end.last_mut().unwrap() += 1;
                    a.delete_range(&DeleteRangeRequest {
                        key,
                        range_end: if prefix { end } else { vec![] },
                        ..Default::default()
                    })
                    .unwrap();
                }),
                Step::Txn(ops) => self.apply(|a| {
                    // Distinct keys: etcd refuses duplicate keys in a txn.
                    let mut seen = std::collections::HashSet::new();
                    let success = ops
                        .iter()
                        .filter(|(k, _)| seen.insert(*k))
                        .map(|(k, v)| RequestOp {
                            request: Some(match v {
                                Some(v) => Op::RequestPut(PutRequest {
                                    key: KEYS[*k].into(),
                                    value: vec![*v],
                                    ..Default::default()
                                }),
                                None => Op::RequestDeleteRange(DeleteRangeRequest {
                                    key: KEYS[*k].into(),
                                    ..Default::default()
                                }),
                            }),
                        })
                        .collect();
                    a.txn(&TxnRequest {
                        success,
                        ..Default::default()
                    })
                    .unwrap();
                }),
                Step::Compact(x) => {
                    let cur = self.store.current_revision();
                    let lo = self.store.compact_revision().max(0) + 1;
                    if lo <= cur {
                        let rev = lo + (x as i64) % (cur - lo + 1);
                        self.compacted_at.push(rev);
                        self.apply(|a| {
                            a.compact(&CompactionRequest {
                                revision: rev,
                                physical: false,
                            })
                            .unwrap();
                        });
                    }
                }
                Step::Watch {
                    stream,
                    key,
                    end,
                    start,
                    no_put,
                    no_delete,
                    prev_kv,
                } => {
                    if self.progress_owed[stream] > 0 {
                        continue;
                    }
                    let k: Vec<u8> = KEYS[key].into();
                    let end = match end {
                        0 => KeyEnd::Single,
                        1 => {
                            let mut e = k.clone();
                            *e.last_mut().unwrap() += 1;
                            KeyEnd::Until(e)
                        }
                        _ => KeyEnd::Unbounded,
                    };
                    let spec = WatchSpec {
                        key: k,
                        end,
                        no_put,
                        no_delete,
                        prev_kv,
                        fragment: false,
                    };
                    let cur = self.store.current_revision();
                    // start < 0: that many revisions back; 0: now; > 0: future.
                    let (start_rev, from) = match start {
                        0 => (0, cur + 1),
                        s if s < 0 => {
                            let r = (cur + 1 + s as i64).max(1);
                            (r, r)
                        }
                        s => (cur + s as i64, cur + s as i64),
                    };
                    let watch_id = self.watchers.len() as i64;
                    let handle = self.hub.add_watcher(
                        self.streams[stream].id,
                        watch_id,
                        spec.clone(),
                        start_rev,
                        from,
                        false,
                    );
                    self.watchers.push(TestWatcher {
                        watch_id,
                        stream,
                        handle,
                        spec,
                        from,
                        got: vec![],
                        compacted: None,
                        removed: false,
                        cancelled: false,
                    });
                }
                Step::Cancel(i) => {
                    if !self.watchers.is_empty() {
                        let i = i % self.watchers.len();
                        let s = self.watchers[i].stream;
                        // Drain first: events queued before the cancel count.
                        self.hub.remove_watcher(self.watchers[i].handle);
                        self.watchers[i].removed = true;
                        self.drain(s);
                        self.watchers[i].cancelled = true;
                    }
                }
                Step::Drain(s) => self.drain(s),
                Step::Progress(s) => {
                    if self.hub.request_progress(self.streams[s].id) {
                        self.progress_owed[s] += 1;
                    }
                }
            }
        }
        // Let everyone catch up, then compare with the model.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for s in 0..self.streams.len() {
                self.drain(s);
            }
            let (_, unsynced) = self.hub.counts();
            // (A reply may stay owed: a watcher whose start revision is
            // still in the future holds it back, as in etcd.)
            if unsynced == 0 && self.hub.dispatched() == self.store.current_revision() {
                for s in 0..self.streams.len() {
                    self.drain(s);
                }
                break;
            }
            assert!(Instant::now() < deadline, "watchers never caught up");
            std::thread::sleep(Duration::from_millis(2));
        }
        for w in &self.watchers {
            let want = self.comparable(self.expected(w));
            let got: Vec<_> = w.got.iter().map(|e| (e.0, e.1.clone(), e.2)).collect();
            let got = self.comparable(got);
            if w.cancelled {
                assert!(
                    want.starts_with(&got),
                    "cancelled watcher got {got:?}, model {want:?}"
                );
            } else if let Some(c) = w.compacted {
                assert!(
                    want.starts_with(&got),
                    "compacted watcher got {got:?}, model {want:?}"
                );
                assert!(got.last().is_none_or(|e| e.0 < c));
                assert!(w.from < c);
            } else {
                assert_eq!(got, want, "watcher {} from {}", w.watch_id, w.from);
            }
            // prev_kv matches the model where the store still had it.
            for (rev, key, _, prev) in &w.got {
                if let Some(p) = prev {
                    assert_eq!(Some(p), self.prev_value(key, *rev).as_ref());
                }
            }
        }
    }
}

fn harness(buffer: usize) -> (tempfile::TempDir, Harness) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let hub = Hub::new(store.clone());
    let streams = (0..3)
        .map(|_| {
            let (tx, rx) = mpsc::channel(buffer);
            TestStream {
                id: hub.open_stream(tx),
                rx,
            }
        })
        .collect();
    let h = Harness {
        store,
        hub,
        history: vec![],
        streams,
        watchers: vec![],
        values: HashMap::new(),
        compacted_at: vec![],
        progress_owed: vec![0; 3],
    };
    (dir, h)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn watchers_see_exactly_the_model_history(
        steps in prop::collection::vec(step(), 1..120),
        buffer in 1..4usize,
    ) {
        let (_dir, mut h) = harness(buffer);
        h.run(steps);
    }
}

#[test]
fn slow_consumer_never_blocks_apply_and_loses_nothing() {
    let (_dir, mut h) = harness(1);
    let mut steps = vec![Step::Watch {
        stream: 0,
        key: 0,
        end: 2,
        start: 0,
        no_put: false,
        no_delete: false,
        prev_kv: true,
    }];
    // 2,000 writes while nobody reads stream 0: apply never waits.
    steps.extend((0..2000).map(|i| Step::Put(i % KEYS.len(), i as u8)));
    let t = Instant::now();
    h.run(steps);
    assert_eq!(h.watchers[0].got.len(), 2000);
    assert!(t.elapsed() < Duration::from_secs(20));
}

/// With nobody watching, a publish is dispatched at once on the applying
/// thread (no wake-up of the dispatcher); watchers that come later, from a
/// past revision or from now, still get exactly the model's events.
#[test]
fn unwatched_revisions_dispatch_at_once_and_stay_watchable() {
    let (_dir, mut h) = harness(4);
    for i in 0..5 {
        h.apply(|a| {
            a.put(&PutRequest {
                key: KEYS[i % KEYS.len()].into(),
                value: vec![i as u8],
                ..Default::default()
            })
            .unwrap();
        });
        assert_eq!(h.hub.dispatched(), h.store.current_revision());
    }
    let watch = |stream, start| Step::Watch {
        stream,
        key: 0,
        end: 2,
        start,
        no_put: false,
        no_delete: false,
        prev_kv: true,
    };
    let mut steps = vec![watch(0, -3), watch(1, 0)];
    steps.extend((0..5).map(|i| Step::Put(i % KEYS.len(), 10 + i as u8)));
    h.run(steps);
    assert_eq!(h.watchers[0].got.len(), 3 + 5);
    assert_eq!(h.watchers[1].got.len(), 5);
}
