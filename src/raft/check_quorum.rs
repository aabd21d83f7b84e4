//! etcd's CheckQuorum: a leader that has not been acknowledged by a quorum
//! for an election timeout steps down.
//!
//! openraft 0.9 keeps a cut-off leader leading forever: clients on the
//! minority side would meet a leader that can never commit, and
//! `endpoint status` would report it. Like etcd's raft with CheckQuorum,
//! the leader here asks every voter, every half election timeout, whom it
//! follows (the peer `Ping`); once a full election timeout has passed
//! without a quorum (itself included) naming it, it steps down.
//!
//! openraft has no step-down call (a leader ignores an election trigger),
//! so the leader is handed what a real candidate would send: a vote request
//! for the next term from another voter, carrying the leader's own last log
//! id. It grants it and becomes a follower, exactly as if that peer had
//! campaigned; without a quorum nobody wins, so the member reports no
//! leader until the majority is back.

use std::time::{Duration, Instant};

use futures::future::join_all;
use openraft::raft::VoteRequest;
use openraft::storage::RaftLogStorage;
use openraft::{ServerState, Vote};

use super::log_store::LogStore;
use super::network::Peers;
use super::types::{Raft, TypeConfig};

pub async fn run(
    raft: Raft,
    peers: Peers,
    mut log: LogStore<TypeConfig>,
    election_timeout: Duration,
) {
    let mut last_confirmed = Instant::now();
    let mut ticker = tokio::time::interval(election_timeout / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let m = raft.metrics().borrow().clone();
        if m.running_state.is_err() {
            return;
        }
        let membership = m.membership_config.membership().clone();
        let others: Vec<_> = membership
            .voter_ids()
            .filter(|id| *id != m.id)
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
            .collect();
        if m.state != ServerState::Leader || others.is_empty() {
            last_confirmed = Instant::now();
            continue;
        }
        let answers = join_all(
            others
                .iter()
                .map(|(id, node)| peers.ping(*id, node, election_timeout / 2)),
        )
        .await;
        let acks = 1 + answers
            .iter()
            .filter(|a| matches!(a, Ok(Some(l)) if *l == m.id))
            .count();
        if acks * 2 > others.len() + 1 {
            last_confirmed = Instant::now();
            continue;
        }
        if last_confirmed.elapsed() < election_timeout {
            continue;
        }
        tracing::warn!(
            term = m.current_term,
            acks,
            voters = others.len() + 1,
            "leader has not been acknowledged by a quorum for an election timeout; stepping down"
        );
        let Ok(state) = log.get_log_state().await else {
            return;
        };
        let vote = Vote::new(m.current_term + 1, others[0].0);
        if let Err(e) = raft.vote(VoteRequest::new(vote, state.last_log_id)).await {
            tracing::warn!(error = %e, "stepping down failed");
        }
        last_confirmed = Instant::now();
    }
}
