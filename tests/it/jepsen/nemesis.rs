//! The nemesis: faults scheduled from a seed, each with its window recorded.
//!
//! One fault at a time: a quiet gap, a fault held for a few seconds, heal.
//! Kinds: kill -9 of a random member or of the leader (restarted at the end
//! of the window), SIGSTOP/SIGCONT of a random member or of the leader,
//! partitions through the proxies (leader isolated; a random
//! minority/majority split; bridge; the leader's outgoing links one way),
//! slow peer links, clients cut off from a member.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proxy::{Link, Net, Node};
use super::Rng;
use crate::support::TestCluster;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Kill,
    KillLeader,
    Pause,
    PauseLeader,
    PartitionLeader,
    PartitionHalves,
    Slow,
    /// Blackhole the clients' links to one member (both directions).
    ClientBlackhole,
    /// The leader's outgoing peer links dropped; it still hears the others.
    OneWayLeader,
    /// Two sides that cannot talk, and one member that talks to both.
    Bridge,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Kill,
        Kind::KillLeader,
        Kind::Pause,
        Kind::PauseLeader,
        Kind::PartitionLeader,
        Kind::PartitionHalves,
        Kind::Slow,
        Kind::ClientBlackhole,
        Kind::OneWayLeader,
        Kind::Bridge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::KillLeader => "kill-leader",
            Kind::Pause => "pause",
            Kind::PauseLeader => "pause-leader",
            Kind::PartitionLeader => "partition-leader",
            Kind::PartitionHalves => "partition-halves",
            Kind::Slow => "slow",
            Kind::ClientBlackhole => "client-blackhole",
            Kind::OneWayLeader => "one-way-leader",
            Kind::Bridge => "bridge",
        }
    }

    pub fn parse(s: &str) -> Kind {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .unwrap_or_else(|| {
                panic!(
                    "unknown nemesis {s:?}; known: {:?}",
                    Kind::ALL.map(Kind::name)
                )
            })
    }
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: Kind,
    pub detail: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

pub struct Nemesis {
    pub kinds: Vec<Kind>,
    pub seed: u64,
    pub until: Instant,
    pub t0: Instant,
}

fn ns(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

impl Nemesis {
    /// Runs faults until `until` (at most 1000), then heals everything and
    /// waits for the cluster to serve again. Returns the cluster and the log.
    /// `crashes`: members found dead that the nemesis had not killed.
    pub async fn run(
        self,
        mut c: TestCluster,
        net: Arc<Net>,
    ) -> (TestCluster, Vec<Fault>, Vec<String>) {
        let mut crashes = Vec::new();
        let mut rng = Rng::new(self.seed);
        let mut log = Vec::new();
        let n = c.size();
        for _ in 0..1000 {
            let quiet = Duration::from_millis(1500 + rng.below(1500));
            if Instant::now() + quiet + Duration::from_secs(3) >= self.until {
                break;
            }
            tokio::time::sleep(quiet).await;
            let kind = self.kinds[rng.below(self.kinds.len() as u64) as usize];
            let hold = Duration::from_millis(2500 + rng.below(3000));
            let leader = match kind {
                Kind::KillLeader
                | Kind::PauseLeader
                | Kind::PartitionLeader
                | Kind::OneWayLeader => match c.leader().await {
                    Some(l) => l,
                    None => rng.below(n as u64) as usize,
                },
                _ => rng.below(n as u64) as usize,
            };
            let start_ns = ns(self.t0);
            let detail;
            match kind {
                Kind::Kill | Kind::KillLeader => {
                    detail = format!("kill -9 m{leader}, restart after {hold:?}");
                    c.member_mut(leader).kill9();
                    net.set_pid(leader, None);
                    tokio::time::sleep(hold).await;
                    c.member_mut(leader).start();
                    net.set_pid(leader, c.member(leader).pid());
                }
                Kind::Pause | Kind::PauseLeader => {
                    detail = format!("SIGSTOP m{leader} for {hold:?}");
                    c.member_mut(leader).pause();
                    tokio::time::sleep(hold).await;
                    c.member_mut(leader).resume();
                }
                Kind::PartitionLeader => {
                    let rest: Vec<usize> = (0..n).filter(|&j| j != leader).collect();
                    detail = format!("isolate m{leader} from {rest:?} for {hold:?}");
                    net.cut(&[leader], &rest, Link::Drop);
                    tokio::time::sleep(hold).await;
                    net.heal();
                }
                Kind::PartitionHalves => {
                    let mut all: Vec<usize> = (0..n).collect();
                    rng.shuffle(&mut all);
                    let (minority, majority) = all.split_at(n / 2);
                    detail = format!("partition {minority:?} | {majority:?} for {hold:?}");
                    net.cut(minority, majority, Link::Drop);
                    tokio::time::sleep(hold).await;
                    net.heal();
                }
                Kind::OneWayLeader => {
                    detail = format!("drop m{leader} -> others (one way) for {hold:?}");
                    for j in (0..n).filter(|&j| j != leader) {
                        net.set(Node::Member(leader), Node::Member(j), Link::Drop);
                    }
                    tokio::time::sleep(hold).await;
                    net.heal();
                }
                Kind::Bridge => {
                    let mut all: Vec<usize> = (0..n).collect();
                    rng.shuffle(&mut all);
                    let bridge = all[0];
                    let (a, b) = all[1..].split_at((n - 1) / 2);
                    detail = format!("bridge m{bridge} between {a:?} and {b:?} for {hold:?}");
                    net.cut(a, b, Link::Drop);
                    tokio::time::sleep(hold).await;
                    net.heal();
                }
                Kind::ClientBlackhole => {
                    detail = format!("blackhole clients <-> m{leader} for {hold:?}");
                    net.set(Node::Client, Node::Member(leader), Link::Drop);
                    net.set(Node::Member(leader), Node::Client, Link::Drop);
                    tokio::time::sleep(hold).await;
                    net.heal();
                }
                Kind::Slow => {
                    let d = Duration::from_millis(20 + rng.below(80));
                    detail = format!("delay every peer link by {d:?} for {hold:?}");
                    let all: Vec<usize> = (0..n).collect();
                    for &a in &all {
                        for &b in &all {
                            if a != b {
                                net.set(Node::Member(a), Node::Member(b), Link::Delay(d));
                            }
                        }
                    }
                    tokio::time::sleep(hold).await;
                    net.heal();
                }
            }
            eprintln!(
                "[jepsen] {:>7.3}s {} {detail}",
                start_ns as f64 / 1e9,
                kind.name()
            );
            log.push(Fault {
                kind,
                detail,
                start_ns,
                end_ns: ns(self.t0),
            });
        }
        // Heal everything.
        net.heal();
        for i in 0..n {
            if c.member(i).is_paused() {
                c.member_mut(i).resume();
            }
            if !c.member_mut(i).is_running() {
                crashes.push(format!("m{i} exited on its own\n{}", c.member(i).logs()));
                c.member_mut(i).kill9();
                c.member_mut(i).start();
                net.set_pid(i, c.member(i).pid());
            }
        }
        (c, log, crashes)
    }
}
