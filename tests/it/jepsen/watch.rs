//! The watch workload and its checker.
//!
//! One watcher per member, through that member's client proxy, watches the
//! `jepsen/` prefix (every workload's keys) from revision 1 while the
//! workloads and the nemesis run; when its stream breaks it watches again from the revision
//! after the last event it got. After the run, once the cluster is healed, a
//! reference watcher replays `jepsen/` from revision 1 on a healthy member.
//!
//! Guarantees checked (etcd's watch contract):
//! - each stream's revisions never decrease, and an event of a revision
//!   names each key once (no duplicate, no reorder; one revision holds
//!   several events when a lease revoke deletes several keys);
//! - every stream equals the reference, event for event (nothing missed,
//!   nothing invented, same values), up to the final revision;
//! - every acknowledged write is in the reference at its revision with its
//!   value, and every event's value is one some client tried to write there
//!   (a delete only on a lease's key).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};

use super::checker::AckedWrite;
use super::workload;

/// One event: (revision, key, value); deletes carry the value "<deleted>".
pub type Ev = (i64, String, String);

pub struct WatchLog {
    pub name: String,
    pub events: Vec<Ev>,
    /// How many times the stream was (re)established.
    pub watches: u32,
}

/// Watches `prefix` from revision 1 until `target` (set after the run) is
/// reached or `deadline` passes.
pub async fn run_watcher(
    name: String,
    endpoint: String,
    prefix: &'static str,
    target: Arc<AtomicI64>,
    deadline: Instant,
) -> WatchLog {
    let mut log = WatchLog {
        name,
        events: Vec::new(),
        watches: 0,
    };
    let mut last = 0i64;
    let done = |last: i64| {
        let t = target.load(Ordering::SeqCst);
        (t > 0 && last >= t) || Instant::now() > deadline
    };
    for _attempt in 0..10_000 {
        if done(last) {
            return log;
        }
        let Some(mut c) = workload::connect(&endpoint).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(last + 1);
        let Ok(Ok((_w, mut stream))) =
            tokio::time::timeout(Duration::from_secs(2), c.watch(prefix, Some(opts))).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        log.watches += 1;
        for _msg in 0..10_000_000u64 {
            if done(last) {
                return log;
            }
            match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(resp))) => {
                    if resp.canceled() {
                        break;
                    }
                    for e in resp.events() {
                        let Some(kv) = e.kv() else { continue };
                        let value = match e.event_type() {
                            EventType::Put => String::from_utf8_lossy(kv.value()).into_owned(),
                            EventType::Delete => "<deleted>".into(),
                        };
                        last = kv.mod_revision();
                        log.events.push((
                            kv.mod_revision(),
                            String::from_utf8_lossy(kv.key()).into_owned(),
                            value,
                        ));
                    }
                }
                Ok(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    log
}

/// The first event that does not follow its predecessor: revisions never
/// decrease, and one revision (a Txn, a lease revoke deleting several
/// keys) holds each key at most once.
fn out_of_order(evs: &[Ev]) -> Option<usize> {
    let mut keys_at_rev: HashSet<&str> = HashSet::new();
    for (i, e) in evs.iter().enumerate() {
        if i > 0 && e.0 < evs[i - 1].0 {
            return Some(i);
        }
        if i > 0 && e.0 > evs[i - 1].0 {
            keys_at_rev.clear();
        }
        if !keys_at_rev.insert(e.1.as_str()) {
            return Some(i);
        }
    }
    None
}

/// Returns the violations (empty: the watch guarantees held).
pub fn check_watch(
    streams: &[WatchLog],
    reference: &[Ev],
    acked: &[AckedWrite],
    attempted: &HashSet<(String, String)>,
) -> Vec<String> {
    let mut bad = Vec::new();
    if let Some(i) = out_of_order(reference) {
        bad.push(format!(
            "reference stream out of order: {:?} then {:?}",
            reference[i - 1],
            reference[i]
        ));
    }
    let by_rev: HashMap<(i64, &str), &Ev> =
        reference.iter().map(|e| ((e.0, e.1.as_str()), e)).collect();
    for a in acked {
        match by_rev.get(&(a.rev, a.key.as_str())) {
            Some((_, _, v)) if *v == a.value => {}
            other => bad.push(format!(
                "acknowledged write op #{} {}={} at revision {} is not in the watch history (there: {:?})",
                a.op, a.key, a.value, a.rev, other
            )),
        }
    }
    for e in reference {
        if !attempted.contains(&(e.1.clone(), e.2.clone())) {
            bad.push(format!(
                "watch event {e:?}: no client ever wrote that value to that key"
            ));
        }
    }
    for s in streams {
        if let Some(i) = out_of_order(&s.events) {
            bad.push(format!(
                "{}: revision {} delivered after {} (event #{i}: {:?}) — duplicated or reordered",
                s.name,
                s.events[i].0,
                s.events[i - 1].0,
                s.events[i]
            ));
            continue;
        }
        if s.events != reference {
            let i = s
                .events
                .iter()
                .zip(reference)
                .position(|(a, b)| a != b)
                .unwrap_or(s.events.len().min(reference.len()));
            bad.push(format!(
                "{}: {} events, reference {}; first difference at #{i}: got {:?}, reference {:?}",
                s.name,
                s.events.len(),
                reference.len(),
                s.events.get(i),
                reference.get(i)
            ));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: i64, v: &str) -> Ev {
        (rev, "k".into(), v.into())
    }
    fn stream(evs: Vec<Ev>) -> WatchLog {
        WatchLog {
            name: "m0".into(),
            events: evs,
            watches: 1,
        }
    }
    fn setup() -> (Vec<Ev>, Vec<AckedWrite>, HashSet<(String, String)>) {
        let reference = vec![ev(2, "a"), ev(3, "b"), ev(4, "c")];
        let acked = vec![AckedWrite {
            key: "k".into(),
            value: "b".into(),
            rev: 3,
            op: 1,
        }];
        let attempted = ["a", "b", "c"]
            .iter()
            .map(|v| ("k".to_string(), v.to_string()))
            .collect();
        (reference, acked, attempted)
    }

    #[test]
    fn identical_streams_pass() {
        let (r, a, t) = setup();
        assert!(check_watch(&[stream(r.clone())], &r, &a, &t).is_empty());
    }

    #[test]
    fn duplicated_event_is_a_violation() {
        let (r, a, t) = setup();
        let s = stream(vec![ev(2, "a"), ev(3, "b"), ev(3, "b"), ev(4, "c")]);
        let bad = check_watch(&[s], &r, &a, &t);
        assert!(bad[0].contains("duplicated or reordered"), "{bad:?}");
    }

    #[test]
    fn one_revision_may_hold_several_keys_once_each() {
        let (_, a, mut t) = setup();
        t.insert(("j".into(), "<deleted>".into()));
        t.insert(("k".into(), "<deleted>".into()));
        let del = |k: &str| (5, k.to_string(), "<deleted>".to_string());
        let r = vec![ev(2, "a"), ev(3, "b"), ev(4, "c"), del("j"), del("k")];
        assert!(check_watch(&[stream(r.clone())], &r, &a, &t).is_empty());
        let s = stream(vec![
            ev(2, "a"),
            ev(3, "b"),
            ev(4, "c"),
            del("j"),
            del("k"),
            del("j"),
        ]);
        let bad = check_watch(&[s], &r, &a, &t);
        assert!(bad[0].contains("duplicated or reordered"), "{bad:?}");
    }

    #[test]
    fn missed_or_wrong_event_is_a_violation() {
        let (r, a, t) = setup();
        let bad = check_watch(&[stream(vec![ev(2, "a"), ev(4, "c")])], &r, &a, &t);
        assert!(bad[0].contains("first difference at #1"), "{bad:?}");
        let bad = check_watch(
            &[stream(vec![ev(2, "a"), ev(3, "x"), ev(4, "c")])],
            &r,
            &a,
            &t,
        );
        assert_eq!(bad.len(), 1, "{bad:?}");
    }

    #[test]
    fn acknowledged_write_missing_from_history_is_a_violation() {
        let (_, a, t) = setup();
        let r = vec![ev(2, "a"), ev(4, "c")];
        let bad = check_watch(&[], &r, &a, &t);
        assert!(bad[0].contains("op #1"), "{bad:?}");
        let r = vec![ev(2, "a"), ev(3, "b"), ev(4, "zzz")];
        let bad = check_watch(&[], &r, &a, &t);
        assert!(bad[0].contains("no client ever wrote"), "{bad:?}");
    }
}
