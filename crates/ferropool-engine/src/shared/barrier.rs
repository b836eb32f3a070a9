//! The barrier (`threading.Barrier` across processes), in two steps so that the caller can run
//! the barrier's action between them: `arrive`, then either `pass` (by the last arriver, after
//! its action) or `wait_pass` (by everyone else).
//!
//! State, changed under an internal robust lock (`lock`), read by sleepers without it:
//! - `phase`, the futex word: `generation << 1 | broken`;
//! - `count`: arrivals in the current generation;
//! - `reset_gens`: bit `g % 64` is set when generation `g` ended by `reset` instead of passing.
//!
//! Who wakes whom: `pass` bumps the generation (clearing `count`), `abort` sets `broken`,
//! `reset` bumps the generation and marks the old one in `reset_gens`; each then wakes every
//! sleeper on `phase`. A sleeper of generation `g` sleeps only while `phase` is unchanged, so no
//! wake-up is lost; on waking it passes if the generation moved on and `g` is not marked reset,
//! and is broken otherwise. While the last arriver runs the action, `count == parties`, and
//! further arrivals (threads beyond `parties`) wait for the next generation.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::lock;
use super::segment::{Kind, Segment};
use super::{deadline, futex, remaining, TimedOut};

#[repr(C)]
struct State {
    lock: AtomicU32,
    phase: AtomicU32,
    count: AtomicU32,
    parties: AtomicU32,
    reset_gens: AtomicU64,
}

/// What `arrive` makes of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The last of `parties`: run the action, then call `pass` (or `abort` if it failed).
    Last(u32),
    /// Arrival number `index` of `generation`: call `wait_pass(generation, ..)`.
    Wait { index: u32, generation: u32 },
}

/// The barrier is broken (aborted, timed out, or reset while the caller waited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broken;

/// The error of `arrive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArriveError {
    Broken,
    TimedOut,
}

/// A barrier for `parties` participants in its own segment.
#[derive(Debug)]
pub struct Barrier {
    seg: Segment,
    /// As created (at least 1); never re-read from the segment, which any process may overwrite.
    parties: u32,
}

impl Barrier {
    /// Creates a barrier for `parties` (at least 1) participants.
    pub fn create(parties: u32) -> std::io::Result<Barrier> {
        if parties == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "parties must be at least 1",
            ));
        }
        let b = Barrier {
            seg: Segment::create(
                c"ferropool-barrier",
                Kind::Barrier,
                std::mem::size_of::<State>(),
            )?,
            parties,
        };
        b.state().parties.store(parties, Ordering::Relaxed);
        Ok(b)
    }

    /// Maps an existing barrier's segment (see `Segment::open`); `InvalidData` if it says zero
    /// parties (overwritten by another process).
    pub fn open(fd: std::os::fd::OwnedFd, id: u64) -> std::io::Result<Barrier> {
        let seg = Segment::open(fd, Kind::Barrier, id, std::mem::size_of::<State>())?;
        // SAFETY: a Kind::Barrier segment's payload is a `State` of atomics (size just checked).
        let parties = unsafe { seg.state::<State>() }
            .parties
            .load(Ordering::Relaxed);
        if parties == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the shared barrier's memory is corrupt: it has 0 parties",
            ));
        }
        Ok(Barrier { seg, parties })
    }

    fn state(&self) -> &State {
        // SAFETY: a Kind::Barrier segment's payload is a `State` of atomics (`open` checks its
        // size).
        unsafe { self.seg.state::<State>() }
    }

    /// Runs `f` under the internal lock (held for a few stores; a dead holder is taken over).
    fn locked<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let s = self.state();
        let _ = lock::lock(&s.lock, None);
        let out = f(s);
        let _ = lock::unlock(&s.lock);
        out
    }

    /// The number of participants.
    pub fn parties(&self) -> u32 {
        self.parties
    }

    /// Arrives at the barrier. Blocks (up to `timeout`) only while a completed generation is
    /// being released; fails at once if the barrier is broken. Breaks it when more than
    /// `parties` arrivals are counted (the count was overwritten), so that no one waits for a
    /// release that cannot come; `reset` repairs it.
    pub fn arrive(&self, timeout: Option<Duration>) -> Result<Arrival, ArriveError> {
        /// What one look under the lock found.
        enum Step {
            Arrived(Arrival),
            Broken,
            /// The count is impossible: the barrier was just broken, its waiters are to be woken.
            Corrupt,
            /// A completed generation (its phase) is still being released.
            Draining(u32),
        }
        let deadline = deadline(timeout);
        loop {
            let step = self.locked(|s| {
                let phase = s.phase.load(Ordering::Relaxed);
                if phase & 1 != 0 {
                    return Step::Broken;
                }
                let parties = self.parties;
                let index = s.count.load(Ordering::Relaxed);
                if index > parties {
                    s.phase.fetch_or(1, Ordering::Release);
                    return Step::Corrupt;
                }
                if index == parties {
                    return Step::Draining(phase);
                }
                s.count.store(index + 1, Ordering::Relaxed);
                Step::Arrived(if index + 1 == parties {
                    Arrival::Last(index)
                } else {
                    Arrival::Wait {
                        index,
                        generation: phase >> 1,
                    }
                })
            });
            match step {
                Step::Arrived(arrival) => return Ok(arrival),
                Step::Broken => return Err(ArriveError::Broken),
                Step::Corrupt => {
                    futex::wake_all(&self.state().phase);
                    return Err(ArriveError::Broken);
                }
                Step::Draining(phase) => {
                    let left = remaining(deadline).map_err(|()| ArriveError::TimedOut)?;
                    futex::wait(&self.state().phase, phase, left);
                }
            }
        }
    }

    /// Waits (up to `timeout`) for `generation` to end; returns `Ok(())` when it passed and
    /// `Err(Ok(Broken))` when it was aborted or reset, `Err(Err(TimedOut))` when the timeout
    /// passed first (the barrier is left as it is; the caller decides whether to `abort`).
    pub fn wait_pass(
        &self,
        generation: u32,
        timeout: Option<Duration>,
    ) -> Result<(), Result<Broken, TimedOut>> {
        let s = self.state();
        let deadline = deadline(timeout);
        loop {
            let phase = s.phase.load(Ordering::Acquire);
            if phase >> 1 != generation {
                let reset = s.reset_gens.load(Ordering::Acquire) & (1 << (generation % 64)) != 0;
                return if reset { Err(Ok(Broken)) } else { Ok(()) };
            }
            if phase & 1 != 0 {
                return Err(Ok(Broken));
            }
            let left = remaining(deadline).map_err(|()| Err(TimedOut))?;
            futex::wait(&s.phase, phase, left);
        }
    }

    /// Starts the next generation and releases every waiter of this one: the last arriver's
    /// step after its action.
    pub fn pass(&self) {
        self.locked(|s| {
            let next = (s.phase.load(Ordering::Relaxed) >> 1).wrapping_add(1) & (u32::MAX >> 1);
            s.reset_gens
                .fetch_and(!(1 << (next % 64)), Ordering::Relaxed);
            s.count.store(0, Ordering::Relaxed);
            s.phase.store(next << 1, Ordering::Release);
        });
        futex::wake_all(&self.state().phase);
    }

    /// Breaks the barrier: every current and future `wait` fails until `reset`.
    pub fn abort(&self) {
        self.locked(|s| s.phase.fetch_or(1, Ordering::Release));
        futex::wake_all(&self.state().phase);
    }

    /// Returns the barrier to its initial state; current waiters fail as broken.
    pub fn reset(&self) {
        self.locked(|s| {
            let phase = s.phase.load(Ordering::Relaxed);
            let generation = phase >> 1;
            let next = generation.wrapping_add(1) & (u32::MAX >> 1);
            let mut gens = s.reset_gens.load(Ordering::Relaxed) & !(1 << (next % 64));
            if s.count.load(Ordering::Relaxed) > 0 || phase & 1 != 0 {
                gens |= 1 << (generation % 64);
            }
            s.reset_gens.store(gens, Ordering::Relaxed);
            s.count.store(0, Ordering::Relaxed);
            s.phase.store(next << 1, Ordering::Release);
        });
        futex::wake_all(&self.state().phase);
    }

    /// Returns whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.state().phase.load(Ordering::Acquire) & 1 != 0
    }

    /// The number of participants waiting now (0 while broken).
    pub fn n_waiting(&self) -> u32 {
        self.locked(|s| {
            if s.phase.load(Ordering::Relaxed) & 1 != 0 {
                0
            } else {
                s.count.load(Ordering::Relaxed).min(self.parties - 1)
            }
        })
    }

    /// The segment holding the barrier.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::lock::tests::{fork_child, reap, BOUND};
    use crate::shared::segment::reopen_fd;
    use std::sync::Arc;

    /// One full `threading.Barrier.wait` without an action; returns the arrival index.
    fn wait(b: &Barrier) -> Result<u32, Broken> {
        match b.arrive(Some(BOUND)) {
            Ok(Arrival::Last(i)) => {
                b.pass();
                Ok(i)
            }
            Ok(Arrival::Wait { index, generation }) => match b.wait_pass(generation, Some(BOUND)) {
                Ok(()) => Ok(index),
                Err(Ok(broken)) => Err(broken),
                Err(Err(TimedOut)) => panic!("barrier round not completed within {BOUND:?}"),
            },
            Err(ArriveError::Broken) => Err(Broken),
            Err(ArriveError::TimedOut) => panic!("arrive blocked for {BOUND:?}"),
        }
    }

    #[test]
    fn rounds_across_threads_and_processes() {
        const ROUNDS: u32 = 200;
        let b = Arc::new(Barrier::create(4).unwrap());
        let children: Vec<_> = (0..2)
            .map(|_| {
                fork_child(|| {
                    for _ in 0..ROUNDS {
                        if wait(&b).is_err() {
                            return 1;
                        }
                    }
                    0
                })
            })
            .collect();
        let thread = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || (0..ROUNDS).map(|_| wait(&b).unwrap()).collect::<Vec<_>>())
        };
        let mine: Vec<_> = (0..ROUNDS).map(|_| wait(&b).unwrap()).collect();
        let theirs = thread.join().unwrap();
        for c in children {
            assert_eq!(reap(c), 0);
        }
        assert!(mine.iter().chain(&theirs).all(|&i| i < 4));
        assert_eq!(b.n_waiting(), 0);
        assert!(!b.is_broken());
    }

    #[test]
    fn overwritten_parties_or_count_neither_panic_nor_hang() {
        let b = Barrier::create(2).unwrap();
        assert!(matches!(b.arrive(None), Ok(Arrival::Wait { index: 0, .. })));
        // Another process writes zero parties: this handle keeps the parties it was made with.
        b.state().parties.store(0, Ordering::Relaxed);
        assert_eq!(b.n_waiting(), 1);
        assert_eq!(b.parties(), 2);
        assert_eq!(b.arrive(Some(BOUND)), Ok(Arrival::Last(1)));
        b.pass();
        // A process that opens it now is refused.
        let err = Barrier::open(reopen_fd(b.segment()), b.segment().id()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        // More arrivals than parties: broken at once, for every waiter, until reset.
        let waiter = b.arrive(None);
        assert!(matches!(waiter, Ok(Arrival::Wait { index: 0, .. })));
        b.state().count.store(u32::MAX, Ordering::Relaxed);
        assert_eq!(b.n_waiting(), 1);
        assert_eq!(
            b.arrive(Some(Duration::from_millis(200))),
            Err(ArriveError::Broken)
        );
        let Ok(Arrival::Wait { generation, .. }) = waiter else {
            unreachable!()
        };
        assert_eq!(b.wait_pass(generation, Some(BOUND)), Err(Ok(Broken)));
        b.reset();
        assert!(matches!(b.arrive(None), Ok(Arrival::Wait { index: 0, .. })));
    }

    #[test]
    fn abort_and_reset_break_waiters() {
        let b = Arc::new(Barrier::create(3).unwrap());
        let Ok(Arrival::Wait { generation, .. }) = b.arrive(None) else {
            panic!()
        };
        let waiter = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || wait(&b))
        };
        // The thread arrives second; wait until it is counted.
        let start = std::time::Instant::now();
        while b.n_waiting() < 2 {
            assert!(start.elapsed() < BOUND);
            std::thread::yield_now();
        }
        b.reset();
        assert_eq!(waiter.join().unwrap(), Err(Broken));
        assert_eq!(b.wait_pass(generation, Some(BOUND)), Err(Ok(Broken)));
        assert!(!b.is_broken());
        b.abort();
        assert!(b.is_broken());
        assert_eq!(b.arrive(None), Err(ArriveError::Broken));
        b.reset();
        assert_eq!(b.n_waiting(), 0);
        assert!(matches!(b.arrive(None), Ok(Arrival::Wait { index: 0, .. })));
    }
}
