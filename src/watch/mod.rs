//! The watch hub: etcd's `watchableStore`, fed by apply.
//!
//! # Model
//!
//! Apply commits a sled batch and then *publishes* its changes to the hub
//! with a non-blocking send; apply never waits for a watcher. A dispatcher
//! thread fans each revision out to the watchers whose range it touches.
//! Every watcher is in one of two states:
//!
//! - **synced**: it has been handed every event up to the hub's
//!   `dispatched` revision; the dispatcher offers it each new revision.
//! - **unsynced**: it still needs history from `next_rev` on. The catch-up
//!   thread reads that history from the store (`Store::changes`, a range
//!   scan over revision-keyed data) and moves the watcher to synced once
//!   its `next_rev` is past `dispatched`.
//!
//! A watcher's events go into its gRPC stream's bounded buffer with a
//! non-blocking send. When the buffer is full the watcher drops back to
//! unsynced at the revision it could not take and catches up from the store
//! later: a slow consumer costs memory bounded by its buffer, never blocks
//! apply or the other watchers, and loses nothing.
//!
//! ```text
//!   apply ──commit──► publish (unbounded, non-blocking)
//!                        │
//!                        ▼ dispatcher thread, revision order
//!        synced watchers ──try_send──► stream buffer (bounded) ──► gRPC
//!              ▲   │ full                    ▲
//!   next_rev > │   ▼                         │ try_send
//!   dispatched unsynced ──catch-up thread: Store::changes(next_rev..)
//! ```
//!
//! # Invariants
//!
//! - `next_rev` is the first revision a watcher has not been handed. Only
//!   the dispatcher advances it for synced watchers, only the catch-up
//!   thread for unsynced ones, both under the hub lock; the dispatcher
//!   skips revisions below `next_rev` (a watcher may have caught up from
//!   the store past what has been dispatched), so nothing is sent twice.
//! - A watcher joins the synced set only when `next_rev > dispatched`, and
//!   the dispatcher offers it every revision above `dispatched`, so
//!   nothing is missed.
//! - The events of one revision (one Txn) go to a watcher in one message.
//! - The revision of a progress notification is `dispatched`: every event
//!   at or below it has been handed to the stream before the notification.
//! - Every event is an `Arc<Ev>` shared by all the watchers it reaches;
//!   its `prev_kv` is looked up at most once, and its wire form encoded at
//!   most once with and once without `prev_kv` (`proto/event.rs`): every
//!   watcher's `WatchResponse` carries the same bytes.

mod hub;
#[cfg(test)]
mod tests;

pub use hub::{Ev, Hub, KeyEnd, Msg, StreamId, WatchSpec, WatcherHandle, SINK_CAPACITY};
