//! Jepsen-style fault tests (DESIGN.md, testing layer 4; issue 6).
//!
//! A cluster of real oxcd processes whose every peer and client link passes
//! through a fault-injecting proxy (`proxy`); concurrent clients record a
//! history of register operations (`workload`, `history`); a seeded nemesis
//! kills, pauses and partitions members (`nemesis`); then independent
//! checkers judge the history (`checker`) and a report is printed (`report`).
//!
//! `cargo test --test it jepsen::quick` runs the quick mode (about a minute,
//! three members, every fault kind). The same test is the long mode when
//! these are set:
//! - `OXCD_JEPSEN_TIME_LIMIT` seconds of workload (default 45)
//! - `OXCD_JEPSEN_SEED` (default: from the clock; always printed)
//! - `OXCD_JEPSEN_NEMESIS` comma-separated kinds (default all: kill,
//!   kill-leader, pause, pause-leader, partition-leader, partition-halves, slow)
//! - `OXCD_JEPSEN_WORKLOAD` (`register`, the only one so far)
//! - `OXCD_JEPSEN_MEMBERS` (3 or 5; default 3), `OXCD_JEPSEN_CLIENTS` (default 10)

mod checker;
mod history;
mod nemesis;
mod proxy;
mod report;
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;

use crate::support::TestCluster;

/// splitmix64: small, seedable, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")),
        _ => default,
    }
}

/// Bound on the linearizability search per key.
const MAX_STEPS: u64 = 20_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quick() {
    let wall = Instant::now();
    let seed = env_u64(
        "OXCD_JEPSEN_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000_007,
    );
    let time_limit = env_u64("OXCD_JEPSEN_TIME_LIMIT", 45);
    let members = env_u64("OXCD_JEPSEN_MEMBERS", 3) as usize;
    let clients = env_u64("OXCD_JEPSEN_CLIENTS", 10) as usize;
    let kinds: Vec<nemesis::Kind> = match std::env::var("OXCD_JEPSEN_NEMESIS") {
        Ok(v) if !v.is_empty() => v.split(',').map(|s| nemesis::Kind::parse(s.trim())).collect(),
        _ => nemesis::Kind::ALL.to_vec(),
    };
    match std::env::var("OXCD_JEPSEN_WORKLOAD").as_deref() {
        Ok("register") | Ok("") | Err(_) => {}
        Ok(w) => panic!("OXCD_JEPSEN_WORKLOAD={w:?}: only `register` exists so far"),
    }
    eprintln!(
        "[jepsen] seed {seed}, {members} members, {clients} clients, {time_limit}s, nemesis {:?}",
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>()
    );

    let net = Arc::new(proxy::Net::start(members).await);
    let advertised: Vec<u16> = net.ports.iter().map(|p| p.1).collect();
    let net2 = net.clone();
    let cluster = TestCluster::start_proxied(members, &[], Some(&advertised), &move |c| {
        for m in c.members() {
            let (cp, pp) = m.listen_ports();
            net2.set_upstream(m.index, cp, pp);
            net2.set_pid(m.index, m.pid());
        }
    })
    .await;

    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(time_limit);
    let hist = Arc::new(history::History::new(t0));
    let keys: Vec<String> = (0..4).map(|i| format!("jepsen/r{i}")).collect();
    let wcfg = Arc::new(workload::Config {
        keys: keys.clone(),
        until,
        seed,
        max_ops_per_client: 1_000_000,
    });
    let mut tasks = Vec::new();
    for p in 0..clients {
        tasks.push(tokio::spawn(workload::run_client(
            p,
            net.client_endpoint(p % members),
            wcfg.clone(),
            hist.clone(),
        )));
    }
    let nem = nemesis::Nemesis {
        kinds,
        seed: seed.wrapping_add(1),
        until,
        t0,
    };
    let (mut cluster, faults, crashes) = nem.run(cluster, net.clone()).await;
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("client did not stop")
            .expect("client panicked");
    }

    // Healed: wait until the cluster serves everywhere again.
    if let Err(e) = cluster.wait_all_ready(Duration::from_secs(60)).await {
        panic!("cluster did not recover after healing (seed {seed}): {e}");
    }
    let ops = hist.ops();

    // Lost acknowledged writes: read each one back at its revision.
    let acked = checker::acked_writes(&ops);
    let mut c = cluster.member(0).client().await;
    let mut found = Vec::with_capacity(acked.len());
    for w in &acked {
        let mut got = None;
        for _attempt in 0..5 {
            match tokio::time::timeout(
                Duration::from_secs(3),
                c.get(w.key.as_str(), Some(GetOptions::new().with_revision(w.rev))),
            )
            .await
            {
                Ok(Ok(r)) => {
                    got = Some(r.kvs().first().map(|kv| {
                        (String::from_utf8_lossy(kv.value()).into_owned(), kv.mod_revision())
                    }));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        found.push(got.unwrap_or_else(|| panic!("cannot read {} at revision {}", w.key, w.rev)));
    }
    let lost = checker::check_lost_writes(&acked, &found);

    // Convergence: every member's serializable view, polled until equal (bounded).
    let mut convergence = vec!["not checked".to_string()];
    for _attempt in 0..50 {
        let mut snaps = Vec::new();
        for m in cluster.members() {
            let Ok(mut mc) = m.try_client().await else { continue };
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(3),
                mc.get("", Some(GetOptions::new().with_all_keys().with_serializable())),
            )
            .await
            {
                let snap: checker::Snapshot = r
                    .kvs()
                    .iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(kv.key()).into_owned(),
                            String::from_utf8_lossy(kv.value()).into_owned(),
                            kv.create_revision(),
                            kv.mod_revision(),
                            kv.version(),
                        )
                    })
                    .collect();
                snaps.push((m.name().to_string(), snap));
            }
        }
        convergence = if snaps.len() < cluster.size() {
            vec![format!("only {} of {} members answered", snaps.len(), cluster.size())]
        } else {
            checker::check_convergence(&snaps)
        };
        if convergence.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Linearizability, per key, off the async workers.
    let ops2 = ops.clone();
    let init: BTreeMap<String, Option<String>> = keys.iter().map(|k| (k.clone(), None)).collect();
    let lin = tokio::task::spawn_blocking(move || checker::check_registers(&ops2, &init, MAX_STEPS))
        .await
        .unwrap();

    let unknown_sources = *net.unknown_sources.lock().unwrap();
    let report = report::Report {
        seed,
        members,
        clients,
        time_limit_s: time_limit,
        ops: &ops,
        faults: &faults,
        crashes: &crashes,
        linearizable: &lin,
        lost_writes: &lost,
        acked_writes: acked.len(),
        convergence: &convergence,
        unknown_sources,
        wall_s: wall.elapsed().as_secs_f64(),
    };
    let text = report.render();
    eprintln!("{text}");
    if !report.passed() {
        // Keep the evidence: the history next to the cluster's logs.
        let dump: String = ops.iter().map(|o| o.describe() + "\n").collect();
        let path = std::env::temp_dir().join(format!("oxcd-jepsen-{seed}.history.txt"));
        let _ = std::fs::write(&path, dump);
        for c in &crashes {
            eprintln!("{c}");
        }
        panic!("jepsen run failed (seed {seed}); history in {}", path.display());
    }
    assert!(ops.iter().filter(|o| o.is_ok()).count() > 100, "too few ops succeeded");
    assert!(!faults.is_empty(), "no fault was injected");
}
