//! Micro-benchmarks of oxcd's hot paths, one criterion group per layer:
//!
//! | group      | what one iteration does                                        | throughput unit   |
//! |------------|----------------------------------------------------------------|-------------------|
//! | `wal`      | append records and wait for the fsync that covers them         | records           |
//! | `mvcc`     | one apply (put / txn, one sled batch each) or one range read   | keys touched      |
//! | `key_index`| one `TreeIndex::get` among 100k keys                           | lookups           |
//! | `watch`    | publish one change, drain it from 1,000 synced watchers        | events delivered  |
//! | `proto`    | encode or decode one message (prost; bincode for the peer one) | bytes             |
//!
//! Fixtures (a pre-filled store, a 100k-key index, a hub with 1,000 watchers)
//! are built lazily by the first benchmark that needs them, so a filter such
//! as `cargo bench --bench micro -- proto/` skips the others' set-up, and
//! `cargo test --all-targets` (criterion's test mode: every benchmark runs
//! once) stays quick. Every wait on another thread is bounded.
//!
//! ```text
//! cargo bench --bench micro                        # everything, full sampling
//! cargo bench --bench micro -- mvcc/               # one group
//! cargo bench --profile dev --bench micro -- --quick --measurement-time 1 \
//!     --noplot --discard-baseline                  # CI's quick mode, dev build
//! ```
//!
//! On this shared two-vCPU machine the numbers are indicative only (see
//! `/work/shared/BENCHMARKING.md`); compare runs of one build, interleaved.

use std::cell::{Cell, OnceCell, RefCell};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use openraft::raft::AppendEntriesRequest;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use prost::Message;
use tempfile::TempDir;

use oxcd::mvcc::key_index::TreeIndex;
use oxcd::mvcc::{Change, Revision, Store};
use oxcd::proto::etcdserverpb::request_op::Request as OpRequest;
use oxcd::proto::etcdserverpb::{
    PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, WatchResponse,
};
use oxcd::proto::mvccpb::{event::EventType, Event, KeyValue};
use oxcd::raft::types::{Request, TypeConfig};
use oxcd::wal::{Wal, WalOptions};
use oxcd::watch::{Hub, KeyEnd, Msg, WatchSpec, SINK_CAPACITY};

/// Value size of every put, as in etcd's benchmark defaults used in README.
const VALUE_SIZE: usize = 256;
/// The longest any benchmark waits for another thread (WAL writer, watch
/// dispatcher) before failing loudly instead of hanging CI.
const WAIT: Duration = Duration::from_secs(30);

fn value() -> Vec<u8> {
    vec![b'v'; VALUE_SIZE]
}

fn put_request(key: Vec<u8>) -> PutRequest {
    PutRequest {
        key,
        value: value(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- WAL ----

/// One Raft log entry as the log store writes it: bincode of an openraft
/// entry holding a put of an 8-byte key and a 256-byte value.
fn wal_record() -> Vec<u8> {
    let entry: Entry<TypeConfig> = Entry {
        log_id: LogId::new(CommittedLeaderId::new(3, 1), 1),
        payload: EntryPayload::Normal(Request::Put(put_request(b"key00001".to_vec()))),
    };
    bincode::serialize(&entry).expect("encode entry")
}

/// Queues one `append` per batch, then waits until every batch is durable.
/// Batches queued back to back are what the writer's group commit merges
/// into one fsync.
fn append_durably(wal: &Wal, batches: Vec<Vec<(u64, Vec<u8>)>>) {
    let (tx, rx) = std_mpsc::channel();
    let n = batches.len();
    for entries in batches {
        let tx = tx.clone();
        wal.append(
            entries,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .expect("wal append");
    }
    for _ in 0..n {
        rx.recv_timeout(WAIT)
            .expect("wal completion in time")
            .expect("wal write");
    }
}

fn wal(c: &mut Criterion) {
    let fixture: OnceCell<(TempDir, Wal)> = OnceCell::new();
    let open = || {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), WalOptions::default()).expect("open wal");
        (dir, wal)
    };
    let record = wal_record();
    let next = Cell::new(1u64);
    let take = |n: u64| {
        let first = next.get();
        next.set(first + n);
        (first..first + n)
            .map(|i| (i, record.clone()))
            .collect::<Vec<_>>()
    };

    // fsyncs and records over every run of a benchmark (criterion calls the
    // closure several times): the figure BENCHMARKING.md says to watch,
    // since fsync latency here hides a missing sync.
    let synced = Cell::new((0u64, 0u64));
    let measure = |wal: &Wal, run: &mut dyn FnMut()| {
        let (s0, r0) = (wal.sync_count(), next.get());
        run();
        let (s, r) = synced.get();
        synced.set((s + wal.sync_count() - s0, r + next.get() - r0));
    };
    let report = |name: &str| {
        let (syncs, records) = synced.replace((0, 0));
        if records > 0 {
            println!(
                "wal/{name}: {:.3} fsyncs per record ({syncs} / {records})",
                syncs as f64 / records as f64
            );
        }
    };

    let mut g = c.benchmark_group("wal");
    g.throughput(Throughput::Elements(1));
    g.bench_function("append_1_fsync", |b| {
        let (_, wal) = fixture.get_or_init(open);
        measure(wal, &mut || b.iter(|| append_durably(wal, vec![take(1)])))
    });
    report("append_1_fsync");
    g.throughput(Throughput::Elements(64));
    g.bench_function("append_64_in_one_batch_fsync", |b| {
        let (_, wal) = fixture.get_or_init(open);
        measure(wal, &mut || b.iter(|| append_durably(wal, vec![take(64)])))
    });
    report("append_64_in_one_batch_fsync");
    // 16 callers' appends queued before the writer wakes: group commit
    // should cover them with one or a few fsyncs, not 16.
    g.throughput(Throughput::Elements(16));
    g.bench_function("append_16x1_group_commit", |b| {
        let (_, wal) = fixture.get_or_init(open);
        measure(wal, &mut || {
            b.iter(|| append_durably(wal, (0..16).map(|_| take(1)).collect()))
        })
    });
    report("append_16x1_group_commit");
    g.finish();
}

// --------------------------------------------------------------- MVCC ----

/// Keys of the pre-filled store: 100 prefixes of 100 keys, `p042/k17`.
const PREFIXES: usize = 100;
const PER_PREFIX: usize = 100;

fn prefilled_key(i: usize) -> Vec<u8> {
    format!("p{:03}/k{:02}", i / PER_PREFIX, i % PER_PREFIX).into_bytes()
}

/// A store holding 10,000 keys of 256 bytes, one revision each.
fn prefilled_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    for chunk in 0..PREFIXES {
        let mut a = store.begin_apply();
        for i in chunk * PER_PREFIX..(chunk + 1) * PER_PREFIX {
            a.put(&put_request(prefilled_key(i))).expect("put");
        }
        a.commit().expect("commit");
    }
    (dir, store)
}

fn put_one(store: &Store, req: &PutRequest) {
    let mut a = store.begin_apply();
    a.put(req).expect("put");
    black_box(a.commit().expect("commit"));
}

fn mvcc(c: &mut Criterion) {
    let fixture: OnceCell<(TempDir, Store)> = OnceCell::new();
    let n = Cell::new(0usize);
    let bump = || {
        let i = n.get();
        n.set(i + 1);
        i
    };
    let total = PREFIXES * PER_PREFIX;

    let mut g = c.benchmark_group("mvcc");
    g.throughput(Throughput::Elements(1));
    g.bench_function("put_new_key", |b| {
        let (_, store) = fixture.get_or_init(prefilled_store);
        b.iter(|| {
            put_one(
                store,
                &put_request(format!("new/{:08}", bump()).into_bytes()),
            )
        })
    });
    g.bench_function("put_overwrite", |b| {
        let (_, store) = fixture.get_or_init(prefilled_store);
        b.iter(|| put_one(store, &put_request(prefilled_key(bump() * 7919 % total))))
    });
    g.bench_function("range_1_key", |b| {
        let (_, store) = fixture.get_or_init(prefilled_store);
        b.iter(|| {
            let req = RangeRequest {
                key: prefilled_key(bump() * 7919 % total),
                ..Default::default()
            };
            let resp = store.range(&req).expect("range");
            assert_eq!(resp.kvs.len(), 1);
            black_box(resp)
        })
    });
    g.throughput(Throughput::Elements(PER_PREFIX as u64));
    g.bench_function("range_100_keys_prefix", |b| {
        let (_, store) = fixture.get_or_init(prefilled_store);
        b.iter(|| {
            let p = bump() % PREFIXES;
            let req = RangeRequest {
                key: format!("p{p:03}/").into_bytes(),
                // The prefix's end: '/' + 1.
                range_end: format!("p{p:03}0").into_bytes(),
                ..Default::default()
            };
            let resp = store.range(&req).expect("range");
            assert_eq!(resp.kvs.len(), PER_PREFIX);
            black_box(resp)
        })
    });
    g.throughput(Throughput::Elements(4));
    g.bench_function("txn_4_puts", |b| {
        let (_, store) = fixture.get_or_init(prefilled_store);
        b.iter(|| {
            let base = bump() * 4;
            let txn = TxnRequest {
                success: (0..4)
                    .map(|j| RequestOp {
                        request: Some(OpRequest::RequestPut(put_request(prefilled_key(
                            (base + j) % total,
                        )))),
                    })
                    .collect(),
                ..Default::default()
            };
            let mut a = store.begin_apply();
            black_box(a.txn(&txn).expect("txn"));
            black_box(a.commit().expect("commit"));
        })
    });
    g.finish();
}

// ---------------------------------------------------------- key index ----

const INDEX_KEYS: usize = 100_000;

/// 100k keys, each put twice: at revisions 2.. (first round) and again
/// after every key has been written once (second round).
fn built_index() -> (TreeIndex, Vec<Vec<u8>>) {
    let keys: Vec<Vec<u8>> = (0..INDEX_KEYS)
        .map(|i| format!("/registry/pods/ns{:03}/pod-{i:06}", i % 100).into_bytes())
        .collect();
    let mut index = TreeIndex::default();
    let mut rev = 1;
    for _round in 0..2 {
        for k in &keys {
            rev += 1;
            index.put(k, Revision::new(rev, 0));
        }
    }
    (index, keys)
}

fn key_index(c: &mut Criterion) {
    let fixture: OnceCell<(TreeIndex, Vec<Vec<u8>>)> = OnceCell::new();
    let n = Cell::new(0usize);
    let next = || {
        let i = n.get();
        n.set(i + 1);
        i * 7919 % INDEX_KEYS
    };
    let current = 1 + 2 * INDEX_KEYS as i64;
    // Between the rounds: every key has exactly its first revision.
    let past = 1 + INDEX_KEYS as i64;

    let mut g = c.benchmark_group("key_index");
    g.throughput(Throughput::Elements(1));
    g.bench_function("get_current_rev_100k_keys", |b| {
        let (index, keys) = fixture.get_or_init(built_index);
        b.iter(|| assert!(black_box(index.get(&keys[next()], current)).is_some()))
    });
    g.bench_function("get_past_rev_100k_keys", |b| {
        let (index, keys) = fixture.get_or_init(built_index);
        b.iter(|| assert!(black_box(index.get(&keys[next()], past)).is_some()))
    });
    g.finish();
}

// -------------------------------------------------------------- watch ----

const WATCHERS: usize = 1_000;
/// Watchers per stream: below `SINK_CAPACITY`, so a stream drained after
/// every event never fills and no watcher drops to catch-up.
const PER_STREAM: usize = 100;

/// A hub over an empty store with 1,000 synced watchers spread over 10
/// streams, each stream a bounded buffer like the gRPC stream's.
struct FanOut {
    _dir: TempDir,
    hub: Hub,
    sinks: RefCell<Vec<tokio::sync::mpsc::Receiver<Msg>>>,
    rev: Cell<i64>,
    rt: tokio::runtime::Runtime,
}

impl FanOut {
    fn new(end: KeyEnd) -> FanOut {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open store");
        let rev = store.current_revision();
        let hub = Hub::new(store);
        let mut sinks = Vec::new();
        let mut watch_id = 0;
        for _ in 0..WATCHERS / PER_STREAM {
            let (tx, rx) = tokio::sync::mpsc::channel(SINK_CAPACITY);
            let stream = hub.open_stream(tx);
            for _ in 0..PER_STREAM {
                let spec = WatchSpec {
                    key: b"w/".to_vec(),
                    end: end.clone(),
                    no_put: false,
                    no_delete: false,
                    prev_kv: false,
                    fragment: false,
                };
                hub.add_watcher(stream, watch_id, spec, 0, rev + 1, false);
                watch_id += 1;
            }
            sinks.push(rx);
        }
        assert_eq!(hub.counts(), (WATCHERS, 0), "every watcher synced");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        FanOut {
            _dir: dir,
            hub,
            sinks: RefCell::new(sinks),
            rev: Cell::new(rev),
            rt,
        }
    }

    /// Publishes a put of `w/` at the next revision (as apply does after
    /// its sled batch) and waits until every watcher's message is out of
    /// its stream's buffer.
    fn publish_and_drain(&self) {
        let rev = self.rev.get() + 1;
        self.rev.set(rev);
        self.hub.publish(vec![Change {
            revision: Revision::new(rev, 0),
            kv: KeyValue {
                key: b"w/".to_vec().into(),
                create_revision: 2,
                mod_revision: rev,
                version: rev - 1,
                value: value().into(),
                lease: 0,
            },
            is_delete: false,
        }]);
        let mut sinks = self.sinks.borrow_mut();
        self.rt.block_on(async {
            tokio::time::timeout(WAIT, async {
                for rx in sinks.iter_mut() {
                    for _ in 0..PER_STREAM {
                        match rx.recv().await {
                            Some(Msg::Events { header_rev, .. }) if header_rev == rev => {}
                            other => panic!("expected the event at {rev}, got {other:?}"),
                        }
                    }
                }
            })
            .await
            .expect("every watcher got the event in time")
        })
    }
}

fn watch(c: &mut Criterion) {
    let prefix: OnceCell<FanOut> = OnceCell::new();
    let single: OnceCell<FanOut> = OnceCell::new();

    let mut g = c.benchmark_group("watch");
    g.throughput(Throughput::Elements(WATCHERS as u64));
    // Range watchers: each is matched against the key one by one.
    g.bench_function("fanout_1000_prefix_watchers", |b| {
        let f = prefix.get_or_init(|| FanOut::new(KeyEnd::Until(b"w0".to_vec())));
        b.iter(|| f.publish_and_drain())
    });
    // Single-key watchers: found through the key map.
    g.bench_function("fanout_1000_key_watchers", |b| {
        let f = single.get_or_init(|| FanOut::new(KeyEnd::Single));
        b.iter(|| f.publish_and_drain())
    });
    g.finish();
}

// -------------------------------------------------------------- proto ----

fn kv(i: usize, rev: i64) -> KeyValue {
    KeyValue {
        key: prefilled_key(i).into(),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        value: value().into(),
        lease: 0,
    }
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: 0x1c5c_6b8a_8d2c_1f37,
        member_id: 0x8e9e_05c5_2164_694d,
        revision: rev,
        raft_term: 3,
    })
}

/// Encode and decode benchmarks of one prost message, per byte.
fn prost_pair<M: Message + Default>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    msg: &M,
) {
    let bytes = msg.encode_to_vec();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function(format!("{name}/encode"), |b| {
        b.iter(|| black_box(black_box(msg).encode_to_vec()))
    });
    g.bench_function(format!("{name}/decode"), |b| {
        b.iter(|| black_box(M::decode(black_box(&bytes[..])).expect("decode")))
    });
}

fn proto(c: &mut Criterion) {
    let mut g = c.benchmark_group("proto");

    prost_pair(&mut g, "put_request", &put_request(b"key00001".to_vec()));

    let range = RangeResponse {
        header: header(10_000),
        kvs: (0..100).map(|i| kv(i, 2 + i as i64)).collect(),
        more: false,
        count: 100,
    };
    prost_pair(&mut g, "range_response_100_kvs", &range);

    let watch = WatchResponse {
        header: header(10_000),
        watch_id: 7,
        events: (0..10)
            .map(|i| Event::new(EventType::Put, &kv(i, 9_990 + i as i64), None))
            .collect(),
        ..Default::default()
    };
    prost_pair(&mut g, "watch_response_10_events", &watch);

    // The peer message body: bincode of openraft's AppendEntries, as
    // `raft::network` sends it inside a `PeerMessage`.
    let leader = CommittedLeaderId::new(3, 1);
    let append: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(LogId::new(leader, 1_000)),
        entries: (0..64)
            .map(|i| Entry {
                log_id: LogId::new(leader, 1_001 + i as u64),
                payload: EntryPayload::Normal(Request::Put(put_request(prefilled_key(i)))),
            })
            .collect(),
        leader_commit: Some(LogId::new(leader, 1_000)),
    };
    let bytes = bincode::serialize(&append).expect("encode");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("append_entries_64_bincode/encode", |b| {
        b.iter(|| black_box(bincode::serialize(black_box(&append)).expect("encode")))
    });
    g.bench_function("append_entries_64_bincode/decode", |b| {
        b.iter(|| {
            let r: AppendEntriesRequest<TypeConfig> =
                bincode::deserialize(black_box(&bytes)).expect("decode");
            black_box(r)
        })
    });
    g.finish();
}

criterion_group!(benches, wal, mvcc, key_index, watch, proto);
criterion_main!(benches);
