//! The recursive robust lock (`threading.RLock` across processes): the robust lock's word plus
//! the owning thread and a recursion count, which only the owner touches.
//!
//! Ownership is by thread: only the thread that acquired may release. The owner test compares
//! both the word's pid and `owner_tid` with the caller's, so a stale `owner_tid` left by a dead
//! process can never make another process think it owns the lock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::lock::{self, Acquired};
use super::segment::{Kind, Segment};
use super::{ident, TimedOut};

#[repr(C)]
struct State {
    word: AtomicU32,
    owner_tid: AtomicU32,
    count: AtomicU32,
}

/// The error of `release` by a thread that does not hold the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotOwner;

/// A robust recursive lock in its own segment.
#[derive(Debug)]
pub struct RLock {
    seg: Segment,
}

impl RLock {
    /// Creates an unlocked recursive lock in a new segment.
    pub fn create() -> std::io::Result<RLock> {
        Ok(RLock {
            seg: Segment::create(
                c"ferropool-rlock",
                Kind::RLock,
                std::mem::size_of::<State>(),
            )?,
        })
    }

    /// Maps an existing recursive lock's segment (see `Segment::open`).
    pub fn open(fd: std::os::fd::OwnedFd, id: u64) -> std::io::Result<RLock> {
        Ok(RLock {
            seg: Segment::open(fd, Kind::RLock, id, std::mem::size_of::<State>())?,
        })
    }

    fn state(&self) -> &State {
        // SAFETY: a Kind::RLock segment's payload is a `State` of atomics (`open` checks its size).
        unsafe { self.seg.state::<State>() }
    }

    /// Returns whether the calling thread holds the lock.
    pub fn is_owned(&self) -> bool {
        let s = self.state();
        s.owner_tid.load(Ordering::Relaxed) == ident::tid()
            && lock::owner(&s.word) == Some(ident::pid())
    }

    /// Acquires the lock (again, if the caller holds it), blocking up to `timeout`. A dead
    /// owner's lock is taken over with the count reset to one (`Acquired::OwnerDied`).
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<Acquired, TimedOut> {
        let s = self.state();
        if self.is_owned() {
            s.count.fetch_add(1, Ordering::Relaxed);
            return Ok(Acquired::Clean);
        }
        let acquired = lock::lock(&s.word, timeout)?;
        s.owner_tid.store(ident::tid(), Ordering::Relaxed);
        s.count.store(1, Ordering::Relaxed);
        Ok(acquired)
    }

    /// Releases one level; the lock is free once every acquire has been released. Fails if the
    /// calling thread does not hold it.
    pub fn release(&self) -> Result<(), NotOwner> {
        if !self.is_owned() {
            return Err(NotOwner);
        }
        let s = self.state();
        if s.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            s.owner_tid.store(0, Ordering::Relaxed);
            lock::unlock(&s.word).map_err(|_| NotOwner)?;
        }
        Ok(())
    }

    /// The segment holding the lock.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::lock::tests::{fork_child, reap, BOUND};
    use std::sync::Arc;

    #[test]
    fn recursion_and_ownership() {
        let l = Arc::new(RLock::create().unwrap());
        assert_eq!(l.release(), Err(NotOwner));
        l.acquire(None).unwrap();
        l.acquire(None).unwrap();
        assert!(l.is_owned());
        let other = {
            let l = Arc::clone(&l);
            std::thread::spawn(move || (l.release(), l.acquire(Some(Duration::from_millis(20)))))
        };
        assert_eq!(other.join().unwrap(), (Err(NotOwner), Err(TimedOut)));
        l.release().unwrap();
        assert!(l.is_owned());
        l.release().unwrap();
        assert!(!l.is_owned());
        let other = {
            let l = Arc::clone(&l);
            std::thread::spawn(move || {
                let got = l.acquire(Some(BOUND));
                l.release().unwrap();
                got
            })
        };
        assert_eq!(other.join().unwrap(), Ok(Acquired::Clean));
    }

    #[test]
    fn a_dead_owners_rlock_is_taken_over() {
        let l = RLock::create().unwrap();
        let child = fork_child(|| {
            l.acquire(None).unwrap();
            l.acquire(None).unwrap();
            0
        });
        assert_eq!(reap(child), 0);
        assert_eq!(
            l.acquire(Some(BOUND)),
            Ok(Acquired::OwnerDied(child as u32))
        );
        l.release().unwrap();
        assert!(!l.is_owned(), "the count restarts at one after a take-over");
    }
}
