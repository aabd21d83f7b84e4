//! etcd's Watch service (etcd 3.5 `server/etcdserver/api/v3rpc/watch.go`).
//!
//! One gRPC stream carries many watchers. Each stream has:
//!
//! - a bounded buffer of [`Msg`]s (the hub's events, progress, and the
//!   stream's own control responses), turned into `WatchResponse`s as
//!   tonic pulls them — so a client that stops reading fills the buffer
//!   and its watchers fall back to catching up from the store;
//! - a task that reads the requests (create, cancel, progress), ticks the
//!   periodic progress notifications and, for `hasleader` streams, watches
//!   for a lost leader.
//!
//! A `created` response is queued before the watcher joins the hub, and a
//! `canceled` one after it left, so they bracket the watcher's events.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::Context;
use crate::error::Error;
use crate::mvcc::Store;
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::watch::{Hub, KeyEnd, Msg, StreamId, WatchSpec, WatcherHandle, SINK_CAPACITY};

/// clientv3's `InvalidWatchID`.
const INVALID_WATCH_ID: i64 = -1;
/// etcd mvcc `AutoWatchID`: the server picks the id.
const AUTO_WATCH_ID: i64 = 0;
/// etcd `maxNoLeaderCnt`: election timeouts without a leader before
/// `hasleader` streams are cancelled.
const MAX_NO_LEADER_CNT: u32 = 3;
/// etcd's gRPC metadata of clientv3's `WithRequireLeader`.
const REQUIRE_LEADER_KEY: &str = "hasleader";

const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";

pub struct WatchService {
    ctx: Context,
    hub: Hub,
    progress_interval: Duration,
    election_timeout: Duration,
}

impl WatchService {
    pub fn new(
        ctx: Context,
        hub: Hub,
        progress_interval: Duration,
        election_timeout: Duration,
    ) -> Self {
        WatchService {
            ctx,
            hub,
            progress_interval,
            election_timeout,
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let require_leader = req
            .metadata()
            .get(REQUIRE_LEADER_KEY)
            .is_some_and(|v| v.as_bytes() == b"true");
        if require_leader && !self.has_leader() {
            return Err(Error::NoLeader.into());
        }
        let (sink, rx) = mpsc::channel(SINK_CAPACITY);
        let stream = self.hub.open_stream(sink.clone());
        let session = Session {
            ctx: self.ctx.clone(),
            hub: self.hub.clone(),
            stream,
            sink,
            ids: HashMap::new(),
            next_id: 0,
        };
        let timers = Timers {
            progress: jittered(self.progress_interval, stream),
            election: require_leader.then_some(self.election_timeout),
        };
        tokio::spawn(session.run(req.into_inner(), timers));
        let out = responses(rx, self.ctx.clone(), self.hub.store().clone());
        Ok(Response::new(Box::pin(out)))
    }
}

impl WatchService {
    fn has_leader(&self) -> bool {
        self.ctx.metrics.borrow().current_leader.is_some()
    }
}

/// etcd `GetProgressReportInterval`: the interval plus up to a tenth of it,
/// so streams opened together do not all notify at once.
fn jittered(interval: Duration, seed: u64) -> Duration {
    let tenth = (interval.as_nanos() / 10).max(1) as u64;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let x = (nanos ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % tenth;
    interval + Duration::from_nanos(x)
}

struct Timers {
    progress: Duration,
    /// Set for `hasleader` streams: how often to check for a leader.
    election: Option<Duration>,
}

/// The request side of one stream (etcd `recvLoop` plus the tickers).
struct Session {
    ctx: Context,
    hub: Hub,
    stream: StreamId,
    sink: mpsc::Sender<Msg>,
    /// This stream's watch ids (etcd `watchStream.watchers`).
    ids: HashMap<i64, WatcherHandle>,
    next_id: i64,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>, timers: Timers) {
        let start = tokio::time::Instant::now();
        let mut progress = tokio::time::interval_at(start + timers.progress, timers.progress);
        let election = timers.election.unwrap_or(Duration::from_secs(3600));
        let mut leader_check = tokio::time::interval_at(start + election, election);
        let mut no_leader = 0;
        let mut inbound_open = true;
        let sink = self.sink.clone();
        loop {
            tokio::select! {
                _ = sink.closed() => break,
                msg = inbound.message(), if inbound_open => match msg {
                    Ok(Some(req)) => {
                        if !self.handle(req).await {
                            break;
                        }
                    }
                    // A half-closed stream keeps its watchers (as etcd's does).
                    Ok(None) => inbound_open = false,
                    Err(status) => {
                        let _ = sink.try_send(Msg::Fail(status));
                        break;
                    }
                },
                _ = progress.tick() => self.hub.progress_tick(self.stream),
                _ = leader_check.tick(), if timers.election.is_some() => {
                    if self.ctx.metrics.borrow().current_leader.is_none() {
                        no_leader += 1;
                    } else {
                        no_leader = 0;
                    }
                    if no_leader >= MAX_NO_LEADER_CNT {
                        tracing::info!(stream = self.stream, "no leader: cancelling a hasleader watch stream");
                        self.hub.close_stream(self.stream);
                        let _ = sink.send(Msg::Fail(Error::NoLeader.into())).await;
                        break;
                    }
                }
            }
        }
        self.hub.close_stream(self.stream);
    }

    /// Handles one request; false when the stream is gone.
    async fn handle(&mut self, req: WatchRequest) -> bool {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if let Some(h) = self.ids.remove(&c.watch_id) {
                    self.hub.remove_watcher(h);
                    let rev = self.ctx.store.current_revision();
                    let msg = Msg::Canceled {
                        watch_id: c.watch_id,
                        rev,
                    };
                    return self.sink.send(msg).await.is_ok();
                }
                true
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.hub.request_progress(self.stream);
                true
            }
            None => true,
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> bool {
        let wsrev = self.ctx.store.current_revision();
        let created = match self.register(c, wsrev) {
            Ok((watch_id, spec, start_rev, progress_notify)) => {
                // Queue `created` before the watcher can produce events.
                let msg = Msg::Created {
                    watch_id,
                    rev: wsrev,
                    cancel_reason: None,
                };
                if self.sink.send(msg).await.is_err() {
                    return false;
                }
                let next_rev = if start_rev == 0 { wsrev + 1 } else { start_rev };
                let h = self.hub.add_watcher(
                    self.stream,
                    watch_id,
                    spec,
                    start_rev,
                    next_rev,
                    progress_notify,
                );
                self.ids.insert(watch_id, h);
                return true;
            }
            Err(reason) => Msg::Created {
                watch_id: INVALID_WATCH_ID,
                rev: wsrev,
                cancel_reason: Some(reason),
            },
        };
        self.sink.send(created).await.is_ok()
    }

    /// etcd recvLoop's normalisation and `watchStream.Watch`'s checks;
    /// returns (watch id, spec, start revision, progress_notify).
    fn register(
        &mut self,
        c: WatchCreateRequest,
        _wsrev: i64,
    ) -> Result<(i64, WatchSpec, i64, bool), String> {
        if c.start_revision < 0 {
            return Err(Error::Compacted.to_string());
        }
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let end = match c.range_end.as_slice() {
            [] => KeyEnd::Single,
            [0] => KeyEnd::Unbounded,
            e => KeyEnd::Until(e.to_vec()),
        };
        if let KeyEnd::Until(e) = &end {
            if key.as_slice() >= e.as_slice() {
                return Err(ERR_EMPTY_RANGE.into());
            }
        }
        let watch_id = if c.watch_id == AUTO_WATCH_ID {
            while self.ids.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else if self.ids.contains_key(&c.watch_id) {
            return Err(ERR_DUPLICATE_ID.into());
        } else {
            c.watch_id
        };
        let filters = c
            .filters
            .iter()
            .filter_map(|f| FilterType::try_from(*f).ok());
        let (mut no_put, mut no_delete) = (false, false);
        for f in filters {
            match f {
                FilterType::Noput => no_put = true,
                FilterType::Nodelete => no_delete = true,
            }
        }
        let spec = WatchSpec {
            key,
            end,
            no_put,
            no_delete,
            prev_kv: c.prev_kv,
            fragment: c.fragment,
        };
        Ok((watch_id, spec, c.start_revision, c.progress_notify))
    }
}

/// The response side: buffer messages → `WatchResponse`s, as tonic pulls.
fn responses(
    rx: mpsc::Receiver<Msg>,
    ctx: Context,
    store: Store,
) -> impl Stream<Item = Result<WatchResponse, Status>> + Send {
    // The context and store travel in the state: cloning them per response
    // (a dozen reference counts each) showed in the fan-out profile.
    struct State {
        rx: mpsc::Receiver<Msg>,
        queue: VecDeque<WatchResponse>,
        done: bool,
        ctx: Context,
        store: Store,
    }
    let state = State {
        rx,
        queue: VecDeque::new(),
        done: false,
        ctx,
        store,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if let Some(r) = st.queue.pop_front() {
                return Some((Ok(r), st));
            }
            match st.rx.recv().await? {
                Msg::Fail(status) => {
                    st.done = true;
                    return Some((Err(status), st));
                }
                msg => to_responses(msg, &st.ctx, &st.store, &mut st.queue),
            }
        }
    })
}

fn to_responses(msg: Msg, ctx: &Context, store: &Store, out: &mut VecDeque<WatchResponse>) {
    let resp = match msg {
        Msg::Events {
            watch_id,
            header_rev,
            events,
            prev_kv,
            fragment,
        } => {
            let resp = WatchResponse {
                header: Some(ctx.header(header_rev)),
                watch_id,
                events: events.iter().map(|e| e.to_proto(store, prev_kv)).collect(),
                ..Default::default()
            };
            if fragment {
                fragments(resp, ctx.max_request_bytes, out);
                return;
            }
            resp
        }
        Msg::Compacted {
            watch_id,
            compact_rev,
        } => WatchResponse {
            // etcd leaves the revision of this response at 0.
            header: Some(ctx.header(0)),
            watch_id,
            compact_revision: compact_rev,
            canceled: true,
            ..Default::default()
        },
        Msg::Progress { watch_id, rev } => WatchResponse {
            header: Some(ctx.header(rev)),
            watch_id,
            ..Default::default()
        },
        Msg::Created {
            watch_id,
            rev,
            cancel_reason,
        } => WatchResponse {
            header: Some(ctx.header(rev)),
            watch_id,
            created: true,
            canceled: cancel_reason.is_some(),
            cancel_reason: cancel_reason.unwrap_or_default(),
            ..Default::default()
        },
        Msg::Canceled { watch_id, rev } => WatchResponse {
            header: Some(ctx.header(rev)),
            watch_id,
            canceled: true,
            ..Default::default()
        },
        Msg::Fail(_) => unreachable!("handled by the caller"),
    };
    out.push_back(resp);
}

/// etcd `sendFragments`: split a response bigger than `--max-request-bytes`
/// into several, all but the last marked `fragment`.
fn fragments(wr: WatchResponse, max: usize, out: &mut VecDeque<WatchResponse>) {
    if wr.encoded_len() < max || wr.events.len() < 2 {
        out.push_back(wr);
        return;
    }
    let mut events = wr.events.into_iter().peekable();
    let template = WatchResponse {
        header: wr.header,
        watch_id: wr.watch_id,
        created: wr.created,
        canceled: wr.canceled,
        compact_revision: wr.compact_revision,
        cancel_reason: wr.cancel_reason,
        fragment: true,
        events: Vec::new(),
    };
    loop {
        let mut cur = template.clone();
        while let Some(ev) = events.next() {
            cur.events.push(ev);
            if cur.events.len() > 1 && cur.encoded_len() >= max {
                let ev = cur.events.pop().expect("pushed");
                // Put it back for the next fragment.
                let rest: Vec<_> = std::iter::once(ev).chain(events).collect();
                events = rest.into_iter().peekable();
                break;
            }
        }
        if events.peek().is_none() {
            cur.fragment = false;
            out.push_back(cur);
            return;
        }
        out.push_back(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

    fn ev(i: usize) -> Event {
        let kv = KeyValue {
            key: format!("k{i}").into(),
            value: vec![b'x'; 100].into(),
            ..Default::default()
        };
        Event::new(EventType::Put, &kv, None)
    }

    #[test]
    fn fragments_split_like_etcd() {
        let wr = WatchResponse {
            watch_id: 7,
            events: (0..10).map(ev).collect(),
            ..Default::default()
        };
        let mut out = VecDeque::new();
        fragments(wr.clone(), 350, &mut out);
        assert!(out.len() > 1);
        let flags: Vec<_> = out.iter().map(|r| r.fragment).collect();
        assert!(flags[..flags.len() - 1].iter().all(|f| *f));
        assert!(!flags[flags.len() - 1]);
        let all: Vec<_> = out.iter().flat_map(|r| r.events.clone()).collect();
        assert_eq!(all, wr.events);
        assert!(out.iter().all(|r| r.watch_id == 7));
        // Small enough: one response, not marked.
        let mut out = VecDeque::new();
        fragments(wr, 1 << 20, &mut out);
        assert_eq!((out.len(), out[0].fragment), (1, false));
    }
}
