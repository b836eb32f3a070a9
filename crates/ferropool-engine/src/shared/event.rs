//! The event (`threading.Event` across processes): one futex word.
//!
//! States: `CLEAR` (0), `SET` (1), `CLEAR_WAITED` (2: clear, and someone may sleep on it). A
//! waiter turns `CLEAR` into `CLEAR_WAITED` before sleeping while the word is `CLEAR_WAITED`;
//! `set` swaps in `SET` and wakes every sleeper only if the old value was `CLEAR_WAITED`, so a
//! `set` with nobody waiting makes no system call. No wake-up is lost: a waiter sleeps only if
//! the word is still `CLEAR_WAITED`, and `set` changes the word before it wakes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::segment::{Kind, Segment};
use super::{deadline, futex, remaining};

const CLEAR: u32 = 0;
const SET: u32 = 1;
const CLEAR_WAITED: u32 = 2;

/// An event flag in its own segment.
#[derive(Debug)]
pub struct Event {
    seg: Segment,
}

impl Event {
    /// Creates a clear event in a new segment.
    pub fn create() -> std::io::Result<Event> {
        Ok(Event {
            seg: Segment::create(c"ferropool-event", Kind::Event, 4)?,
        })
    }

    /// Maps an existing event's segment (see `Segment::open`).
    pub fn open(fd: std::os::fd::OwnedFd, id: u64) -> std::io::Result<Event> {
        Ok(Event {
            seg: Segment::open(fd, Kind::Event, id, std::mem::size_of::<AtomicU32>())?,
        })
    }

    fn word(&self) -> &AtomicU32 {
        // SAFETY: a Kind::Event segment's payload is one atomic u32 (`open` checks its size).
        unsafe { self.seg.state::<AtomicU32>() }
    }

    /// Returns whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.word().load(Ordering::Acquire) == SET
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        if self.word().swap(SET, Ordering::Release) == CLEAR_WAITED {
            futex::wake_all(self.word());
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        let _ = self
            .word()
            .compare_exchange(SET, CLEAR, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Blocks until the flag is set or `timeout` passes (`None`: forever); returns whether it
    /// is set.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let word = self.word();
        let deadline = deadline(timeout);
        loop {
            let cur = word.load(Ordering::Acquire);
            if cur == SET {
                return true;
            }
            let Ok(left) = remaining(deadline) else {
                return false;
            };
            if cur == CLEAR
                && word
                    .compare_exchange(CLEAR, CLEAR_WAITED, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            futex::wait(word, CLEAR_WAITED, left);
        }
    }

    /// The segment holding the event.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::lock::tests::{fork_child, reap, BOUND};

    #[test]
    fn set_clear_wait() {
        let e = Event::create().unwrap();
        assert!(!e.is_set());
        assert!(!e.wait(Some(Duration::from_millis(10))));
        e.set();
        assert!(e.is_set());
        assert!(e.wait(Some(Duration::ZERO)));
        e.clear();
        assert!(!e.wait(Some(Duration::ZERO)));
    }

    #[test]
    fn set_in_one_process_wakes_waiters_in_others() {
        let go = Event::create().unwrap();
        let done = Event::create().unwrap();
        let children: Vec<_> = (0..3)
            .map(|_| {
                fork_child(|| {
                    if !go.wait(Some(BOUND)) {
                        return 1;
                    }
                    done.set();
                    0
                })
            })
            .collect();
        go.set();
        assert!(done.wait(Some(BOUND)));
        for c in children {
            assert_eq!(reap(c), 0);
        }
    }
}
