//! The counting semaphore (`threading.Semaphore` / `BoundedSemaphore` across processes).
//!
//! `count` is the futex word; `sleepers` counts waiters that may sleep on it. An acquirer
//! decrements `count` by CAS while it is positive; otherwise it registers in `sleepers` and
//! sleeps while `count` is 0. `release(n)` adds to `count`, then wakes up to `n` sleepers if
//! `sleepers` is non-zero. Both sides use sequentially consistent operations, so either the
//! releaser sees the sleeper registered (and wakes it) or the sleeper's futex check sees the new
//! count (and does not sleep): no lost wake-up. A holder that dies does not give its unit back
//! (like a POSIX semaphore).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::segment::{Kind, Segment};
use super::{deadline, futex, remaining, TimedOut};

#[repr(C)]
struct State {
    count: AtomicU32,
    sleepers: AtomicU32,
    /// Largest count `release` may reach; `u32::MAX` when unbounded.
    max: AtomicU32,
}

/// The error of `release` on a bounded semaphore that would pass its initial value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyReleases;

/// A counting semaphore in its own segment.
#[derive(Debug)]
pub struct Semaphore {
    seg: Segment,
}

impl Semaphore {
    /// Creates a semaphore holding `value` units; `bounded` makes `release` fail past `value`.
    pub fn create(value: u32, bounded: bool) -> std::io::Result<Semaphore> {
        let s = Semaphore {
            seg: Segment::create(
                c"ferropool-semaphore",
                Kind::Semaphore,
                std::mem::size_of::<State>(),
            )?,
        };
        s.state().count.store(value, Ordering::Relaxed);
        s.state()
            .max
            .store(if bounded { value } else { u32::MAX }, Ordering::Relaxed);
        Ok(s)
    }

    /// Maps an existing semaphore's segment (see `Segment::open`).
    pub fn open(fd: std::os::fd::OwnedFd, id: u64) -> std::io::Result<Semaphore> {
        Ok(Semaphore {
            seg: Segment::open(fd, Kind::Semaphore, id, std::mem::size_of::<State>())?,
        })
    }

    fn state(&self) -> &State {
        // SAFETY: a Kind::Semaphore segment's payload is a `State` of atomics (`open` checks its
        // size).
        unsafe { self.seg.state::<State>() }
    }

    /// Takes one unit if there is one, without blocking.
    pub fn try_acquire(&self) -> bool {
        let count = &self.state().count;
        let mut cur = count.load(Ordering::Relaxed);
        while cur > 0 {
            match count.compare_exchange_weak(cur, cur - 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }

    /// Takes one unit, blocking up to `timeout` (`None`: forever) while there is none.
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<(), TimedOut> {
        let s = self.state();
        let deadline = deadline(timeout);
        loop {
            if self.try_acquire() {
                return Ok(());
            }
            let left = remaining(deadline).map_err(|()| TimedOut)?;
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            if s.count.load(Ordering::SeqCst) == 0 {
                futex::wait(&s.count, 0, left);
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Gives back `n` units and wakes up to `n` waiters. A bounded semaphore refuses (and changes
    /// nothing) when the count would pass its initial value.
    pub fn release(&self, n: u32) -> Result<(), TooManyReleases> {
        let s = self.state();
        let max = s.max.load(Ordering::Relaxed);
        s.count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                c.checked_add(n).filter(|&c| c <= max)
            })
            .map_err(|_| TooManyReleases)?;
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            futex::wake(&s.count, n);
        }
        Ok(())
    }

    /// The units available now.
    pub fn value(&self) -> u32 {
        self.state().count.load(Ordering::Relaxed)
    }

    /// The segment holding the semaphore.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::lock::tests::{fork_child, reap, BOUND};
    use std::sync::atomic::AtomicI64;

    #[test]
    fn counts_and_bounds() {
        let s = Semaphore::create(2, true).unwrap();
        s.acquire(Some(BOUND)).unwrap();
        s.acquire(Some(BOUND)).unwrap();
        assert_eq!(s.acquire(Some(Duration::from_millis(10))), Err(TimedOut));
        s.release(2).unwrap();
        assert_eq!(s.release(1), Err(TooManyReleases));
        assert_eq!(s.value(), 2);
        let u = Semaphore::create(0, false).unwrap();
        u.release(5).unwrap();
        assert_eq!(u.value(), 5);
    }

    #[test]
    fn processes_never_exceed_the_bound() {
        const BOUND_UNITS: u32 = 2;
        let s = Semaphore::create(BOUND_UNITS, true).unwrap();
        let seg = Segment::create(c"ferropool-test", Kind::Value, 16).unwrap();
        // SAFETY: two AtomicI64 fit in the 16-byte payload.
        let [inside, worst] = unsafe { seg.state::<[AtomicI64; 2]>() };
        let work = || {
            for _ in 0..5_000 {
                s.acquire(Some(BOUND)).unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                worst.fetch_max(now, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                s.release(1).unwrap();
            }
            0
        };
        let children: Vec<_> = (0..3).map(|_| fork_child(work)).collect();
        work();
        for c in children {
            assert_eq!(reap(c), 0);
        }
        assert!(worst.load(Ordering::SeqCst) <= i64::from(BOUND_UNITS));
        assert_eq!(s.value(), BOUND_UNITS);
    }
}
