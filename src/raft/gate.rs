//! The gate in front of a batching task, shared by the leader's
//! [`Proposer`](super::proposer::Proposer) and the follower's
//! [`Forwarder`](super::forwarder::Forwarder).
//!
//! A fixed number of slots bounds what is in flight (log entries, or calls
//! to the leader). A write that finds nothing queued and a slot free goes on
//! its own, from its caller's task: it would be a batch of one anyway, and
//! so it skips two task hand-offs. Any other write is queued; the batching
//! task takes a slot, waits for the first queued write, lets the tasks
//! that are already runnable queue theirs ([`gather`]), and sends it with
//! whatever else is queued by then.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// Most scheduler passes [`gather`] lets go by.
const GATHER_YIELDS: usize = 8;

/// Lets the tasks that are already runnable go first, again only while a
/// pass added work (`count` grew), at most [`GATHER_YIELDS`] times: what
/// they are about to queue joins the batch (or ReadIndex round) about to
/// leave instead of the next one. With nothing else runnable it costs one
/// pass of the scheduler. Used by the batching tasks here and by
/// [`ReadIndex`](super::read_index::ReadIndex)'s rounds.
pub(super) async fn gather(count: impl Fn() -> usize) {
    let mut seen = count();
    for _ in 0..GATHER_YIELDS {
        tokio::task::yield_now().await;
        let now = count();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// The callers' side.
pub(super) struct Gate<T> {
    tx: mpsc::UnboundedSender<T>,
    shared: Arc<Shared>,
}

// (derive(Clone) would ask for `T: Clone`.)
impl<T> Clone for Gate<T> {
    fn clone(&self) -> Self {
        Gate {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// The batching task's side.
pub(super) struct Queue<T> {
    rx: mpsc::UnboundedReceiver<T>,
    shared: Arc<Shared>,
}

struct Shared {
    /// Writes queued and not yet taken by the batching task.
    queued: AtomicUsize,
    /// Slots in flight, alone or batched (the batching task holds one while
    /// it waits for its next batch's first write).
    slots: Arc<Semaphore>,
}

pub(super) fn gate<T>(slots: usize) -> (Gate<T>, Queue<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        slots: Arc::new(Semaphore::new(slots)),
    });
    (
        Gate {
            tx,
            shared: shared.clone(),
        },
        Queue { rx, shared },
    )
}

impl<T> Gate<T> {
    /// A slot for a write to go alone now: nothing is queued and a slot is
    /// free. (A semaphore with waiters, such as the batching task, hands no
    /// permit to `try_acquire`.) The write holds it until it is done.
    pub(super) fn alone(&self) -> Option<SemaphorePermit<'_>> {
        if self.shared.queued.load(Ordering::Acquire) != 0 {
            return None;
        }
        self.shared.slots.try_acquire().ok()
    }

    /// Queues `item` for the batching task; gives it back if the task is
    /// gone.
    pub(super) fn queue(&self, item: T) -> Result<(), T> {
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(item).map_err(|e| {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }
}

impl<T> Queue<T> {
    /// A slot for the next batch (`None`: the gate is closed).
    pub(super) async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.shared.slots.clone().acquire_owned().await.ok()
    }

    /// The next queued write, waiting for one (`None`: every gate is gone).
    pub(super) async fn recv(&mut self) -> Option<T> {
        let item = self.rx.recv().await?;
        self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        Some(item)
    }

    /// Waits while the runnable tasks queue more writes (see [`gather`]).
    pub(super) async fn gather(&self) {
        gather(|| self.shared.queued.load(Ordering::Acquire)).await
    }

    /// The next queued write if there is one now.
    pub(super) fn try_recv(&mut self) -> Option<T> {
        let item = self.rx.try_recv().ok()?;
        self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write goes alone only while nothing is queued and a slot is free;
    /// queued writes come out in order and stop counting as queued.
    #[tokio::test]
    async fn alone_only_with_an_empty_queue_and_a_free_slot() {
        let (gate, mut queue) = gate::<u32>(2);
        let first = gate.alone().expect("a free slot, nothing queued");
        {
            let _second = gate.alone().expect("the other slot");
            assert!(gate.alone().is_none(), "both slots taken");
        }
        gate.queue(1).unwrap();
        assert!(gate.alone().is_none(), "a write is queued");
        gate.queue(2).unwrap();
        assert_eq!(queue.recv().await, Some(1));
        assert!(gate.alone().is_none(), "one still queued");
        assert_eq!(queue.try_recv(), Some(2));
        assert_eq!(queue.try_recv(), None);
        assert!(gate.alone().is_some(), "queue empty, a slot free");
        let held = queue.slot().await.expect("the batching task's slot");
        assert!(gate.alone().is_none(), "the task holds the free slot");
        drop((held, first));
        drop(gate);
        assert_eq!(queue.recv().await, None, "every gate gone");
    }

    /// Writes from tasks that become runnable while the batching task takes
    /// its first write join that batch.
    #[tokio::test(flavor = "current_thread")]
    async fn gather_lets_runnable_writers_join_the_batch() {
        let (gate, mut queue) = gate::<u32>(2);
        gate.queue(0).unwrap();
        let batcher = tokio::spawn(async move {
            let first = queue.recv().await.unwrap();
            queue.gather().await;
            let mut batch = vec![first];
            while let Some(next) = queue.try_recv() {
                batch.push(next);
            }
            batch
        });
        // Spawned after the batching task: on this single-threaded runtime
        // they run only once it yields.
        for i in 1..=5 {
            let gate = gate.clone();
            tokio::spawn(async move { gate.queue(i).unwrap() });
        }
        assert_eq!(batcher.await.unwrap(), vec![0, 1, 2, 3, 4, 5]);
    }
}
