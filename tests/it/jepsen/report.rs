//! The text report printed at the end of a run.

use std::fmt::Write as _;

use super::checker::Verdict;
use super::history::{Op, OpKind, Outcome};
use super::nemesis::Fault;

pub struct Report<'a> {
    pub seed: u64,
    pub members: usize,
    pub clients: usize,
    pub time_limit_s: u64,
    pub ops: &'a [Op],
    pub faults: &'a [Fault],
    pub crashes: &'a [String],
    pub linearizable: &'a [(String, usize, Verdict)],
    pub lost_writes: &'a [String],
    pub acked_writes: usize,
    pub convergence: &'a [String],
    pub unknown_sources: u64,
    pub wall_s: f64,
}

impl Report<'_> {
    pub fn passed(&self) -> bool {
        self.crashes.is_empty()
            && self.linearizable.iter().all(|(_, _, v)| v.passed())
            && self.lost_writes.is_empty()
            && self.convergence.is_empty()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "==================== oxcd jepsen report ====================");
        let _ = writeln!(
            s,
            "seed {}  members {}  clients {}  time limit {}s  wall {:.1}s",
            self.seed, self.members, self.clients, self.time_limit_s, self.wall_s
        );
        let _ = writeln!(
            s,
            "rerun: OXCD_JEPSEN_SEED={} OXCD_JEPSEN_TIME_LIMIT={} cargo test --test it jepsen::quick -- --nocapture",
            self.seed, self.time_limit_s
        );
        let _ = writeln!(s, "\nfaults ({}):", self.faults.len());
        for f in self.faults {
            let _ = writeln!(
                s,
                "  [{:>7.3}s .. {:>7.3}s] {:<16} {}",
                f.start_ns as f64 / 1e9,
                f.end_ns as f64 / 1e9,
                f.kind.name(),
                f.detail
            );
        }
        let _ = writeln!(s, "\noperations ({}):", self.ops.len());
        let _ = writeln!(s, "  {:<6} {:>7} {:>7} {:>7}", "", "ok", "fail", "info");
        for (name, pick) in [
            ("read", 0u8),
            ("write", 1),
            ("cas", 2),
        ] {
            let of = |o: &&Op| match o.kind {
                OpKind::Read => pick == 0,
                OpKind::Write(_) => pick == 1,
                OpKind::Cas { .. } => pick == 2,
            };
            let ok = self.ops.iter().filter(of).filter(|o| o.is_ok()).count();
            let fail = self
                .ops
                .iter()
                .filter(of)
                .filter(|o| matches!(o.outcome, Outcome::Fail(_)))
                .count();
            let info = self.ops.iter().filter(of).filter(|o| o.is_info()).count();
            let _ = writeln!(s, "  {name:<6} {ok:>7} {fail:>7} {info:>7}");
        }
        let cas_ok = self
            .ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Ok(super::history::Ret::Cas { succeeded: true, .. })))
            .count();
        let _ = writeln!(s, "  (cas whose compare held: {cas_ok})");
        // Throughput timeline: ok ops per second, fault seconds marked.
        let secs = (self.ops.iter().map(|o| o.complete_ns).max().unwrap_or(0) / 1_000_000_000 + 1) as usize;
        let mut per = vec![0usize; secs.min(3600)];
        for o in self.ops.iter().filter(|o| o.is_ok()) {
            let i = (o.complete_ns / 1_000_000_000) as usize;
            if i < per.len() {
                per[i] += 1;
            }
        }
        let _ = writeln!(s, "\nok ops per second (* = a fault window overlaps that second):");
        for (i, c) in per.iter().enumerate() {
            let t0 = i as u64 * 1_000_000_000;
            let t1 = t0 + 1_000_000_000;
            let hit = self.faults.iter().any(|f| f.start_ns < t1 && f.end_ns > t0);
            let _ = writeln!(
                s,
                "  {i:>4}s {} {c:>5} {}",
                if hit { '*' } else { ' ' },
                "#".repeat((*c / 10).min(60))
            );
        }
        let _ = writeln!(s, "\ncheckers:");
        let crash = if self.crashes.is_empty() { "PASS" } else { "FAIL" };
        let _ = writeln!(s, "  member crashes (not caused by the nemesis): {crash}");
        for c in self.crashes {
            let _ = writeln!(s, "    {}", c.lines().next().unwrap_or(""));
        }
        for (k, n, v) in self.linearizable {
            let _ = match v {
                Verdict::Ok => writeln!(s, "  linearizable {k} ({n} ops): PASS"),
                Verdict::Violation(m) => writeln!(s, "  linearizable {k} ({n} ops): FAIL\n    {m}"),
                Verdict::Unknown(m) => writeln!(s, "  linearizable {k} ({n} ops): UNKNOWN ({m})"),
            };
        }
        let _ = writeln!(
            s,
            "  no lost acknowledged write ({} checked by revision): {}",
            self.acked_writes,
            if self.lost_writes.is_empty() { "PASS" } else { "FAIL" }
        );
        for l in self.lost_writes.iter().take(5) {
            let _ = writeln!(s, "    {l}");
        }
        let _ = writeln!(
            s,
            "  convergence (serializable reads of every member): {}",
            if self.convergence.is_empty() { "PASS" } else { "FAIL" }
        );
        for l in self.convergence {
            let _ = writeln!(s, "    {l}");
        }
        if self.unknown_sources > 0 {
            let _ = writeln!(
                s,
                "  note: {} peer connections could not be attributed to a member (treated as client links)",
                self.unknown_sources
            );
        }
        let _ = writeln!(s, "\nverdict: {}", if self.passed() { "PASS" } else { "FAIL" });
        s
    }
}
