//! When a worker's held answers must leave, and when the flusher thread must be woken for them
//! (`connection.rs` holds answers back to batch them; its flusher writes them out).
//!
//! The schedule lives under the connection's writer lock. `hold` records the first answer held
//! since the last write; the flusher asks `next` what to do: write once an answer has been held
//! for `MAX_HOLD`, look again shortly while answers are streaming, or, once none has been held
//! for `FLUSHER_IDLE_AFTER`, sleep until woken. `next` marks the flusher idle when it says
//! `Sleep`, under the same lock that the flusher's wait releases, so a `hold` that comes after
//! sees the mark and wakes it (it returns true, and the caller notifies after unlocking). No
//! answer waits on a sleeping flusher: `hold` finds it either awake (it looks again within
//! `MAX_HOLD`) or marked idle (then it is woken). Deciding to sleep, unlocking, and waiting
//! later would lose that wake-up.
//!
//! Model-checked (`loom_model` below, under `cfg(loom)`): `hold`, `next`, `woken` and `written` as
//! written here, driven by the flusher loop of `connection.rs` rewritten over a loom mutex and
//! condition variable, with a clock kept under the lock. Loom does not model time, so a timed
//! wait is modelled as one that times out: the lock is released and taken again and the clock
//! moves past the wait (at least half of `FLUSHER_IDLE_AFTER`, which keeps the model small).
//! Not modelled: the socket write and its errors, the journal, and the flusher thread's start.

use std::time::{Duration, Instant};

/// Longest an answer is held back before the flusher writes it.
pub const MAX_HOLD: Duration = Duration::from_millis(1);
/// How long the flusher keeps looking every `MAX_HOLD` after it last saw an answer held, before
/// it sleeps until woken. While tasks stream in batches it is never woken: a wake-up per batch
/// (a futex call, two context switches) costs more than a batch of tiny tasks saves.
pub(crate) const FLUSHER_IDLE_AFTER: Duration = Duration::from_millis(20);

/// What the flusher does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Write out what is held.
    Write,
    /// Wait this long (or until woken), then ask again.
    Wait(Duration),
    /// Wait until woken (`hold` will wake it), then call `woken` and ask again.
    Sleep,
}

/// The flusher's schedule (see the module docs); every call is made under the writer lock.
#[derive(Debug)]
pub(crate) struct FlushSchedule {
    /// When the oldest answer now held back was queued.
    held_since: Option<Instant>,
    /// When the flusher last saw an answer held (or was woken).
    last_held: Instant,
    /// The flusher sleeps until woken.
    idle: bool,
}

impl FlushSchedule {
    /// A schedule with nothing held and the flusher awake.
    pub(crate) fn new(now: Instant) -> FlushSchedule {
        FlushSchedule {
            held_since: None,
            last_held: now,
            idle: false,
        }
    }

    /// Records that something is held back at `now`. Returns true when the flusher sleeps and
    /// must be woken: notify it after releasing the lock.
    pub(crate) fn hold(&mut self, now: Instant) -> bool {
        if self.held_since.is_some() {
            return false;
        }
        self.held_since = Some(now);
        std::mem::take(&mut self.idle)
    }

    /// Records that everything held has been written.
    pub(crate) fn written(&mut self) {
        self.held_since = None;
    }

    /// The flusher's next step at `now`. On `Sleep` the flusher counts as idle from now on, so
    /// it must wait without releasing the lock in between.
    pub(crate) fn next(&mut self, now: Instant) -> Step {
        match self.held_since {
            Some(since) => {
                self.last_held = now;
                let due = since + MAX_HOLD;
                if now >= due {
                    Step::Write
                } else {
                    Step::Wait(due - now)
                }
            }
            // Answers are streaming: look again in MAX_HOLD rather than be woken for each.
            None if now.duration_since(self.last_held) < FLUSHER_IDLE_AFTER => Step::Wait(MAX_HOLD),
            None => {
                self.idle = true;
                Step::Sleep
            }
        }
    }

    /// Records that the flusher woke from `Sleep` at `now`.
    pub(crate) fn woken(&mut self, now: Instant) {
        self.last_held = now;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_held_answer_is_written_after_max_hold() {
        let t0 = Instant::now();
        let mut s = FlushSchedule::new(t0);
        assert!(!s.hold(t0));
        assert!(!s.hold(t0 + MAX_HOLD / 2), "one wake-up per batch at most");
        assert_eq!(s.next(t0 + MAX_HOLD / 4), Step::Wait(MAX_HOLD * 3 / 4));
        assert_eq!(s.next(t0 + MAX_HOLD), Step::Write);
        s.written();
        assert_eq!(s.next(t0 + MAX_HOLD), Step::Wait(MAX_HOLD));
    }

    #[test]
    fn a_quiet_flusher_sleeps_and_the_next_hold_wakes_it_once() {
        let t0 = Instant::now();
        let mut s = FlushSchedule::new(t0);
        assert_eq!(s.next(t0 + FLUSHER_IDLE_AFTER), Step::Sleep);
        let t1 = t0 + FLUSHER_IDLE_AFTER * 2;
        assert!(s.hold(t1));
        s.written();
        assert!(!s.hold(t1), "the flusher is awake again");
    }
}

/// The loom model: a worker thread holds answers one at a time, each time waiting until the
/// flusher has written it, then drops the connection; the flusher runs `connection.rs`'s loop.
/// An answer the flusher sleeps through leaves both threads waiting, which loom reports as a
/// deadlock.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::{Condvar, Mutex, MutexGuard};
    use loom::thread;
    // Not loom's: see `shared::sleepers::loom_model`.
    use std::sync::Arc;

    struct Out {
        schedule: FlushSchedule,
        /// Answers held and not yet written.
        held: u32,
        written: u32,
        closed: bool,
        /// The model's clock: time since `start`, moved on only by timed waits.
        elapsed: Duration,
        start: Instant,
    }

    impl Out {
        fn now(&self) -> Instant {
            self.start + self.elapsed
        }
    }

    struct Outbox {
        state: Mutex<Out>,
        /// `Outbox::wake` of `connection.rs`.
        wake: Condvar,
        /// Signalled on each write, for the model's worker thread only.
        wrote: Condvar,
    }

    /// How the flusher waits for a `Step::Sleep`: as `connection.rs` does, or a wrong variant.
    type Sleep = for<'a> fn(&'a Outbox, MutexGuard<'a, Out>) -> MutexGuard<'a, Out>;

    /// `Outbox::run_flusher`, with the socket write replaced by counting.
    fn run_flusher(out: &Outbox, sleep: Sleep) {
        let mut st = out.state.lock().unwrap();
        while !st.closed {
            let now = st.now();
            st = match st.schedule.next(now) {
                Step::Write => {
                    st.written += std::mem::take(&mut st.held);
                    st.schedule.written();
                    out.wrote.notify_all();
                    continue;
                }
                Step::Wait(d) => {
                    // Timed out (see the module docs).
                    drop(st);
                    let mut st = out.state.lock().unwrap();
                    st.elapsed += d.max(FLUSHER_IDLE_AFTER / 2);
                    st
                }
                Step::Sleep => {
                    let mut st = sleep(out, st);
                    let now = st.now();
                    st.schedule.woken(now);
                    st
                }
            };
        }
    }

    fn check(answers: u32, sleep: Sleep) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = None;
        builder.check(move || {
            let out = Arc::new(Outbox {
                state: Mutex::new(Out {
                    schedule: FlushSchedule::new(Instant::now()),
                    held: 0,
                    written: 0,
                    closed: false,
                    elapsed: Duration::ZERO,
                    start: Instant::now(),
                }),
                wake: Condvar::new(),
                wrote: Condvar::new(),
            });
            let flusher = {
                let out = out.clone();
                thread::spawn(move || run_flusher(&out, sleep))
            };
            for n in 1..=answers {
                // `connection::hold`.
                let mut st = out.state.lock().unwrap();
                st.held += 1;
                let now = st.now();
                let wake = st.schedule.hold(now);
                drop(st);
                if wake {
                    out.wake.notify_one();
                }
                let mut st = out.state.lock().unwrap();
                while st.written < n {
                    st = out.wrote.wait(st).unwrap();
                }
            }
            // `Connection::drop`.
            out.state.lock().unwrap().closed = true;
            out.wake.notify_all();
            flusher.join().unwrap();
        });
    }

    #[test]
    fn every_held_answer_is_written_without_the_worker() {
        check(3, |out, st| out.wake.wait(st).unwrap());
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn unlocking_between_deciding_to_sleep_and_sleeping_loses_a_wake_up() {
        check(2, |out, st| {
            drop(st);
            let st = out.state.lock().unwrap();
            if st.closed {
                return st;
            }
            out.wake.wait(st).unwrap()
        });
    }
}
