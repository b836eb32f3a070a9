//! Synchronisation objects and a queue that live in shared memory, so that every thread of every
//! process that maps the same segment sees one object (design: `docs/shared-memory.md`).
//!
//! - `segment`: an anonymous memory file (`memfd_create`) mapped `MAP_SHARED`, with a header that
//!   names the object it holds; nothing is ever created under `/dev/shm`.
//! - `futex`: wait and wake on a 32-bit word of shared memory (not `FUTEX_PRIVATE`).
//! - `ident`: this process's and thread's ids (cached, reset on fork) and whether a pid is alive.
//! - `lock`: the robust mutex: its word holds the owner's pid, so a waiter can take over the lock
//!   of a dead owner and say so.
//! - `rlock`, `event`, `semaphore`, `barrier`: the other `threading` primitives.
//! - `queue`: a bounded multi-producer multi-consumer queue of byte strings.
//! - `sleepers`: how the queue's producers and consumers sleep and wake each other.
//! - `spill`: the large buffers of queue items, out of the ring, in a memory file that only grows.
//! - `value`: one number with atomic load, store, add and compare-and-swap.
//!
//! Every blocking call takes a timeout and returns when it passes, so a caller (the Python
//! binding) can wait in slices and handle signals between them.

pub mod barrier;
pub mod event;
pub mod futex;
pub mod ident;
pub mod lock;
pub mod queue;
pub mod rlock;
pub mod segment;
pub mod semaphore;
mod sleepers;
pub mod spill;
pub mod value;

use std::time::{Duration, Instant};

pub use segment::{Kind, Segment};

/// A point in time after which a wait gives up; `None` waits forever.
pub(crate) type Deadline = Option<Instant>;

/// Turns a timeout into a deadline; a timeout too large for an `Instant` is the same as none.
pub(crate) fn deadline(timeout: Option<Duration>) -> Deadline {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// Returns the time left before `deadline` (`None`: forever), or `Err(())` once it has passed.
pub(crate) fn remaining(deadline: Deadline) -> Result<Option<Duration>, ()> {
    match deadline {
        None => Ok(None),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(())
            } else {
                Ok(Some(left))
            }
        }
    }
}

/// The error of a wait that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("timed out")
    }
}

impl std::error::Error for TimedOut {}
