//! Client histories: every operation a workload client issues, with the
//! instants it was invoked and completed (nanoseconds since the run began)
//! and its outcome.
//!
//! Outcomes follow Jepsen's three-way split:
//! - `Ok`: the server answered; the result is what it said.
//! - `Fail`: the operation certainly had no effect (a read that errored; a
//!   request refused before it could have been proposed).
//! - `Info` (indeterminate): the request may or may not have taken effect —
//!   timeouts, `Unavailable` and transport errors after the request was sent.
//!   The checkers let an indeterminate write take effect at any instant after
//!   its invocation, or never.

use std::sync::Mutex;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write(String),
    /// Txn: if value(key) == expected then put(key, new) else get(key).
    Cas {
        expected: String,
        new: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    /// The value read (`None`: no such key) and the header revision.
    Read(Option<String>),
    /// The header revision of the Put: the write's mod_revision.
    Write { rev: i64 },
    /// `succeeded`: the compare held and the put was done at `rev`;
    /// otherwise `observed` is what the else-branch Get returned.
    Cas {
        succeeded: bool,
        rev: i64,
        observed: Option<String>,
    },
}

/// An operation's outcome; `R` is what an acknowledged op returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out<R> {
    Ok(R),
    Fail(String),
    Info(String),
}

/// A register operation's outcome.
pub type Outcome = Out<Ret>;

impl<R> Out<R> {
    pub fn is_ok(&self) -> bool {
        matches!(self, Out::Ok(_))
    }

    pub fn is_info(&self) -> bool {
        matches!(self, Out::Info(_))
    }

    pub fn is_fail(&self) -> bool {
        matches!(self, Out::Fail(_))
    }
}

#[derive(Clone, Debug)]
pub struct Op {
    /// Index in the history, in invocation order per process.
    pub id: usize,
    /// The client that issued it (one request at a time per client).
    pub process: usize,
    pub key: String,
    pub kind: OpKind,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub outcome: Outcome,
}

impl Op {
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }

    pub fn is_info(&self) -> bool {
        matches!(self.outcome, Outcome::Info(_))
    }

    /// One line, as in a report's counter-example.
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            OpKind::Read => "read".to_string(),
            OpKind::Write(v) => format!("write {v}"),
            OpKind::Cas { expected, new } => format!("cas {expected}->{new}"),
        };
        let res = match &self.outcome {
            Outcome::Ok(Ret::Read(v)) => format!("ok {}", v.as_deref().unwrap_or("<absent>")),
            Outcome::Ok(Ret::Write { rev }) => format!("ok rev={rev}"),
            Outcome::Ok(Ret::Cas {
                succeeded: true,
                rev,
                ..
            }) => format!("ok succeeded rev={rev}"),
            Outcome::Ok(Ret::Cas { observed, .. }) => format!(
                "ok failed-compare, saw {}",
                observed.as_deref().unwrap_or("<absent>")
            ),
            Outcome::Fail(e) => format!("fail ({e})"),
            Outcome::Info(e) => format!("info ({e})"),
        };
        format!(
            "#{} p{} {} {what} -> {res} [{:.3}s..{:.3}s]",
            self.id,
            self.process,
            self.key,
            self.invoke_ns as f64 / 1e9,
            self.complete_ns as f64 / 1e9
        )
    }
}

/// Ops that a `History` can number.
pub trait Recorded {
    fn set_id(&mut self, id: usize);
}

impl Recorded for Op {
    fn set_id(&mut self, id: usize) {
        self.id = id;
    }
}

/// The shared recorder: clients append completed operations.
pub struct History<T = Op> {
    pub start: Instant,
    ops: Mutex<Vec<T>>,
}

impl<T: Recorded + Clone> History<T> {
    pub fn new(start: Instant) -> History<T> {
        History {
            start,
            ops: Mutex::new(Vec::new()),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, mut op: T) {
        let mut ops = self.ops.lock().unwrap();
        op.set_id(ops.len());
        ops.push(op);
    }

    pub fn ops(&self) -> Vec<T> {
        self.ops.lock().unwrap().clone()
    }
}
