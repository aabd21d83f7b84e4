//! The nemesis: faults scheduled from a seed, each with its window recorded.
//!
//! One fault at a time: a quiet gap, a fault held for a few seconds, heal.
//! Kinds: kill -9 of a random member or of the leader (restarted at the end
//! of the window), SIGSTOP/SIGCONT of a random member or of the leader,
//! partitions through the proxies (leader isolated; a random
//! minority/majority split; bridge; the leader's outgoing links one way),
//! slow peer links, clients cut off from a member, and a crash that tears
//! the member's WAL (`torn-wal`, see [`super::torn`] for why each cut is a
//! state a real crash can leave).
//!
//! Kinds are dealt from a shuffled deck (every kind once before any
//! repeats), so a short run still sees many different faults.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proxy::{Link, Net, Node};
use super::{torn, Rng};
use crate::support::{Target, TestCluster};

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
    /// Isolate a member, kill -9 it, cut its newest WAL segment inside a
    /// record written after the isolation, restart it.
    TornWal,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
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
        Kind::TornWal,
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
            Kind::TornWal => "torn-wal",
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

/// One torn-WAL crash, for the report.
#[derive(Clone, Debug)]
pub struct Torn {
    pub member: usize,
    /// What was cut (or why nothing was).
    pub detail: String,
    pub cut: bool,
    /// The member logged the repair of its torn tail.
    pub repair_logged: bool,
    /// The member would not start again (a failure).
    pub refused: Option<String>,
}

/// What the nemesis did.
pub struct Outcome {
    pub cluster: TestCluster,
    pub faults: Vec<Fault>,
    /// Members found dead that the nemesis had not killed, and members that
    /// refused to start after a torn WAL: each a failure.
    pub crashes: Vec<String>,
    pub torn: Vec<Torn>,
    /// When everything was healed (ns since the run began).
    pub healed_ns: u64,
}

/// The log line oxcd's WAL prints when it repairs a torn tail.
pub const REPAIR_LOG: &str = "truncating torn record at tail";

impl Nemesis {
    /// Runs faults until `until` (at most 1000), then heals everything and
    /// waits for the cluster to serve again. Returns the cluster and the log.
    /// `crashes`: members found dead that the nemesis had not killed.
    pub async fn run(self, mut c: TestCluster, net: Arc<Net>) -> Outcome {
        let mut crashes = Vec::new();
        let mut torn_log: Vec<Torn> = Vec::new();
        let mut down: Vec<usize> = Vec::new();
        let mut rng = Rng::new(self.seed);
        let mut log = Vec::new();
        let n = c.size();
        let mut deck: Vec<Kind> = Vec::new();
        for _ in 0..1000 {
            let quiet = Duration::from_millis(1500 + rng.below(1500));
            if Instant::now() + quiet + Duration::from_secs(3) >= self.until {
                break;
            }
            tokio::time::sleep(quiet).await;
            if deck.is_empty() {
                deck = self.kinds.clone();
                rng.shuffle(&mut deck);
            }
            let kind = deck.pop().expect("a kind");
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
                Kind::TornWal if crate::support::target() == Target::Etcd => {
                    detail = format!("etcd: kill -9 m{leader} only (etcd's WAL is not ours to cut), restart after {hold:?}");
                    c.member_mut(leader).kill9();
                    net.set_pid(leader, None);
                    tokio::time::sleep(hold).await;
                    c.member_mut(leader).start();
                    net.set_pid(leader, c.member(leader).pid());
                }
                Kind::TornWal => {
                    let m = leader;
                    let t = torn_crash(&mut c, &net, m, hold, &mut rng).await;
                    detail = format!("m{m}: {}", t.detail);
                    if let Some(why) = &t.refused {
                        crashes.push(format!(
                            "m{m} refused to start after a legal torn WAL tail ({})\n{why}",
                            t.detail
                        ));
                        down.push(m);
                    }
                    torn_log.push(t);
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
        let healed_ns = ns(self.t0);
        for i in 0..n {
            if c.member(i).is_paused() {
                c.member_mut(i).resume();
            }
            if !down.contains(&i) && !c.member_mut(i).is_running() {
                crashes.push(format!("m{i} exited on its own\n{}", c.member(i).logs()));
                c.member_mut(i).kill9();
                c.member_mut(i).start();
                net.set_pid(i, c.member(i).pid());
            }
        }
        Outcome {
            cluster: c,
            faults: log,
            crashes,
            torn: torn_log,
            healed_ns,
        }
    }
}

/// The torn-WAL crash of member `m` (steps in [`super::torn`]); the member
/// is down for about `hold`. A member that exits after the restart is left
/// down and reported.
async fn torn_crash(
    c: &mut TestCluster,
    net: &Net,
    m: usize,
    hold: Duration,
    rng: &mut Rng,
) -> Torn {
    let n = c.size();
    let wal = c.member(m).data_dir().join("wal");
    let others: Vec<usize> = (0..n).filter(|&j| j != m).collect();
    let unknown0 = *net.unknown_sources.lock().unwrap();
    // 1. Nothing the member says from now on reaches anyone.
    net.cut(&[m], &others, Link::Sever);
    net.set(Node::Member(m), Node::Client, Link::Sever);
    // 2. What it may have synced or said is within these bytes.
    let before = torn::newest_segment(&wal);
    // 3. Let it write things nobody will hear of, then crash it.
    // (A follower campaigns after an election timeout, 500 ms here.)
    let isolated = Duration::from_millis(1500 + rng.below(1500));
    tokio::time::sleep(isolated).await;
    c.member_mut(m).kill9();
    net.set_pid(m, None);
    let unknown1 = *net.unknown_sources.lock().unwrap();
    net.heal();
    // 4. Cut inside a record written after step 2.
    let mut cut = false;
    let detail = match torn::newest_segment(&wal) {
        None => format!("isolated {isolated:?}, kill -9; no WAL segment to cut"),
        Some(after) if unknown1 != unknown0 => format!(
            "isolated {isolated:?}, kill -9; not cut: an unattributed peer connection opened meanwhile ({} bytes in {})",
            after.1.len(),
            after.0.display()
        ),
        Some(after) => match torn::safe_from(&before, &after) {
            Err(why) => format!("isolated {isolated:?}, kill -9; not cut: {why}"),
            Ok(safe) => match torn::choose_cut(&after.1, safe, rng) {
                None => format!(
                    "isolated {isolated:?}, kill -9; not cut: nothing written after the isolation ({} bytes)",
                    after.1.len()
                ),
                Some(k) => {
                    let name = after.0.file_name().unwrap().to_string_lossy().into_owned();
                    match torn::apply(&after.0, &k) {
                        Ok(()) => {
                            cut = true;
                            format!(
                                "isolated {isolated:?}, kill -9; {} {name} at {} of {} bytes (inside a {} record at {}..{}; {} bytes written after the isolation)",
                                match k.mode {
                                    torn::Mode::Truncate => "truncated",
                                    torn::Mode::ZeroFill => "zero-filled",
                                },
                                k.offset,
                                k.len,
                                k.frame.type_name(),
                                k.frame.start,
                                k.frame.end,
                                k.len - safe
                            )
                        }
                        Err(e) => format!("isolated {isolated:?}, kill -9; cutting {name} failed: {e}"),
                    }
                }
            },
        },
    };
    tokio::time::sleep(
        hold.saturating_sub(isolated)
            .max(Duration::from_millis(500)),
    )
    .await;
    c.member_mut(m).start();
    net.set_pid(m, c.member(m).pid());
    // The WAL is recovered before the member serves: it either logs the
    // repair or exits naming the file (bounded wait).
    let mut repair_logged = false;
    let mut refused = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.member(m).full_log().contains(REPAIR_LOG) {
            repair_logged = true;
            break;
        }
        if !c.member_mut(m).is_running() {
            refused = Some(c.member(m).logs());
            c.member_mut(m).kill9();
            net.set_pid(m, None);
            break;
        }
    }
    Torn {
        member: m,
        detail: format!("{detail}; restarted after {hold:?}"),
        cut,
        repair_logged,
        refused,
    }
}
