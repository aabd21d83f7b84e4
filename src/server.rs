//! Wiring: opens the WAL and the store, starts Raft, serves etcd's gRPC API.
//!
//! `serve` takes already-bound listeners and a shutdown future, so tests and
//! embedders can bind port 0; `run` binds the URLs from the flags.
//!
//! ```text
//! <data-dir>/wal/    the Raft log (src/wal): segments, vote, committed index
//! <data-dir>/db/     sled: the MVCC key space, leases, applied log id
//! <data-dir>/snap/   Raft snapshots of the state machine
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::api::{self, Context, GRPC_OVERHEAD_BYTES};
use crate::cluster::Bootstrap;
use crate::coalesce::Coalesced;
use crate::config::{split_urls, Config};
use crate::lease::{Lessor, LessorConfig};
use crate::mvcc::Store;
use crate::proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::proto::oxcdpeerpb::peer_server::PeerServer;
use crate::raft::forwarder::Forwarder;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Peers, MAX_PEER_MESSAGE};
use crate::raft::proposer::Proposer;
use crate::raft::read_index::ReadIndex;
use crate::raft::service::PeerService;
use crate::raft::state_machine::StateMachine;
use crate::raft::types::{Raft, TypeConfig};
use crate::tls;
use crate::watch::Hub;

/// Sockets the server accepts on, bound by the caller.
pub struct Listeners {
    pub client: Vec<ClientListener>,
    pub peer: Vec<TcpListener>,
    /// `--listen-metrics-urls`: plain HTTP health paths (see [`api::health`]).
    pub metrics: Vec<TcpListener>,
}

/// A client socket and whether its URL is `https` (served with TLS, see
/// [`crate::tls`]).
pub struct ClientListener {
    pub listener: TcpListener,
    pub tls: bool,
}

impl Listeners {
    /// Binds `--listen-client-urls` and `--listen-peer-urls`.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        tls::check_client_urls(config)?;
        let mut client = Vec::new();
        for url in split_urls(&config.listen_client_urls).map_err(anyhow::Error::msg)? {
            let addr = url.bind_addr().map_err(anyhow::Error::msg)?;
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr}"))?;
            client.push(ClientListener {
                listener,
                tls: url.tls,
            });
        }
        let mut peer = Vec::new();
        for url in split_urls(&config.listen_peer_urls).map_err(anyhow::Error::msg)? {
            let addr = url.bind_addr().map_err(anyhow::Error::msg)?;
            peer.push(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listen on {addr}"))?,
            );
        }
        let mut metrics = Vec::new();
        for url in split_urls(&config.listen_metrics_urls).map_err(anyhow::Error::msg)? {
            let addr = url.bind_addr().map_err(anyhow::Error::msg)?;
            metrics.push(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listen on {addr}"))?,
            );
        }
        Ok(Listeners {
            client,
            peer,
            metrics,
        })
    }
}

/// Binds the configured URLs and serves until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    serve(config, listeners, shutdown).await
}

/// Starts the member on the given listeners and serves until `shutdown`.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    // Only https listeners use the TLS flags (http ones ignore them, as etcd does).
    let tls_config = match listeners.client.iter().find(|l| l.tls) {
        Some(l) => match tls::server_tls(&config)? {
            Some(c) => Some(c),
            None => {
                let url = format!("https://{}", l.listener.local_addr()?);
                return Err(tls::missing_cert_error(&url));
            }
        },
        None => None,
    };
    let boot = Bootstrap::from_config(&config).map_err(anyhow::Error::msg)?;
    let data_dir = config.data_dir();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("create {}", data_dir.display()))?;

    let log_store = LogStore::<TypeConfig>::open(&config.wal_dir())
        .with_context(|| format!("open WAL in {}", config.wal_dir().display()))?;
    let store = Store::open(&data_dir.join("db")).context("open the MVCC store")?;
    // The state machine first: it may reinstall a snapshot (after a crash
    // during an install, or on a restored backup's first start), and the
    // watch hub and the lessor start from the store it leaves.
    let sm = StateMachine::open(store.clone(), &data_dir.join("snap")).context("open snapshots")?;
    let hub = Hub::new(store.clone());
    let lessor = Lessor::new(
        LessorConfig::new(config.heartbeat(), config.election()),
        store.lease_records(),
    );
    let sm = sm.with_watch_hub(hub.clone()).with_lessor(lessor.clone());
    let directory = sm.directory();
    let applied_index = sm.applied_index();

    let raft_config = openraft::Config {
        cluster_name: config.initial_cluster_token.clone(),
        // openraft times every AppendEntries out after one heartbeat
        // interval, so with etcd's 100 ms a peer link whose round trip plus
        // fsync took longer never replicated anything (found by the
        // slow-link nemesis). Idle heartbeats at a third of the election
        // timeout still keep followers from campaigning, and new entries and
        // commits are sent at once, not on the heartbeat.
        heartbeat_interval: raft_heartbeat(config.heartbeat_interval, config.election_timeout),
        election_timeout_min: config.election_timeout,
        // openraft's followers refuse votes for `election_timeout_max` after
        // hearing from a leader (its leader lease), so no campaign can win
        // before then: a narrow window (etcd randomizes over [1, 2) x the
        // timeout) keeps failover near two election timeouts, not three.
        election_timeout_max: config.election_timeout + config.election_timeout / 4,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        max_in_snapshot_log_to_keep: config.experimental_snapshot_catchup_entries,
        ..Default::default()
    };
    let raft_config = Arc::new(raft_config.validate().context("raft configuration")?);
    let peers = Peers::new(boot.cluster_id, boot.member_id, config.election());
    let raft = Raft::new(
        boot.member_id,
        raft_config,
        peers.clone(),
        log_store.clone(),
        sm,
    )
    .await
    .context("start raft")?;

    let proposer = Proposer::spawn(raft.clone());
    let reads = ReadIndex::new(raft.clone(), peers.clone(), config.election());
    let api_cell = Arc::new(std::sync::OnceLock::new());
    tokio::spawn(crate::raft::check_quorum::run(
        raft.clone(),
        peers.clone(),
        log_store.clone(),
        config.election(),
    ));

    // Peers must reach us before the first election, so the peer service
    // starts before anything waits for a leader.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners.peer {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "serving peer traffic");
        let service = PeerServer::new(PeerService::new(
            raft.clone(),
            proposer.clone(),
            reads.clone(),
            api_cell.clone(),
            boot.cluster_id,
            boot.member_id,
        ))
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE);
        let mut stop = stop_rx.clone();
        servers.spawn(async move {
            Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(accept_nodelay(listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
    }

    if !raft.is_initialized().await? {
        if config.initial_cluster_state != "new" {
            bail!("--initial-cluster-state=existing needs a data dir that already holds a member");
        }
        tracing::info!(member_id = %format!("{:x}", boot.member_id), cluster_id = %format!("{:x}", boot.cluster_id), "bootstrapping a new cluster");
        match raft.initialize(boot.members.clone()).await {
            Ok(()) => {}
            // Another member's election reached us first: the cluster is
            // forming through it, and its leader will replicate the same
            // initial membership to us.
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(e),
            )) => tracing::info!(reason = %e, "joining the cluster another member is forming"),
            Err(e) => return Err(e).context("initialize the cluster"),
        }
    } else if is_sole_voter(&raft, boot.member_id) {
        // A one-member cluster need not sit out an election timeout after a
        // restart: its own vote is the quorum.
        raft.trigger().elect().await?;
    }
    wait_for_leader(&raft, config.election() * 3).await;

    let ctx = Context {
        raft: raft.clone(),
        forwarder: Forwarder::spawn(peers.clone()),
        peers,
        proposer,
        reads,
        store: store.clone(),
        lessor: lessor.clone(),
        directory,
        log: log_store,
        applied_index,
        metrics: raft.metrics(),
        cluster_id: boot.cluster_id,
        member_id: boot.member_id,
        data_dir: data_dir.clone(),
        max_txn_ops: config.max_txn_ops as usize,
        unsafe_no_read_barrier: config.unsafe_no_read_barrier,
        max_request_bytes: config.max_request_bytes as usize,
        max_recv_bytes: config.max_request_bytes as usize + GRPC_OVERHEAD_BYTES,
        quota_bytes: config.quota_bytes(),
        request_timeout: Duration::from_secs(5) + config.election() * 2,
    };
    let _ = api_cell.set(ctx.clone());
    // As etcd, the metrics listener answers health probes from the start,
    // before this member serves clients (a probe then learns why not).
    for listener in listeners.metrics {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "serving /health, /livez, /readyz");
        let mut stop = stop_rx.clone();
        let routes = api::health::metrics_routes(ctx.clone());
        servers.spawn(async move {
            Server::builder()
                .accept_http1(true)
                .add_routes(routes)
                .serve_with_incoming_shutdown(accept_nodelay(listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
    }
    // As etcd: clients are served once this member's attributes are in
    // the cluster's state (immediately after a restart, when they already
    // are), so no client ever sees this member unpublished.
    // A stop requested meanwhile (no quorum yet) is honoured at once.
    let own = &boot.members[&boot.member_id];
    let mut shutdown = std::pin::pin!(shutdown);
    let published = tokio::select! {
        _ = ctx.clone().publish(own.name.clone(), own.client_urls.clone()) => true,
        _ = &mut shutdown => false,
    };
    // Room past the receive limit so that `Context::check_received` answers
    // oversized messages with grpc-go's status, as etcd does.
    let max_msg = ctx.max_recv_bytes.saturating_mul(4);

    let client_listeners = if published {
        listeners.client
    } else {
        Vec::new()
    };
    for ClientListener {
        listener,
        tls: https,
    } in client_listeners
    {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, https, member_id = %format!("{:x}", boot.member_id), "serving client requests");
        let mut builder = Server::builder();
        if let Some(tls_config) = tls_config.as_ref().filter(|_| https) {
            builder = builder
                .tls_config(tls_config.clone())
                .context("client TLS configuration")?;
        }
        // gRPC and etcd's HTTP health paths share the port (HTTP/1.1 and
        // HTTP/2 both accepted), as on etcd.
        let mut grpc = tonic::service::Routes::builder();
        grpc.add_service(
            KvServer::new(api::kv::KvService::new(ctx.clone())).max_decoding_message_size(max_msg),
        )
        .add_service(
            LeaseServer::new(api::lease::LeaseService::new(ctx.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            MaintenanceServer::new(api::maintenance::MaintenanceService::new(ctx.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            ClusterServer::new(api::cluster::ClusterService::new(ctx.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            WatchServer::new(api::watch::WatchService::new(
                ctx.clone(),
                hub.clone(),
                config.experimental_watch_progress_notify_interval,
                config.election(),
            ))
            .max_decoding_message_size(max_msg),
        );
        let routes = api::health::client_routes(grpc.routes(), ctx.clone());
        let router = builder.accept_http1(true).add_routes(routes);
        let mut stop = stop_rx.clone();
        servers.spawn(async move {
            router
                .serve_with_incoming_shutdown(accept_nodelay(listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
    }
    // The lessor follows leadership on every member; only the leader's
    // expires leases (through Raft).
    let lessor_task = tokio::spawn(crate::lease::run(ctx.clone(), lessor, stop_rx.clone()));

    if published {
        tokio::select! {
            _ = &mut shutdown => {}
            Some(res) = servers.join_next() => {
                res??;
                bail!("a listener stopped unexpectedly");
            }
        }
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    while let Some(res) = servers.join_next().await {
        if let Ok(Err(e)) = res {
            tracing::warn!(error = %e, "a listener failed while stopping");
        }
    }
    let _ = lessor_task.await;
    raft.shutdown().await.ok();
    store.flush().context("flush the store")?;
    tracing::info!("stopped");
    Ok(())
}

/// openraft's heartbeat interval (also its AppendEntries timeout): etcd's
/// `--heartbeat-interval`, or a third of the election timeout when that is
/// longer.
fn raft_heartbeat(heartbeat_ms: u64, election_ms: u64) -> u64 {
    heartbeat_ms.max(election_ms / 3)
}

fn is_sole_voter(raft: &Raft, me: u64) -> bool {
    let m = raft.metrics().borrow().clone();
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    voters == [me]
}

async fn wait_for_leader(raft: &Raft, max: Duration) {
    let mut metrics = raft.metrics();
    let _ = tokio::time::timeout(max, metrics.wait_for(|m| m.current_leader.is_some())).await;
}

/// Accepted connections with Nagle's algorithm off, as Go's net package
/// (and so etcd) sets them: small gRPC frames must not wait for the peer's
/// delayed ACK (a 40 ms stall per request otherwise). tonic applies its own
/// `tcp_nodelay` only to listeners it binds itself. Their writes are
/// coalesced instead (see [`crate::coalesce`]).
fn accept_nodelay(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<Coalesced<tokio::net::TcpStream>>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(Coalesced::new(conn))
    })
}
