//! The text report printed at the end of a run.

use std::fmt::Write as _;

use super::checker::Verdict;
use super::history::{Op, OpKind, Outcome};
use super::nemesis::Fault;

/// One checker's verdict with its lines (counts first, then violations).
pub struct Section {
    pub title: String,
    pub passed: bool,
    pub lines: Vec<String>,
}

/// A timeline dot for ops other than the registers'.
pub struct Point {
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub ok: bool,
    pub info: bool,
    pub color: &'static str,
}

pub struct Report<'a> {
    pub seed: u64,
    pub test_name: &'a str,
    pub members: usize,
    pub clients: usize,
    pub time_limit_s: u64,
    pub ops: &'a [Op],
    /// (name, ok, fail, info) rows for the other workloads' ops.
    pub extra_ops: &'a [(String, usize, usize, usize)],
    pub faults: &'a [Fault],
    pub crashes: &'a [String],
    pub linearizable: &'a [(String, usize, Verdict)],
    pub lost_writes: &'a [String],
    pub acked_writes: usize,
    pub convergence: &'a [String],
    /// (violations, one summary line per watcher), when the watch workload ran.
    pub watch: Option<&'a (Vec<String>, Vec<String>)>,
    /// The append, lease and torn-WAL checkers.
    pub sections: &'a [Section],
    pub unknown_sources: u64,
    pub wall_s: f64,
}

impl Report<'_> {
    pub fn passed(&self) -> bool {
        self.crashes.is_empty()
            && self.linearizable.iter().all(|(_, _, v)| v.passed())
            && self.lost_writes.is_empty()
            && self.convergence.is_empty()
            && self.watch.is_none_or(|w| w.0.is_empty())
            && self.sections.iter().all(|s| s.passed)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "==================== oxcd jepsen report ===================="
        );
        let _ = writeln!(
            s,
            "seed {}  members {}  clients {}  time limit {}s  wall {:.1}s",
            self.seed, self.members, self.clients, self.time_limit_s, self.wall_s
        );
        let _ = writeln!(
            s,
            "rerun: OXCD_JEPSEN_SEED={} OXCD_JEPSEN_TIME_LIMIT={} cargo test --test it {} -- --nocapture",
            self.seed, self.time_limit_s, self.test_name
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
        let total = self.ops.len()
            + self
                .extra_ops
                .iter()
                .map(|r| r.1 + r.2 + r.3)
                .sum::<usize>();
        let _ = writeln!(s, "\noperations ({total}):");
        let _ = writeln!(s, "  {:<6} {:>7} {:>7} {:>7}", "", "ok", "fail", "info");
        for (name, pick) in [("read", 0u8), ("write", 1), ("cas", 2)] {
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
        for (name, ok, fail, info) in self.extra_ops {
            let _ = writeln!(s, "  {name:<6} {ok:>7} {fail:>7} {info:>7}");
        }
        let cas_ok = self
            .ops
            .iter()
            .filter(|o| {
                matches!(
                    o.outcome,
                    Outcome::Ok(super::history::Ret::Cas {
                        succeeded: true,
                        ..
                    })
                )
            })
            .count();
        let _ = writeln!(s, "  (cas whose compare held: {cas_ok})");
        // Throughput timeline: ok ops per second, fault seconds marked.
        let secs = (self.ops.iter().map(|o| o.complete_ns).max().unwrap_or(0) / 1_000_000_000 + 1)
            as usize;
        let mut per = vec![0usize; secs.min(3600)];
        for o in self.ops.iter().filter(|o| o.is_ok()) {
            let i = (o.complete_ns / 1_000_000_000) as usize;
            if i < per.len() {
                per[i] += 1;
            }
        }
        let _ = writeln!(
            s,
            "\nok register ops per second (* = a fault window overlaps that second):"
        );
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
        let crash = if self.crashes.is_empty() {
            "PASS"
        } else {
            "FAIL"
        };
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
            if self.lost_writes.is_empty() {
                "PASS"
            } else {
                "FAIL"
            }
        );
        for l in self.lost_writes.iter().take(5) {
            let _ = writeln!(s, "    {l}");
        }
        let _ = writeln!(
            s,
            "  convergence (serializable reads and HashKV of every member): {}",
            if self.convergence.is_empty() {
                "PASS"
            } else {
                "FAIL"
            }
        );
        for l in self.convergence {
            let _ = writeln!(s, "    {l}");
        }
        if let Some((bad, summary)) = self.watch {
            let _ = writeln!(
                s,
                "  watch (once, in order, same values as the KV history): {}",
                if bad.is_empty() { "PASS" } else { "FAIL" }
            );
            for l in summary {
                let _ = writeln!(s, "    {l}");
            }
            for l in bad.iter().take(5) {
                let _ = writeln!(s, "    {l}");
            }
        }
        for sec in self.sections {
            let _ = writeln!(
                s,
                "  {}: {}",
                sec.title,
                if sec.passed { "PASS" } else { "FAIL" }
            );
            for l in &sec.lines {
                let _ = writeln!(s, "    {l}");
            }
        }
        if self.unknown_sources > 0 {
            let _ = writeln!(
                s,
                "  note: {} peer connections could not be attributed to a member (treated as client links)",
                self.unknown_sources
            );
        }
        let _ = writeln!(
            s,
            "\nverdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }
}

/// An SVG timeline a person can look at: fault windows shaded, each ok
/// operation's latency as a dot (log scale, reads blue, writes green, CAS
/// purple, appends red, lease ops grey), indeterminate ops as orange ticks
/// on top, ok ops per second as a line below.
pub fn render_svg(ops: &[Op], extra: &[Point], faults: &[Fault]) -> String {
    const W: f64 = 1200.0;
    const LAT_H: f64 = 300.0;
    const TP_H: f64 = 120.0;
    const L: f64 = 60.0;
    let end_ns = ops
        .iter()
        .map(|o| o.complete_ns)
        .chain(extra.iter().map(|p| p.complete_ns))
        .chain(faults.iter().map(|f| f.end_ns))
        .max()
        .unwrap_or(1)
        .max(1);
    let x = |ns: u64| L + (W - L - 10.0) * ns as f64 / end_ns as f64;
    // latency 0.1 ms .. 3 s on a log scale
    let y_lat = |ns: u64| {
        let ms = (ns as f64 / 1e6).clamp(0.1, 3000.0);
        20.0 + (LAT_H - 20.0) * (1.0 - (ms.log10() + 1.0) / (3000f64.log10() + 1.0))
    };
    let mut s = String::new();
    let h = LAT_H + TP_H + 60.0;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    for f in faults {
        let (x0, x1) = (x(f.start_ns), x(f.end_ns));
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="10" width="{:.1}" height="{:.1}" fill="#f4cccc"><title>{}: {}</title></rect><text x="{x0:.1}" y="20" fill="#990000">{}</text>"##,
            (x1 - x0).max(1.0),
            LAT_H + TP_H + 30.0,
            f.kind.name(),
            f.detail
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;"),
            f.kind.name()
        );
    }
    for ms in [1.0f64, 10.0, 100.0, 1000.0] {
        let y = y_lat((ms * 1e6) as u64);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" x2="{W}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="5" y="{y:.1}">{ms} ms</text>"##
        );
    }
    let step = (ops.len() / 20_000).max(1);
    for o in ops.iter().step_by(step) {
        let color = match (&o.kind, &o.outcome) {
            (_, Outcome::Info(_)) => {
                let _ = writeln!(
                    s,
                    r##"<line x1="{0:.1}" x2="{0:.1}" y1="22" y2="30" stroke="#e69138"/>"##,
                    x(o.invoke_ns)
                );
                continue;
            }
            (_, Outcome::Fail(_)) => continue,
            (OpKind::Read, _) => "#3d85c6",
            (OpKind::Write(_), _) => "#6aa84f",
            (OpKind::Cas { .. }, _) => "#8e7cc3",
        };
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.2" fill="{color}"/>"#,
            x(o.complete_ns),
            y_lat(o.complete_ns - o.invoke_ns)
        );
    }
    let step = (extra.len() / 20_000).max(1);
    for p in extra.iter().step_by(step) {
        if p.info {
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="22" y2="30" stroke="#e69138"/>"##,
                x(p.invoke_ns)
            );
        } else if p.ok {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="1.2" fill="{}"/>"#,
                x(p.complete_ns),
                y_lat(p.complete_ns - p.invoke_ns),
                p.color
            );
        }
    }
    // throughput
    let secs = (end_ns / 1_000_000_000 + 1) as usize;
    let mut per = vec![0usize; secs.min(100_000)];
    let oks = ops
        .iter()
        .filter(|o| o.is_ok())
        .map(|o| o.complete_ns)
        .chain(extra.iter().filter(|p| p.ok).map(|p| p.complete_ns));
    for t in oks {
        if let Some(c) = per.get_mut((t / 1_000_000_000) as usize) {
            *c += 1;
        }
    }
    let max = *per.iter().max().unwrap_or(&1).max(&1) as f64;
    let base = LAT_H + TP_H + 20.0;
    let pts: Vec<String> = per
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            format!(
                "{:.1},{:.1}",
                x(i as u64 * 1_000_000_000 + 500_000_000),
                base - (TP_H - 10.0) * c as f64 / max
            )
        })
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="black"/><text x="5" y="{:.1}">{max} ok/s</text><text x="5" y="{base:.1}">0</text>"#,
        pts.join(" "),
        base - TP_H + 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{L}" y="{:.1}">time 0 .. {:.1} s; dots: ok latency (read blue, write green, cas purple, append red, lease grey); orange ticks: indeterminate; shaded: faults</text>"#,
        h - 8.0,
        end_ns as f64 / 1e9
    );
    s.push_str("</svg>\n");
    s
}
