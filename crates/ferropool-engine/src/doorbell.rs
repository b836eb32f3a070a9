//! The dispatcher's doorbell: how `submit` (and `cancel`, `close`, `stats`) wake the dispatcher
//! thread, which sleeps in `poll(2)` on an eventfd among its workers' descriptors.
//!
//! A pending flag sits in front of the eventfd so that a burst of submits costs one `write`:
//! `ring` swaps the flag to set and writes only if it was clear; the dispatcher, once `poll`
//! says the eventfd is readable, calls `answer`, which drains the counter and then clears the
//! flag, and only then looks at the queue again.
//!
//! Why it loses no wake-up: a caller changes what the dispatcher will look at (the task queue,
//! under its lock) before it rings. A ring that finds the flag set comes before `answer` clears
//! it, so the change it made is seen by the queue scan that follows `answer`. A ring that finds
//! the flag clear writes, and that write either lands after the drain (the eventfd stays
//! readable, the next `poll` returns) or before it (then it came before the clear too, and the
//! scan after `answer` sees the change). Clearing before draining breaks this: a ring between
//! the two would see the flag clear and write, the drain would swallow the write and leave the
//! flag set, and every later ring would skip its write while the dispatcher sleeps.
//!
//! Model-checked (`loom_model` below, under `cfg(loom)`): `ring` and `answer` as written here,
//! with the eventfd and `poll` replaced by a counter under a loom mutex and condition variable;
//! the wrong order above is checked to fail.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use crate::sync::AtomicBool;

/// The counter behind the doorbell: an eventfd, or its model.
pub(crate) trait Counter {
    /// Adds one, making the counter readable.
    fn add(&self);
    /// Resets the counter to zero (reading it).
    fn drain(&self);
}

impl Counter for OwnedFd {
    fn add(&self) {
        // Fails only when the counter would overflow, and then it is readable anyway.
        let _ = nix::unistd::write(self.as_fd(), &1u64.to_ne_bytes());
    }

    fn drain(&self) {
        let mut buf = [0u8; 8];
        // Fails only when the counter is already zero (the eventfd is non-blocking).
        let _ = nix::unistd::read(self, &mut buf);
    }
}

/// A wake-up flag in front of a counter that the woken thread polls (see the module docs).
pub(crate) struct Doorbell<C = OwnedFd> {
    /// Set while a wake-up is on its way, so a burst of rings costs one `add`.
    pending: AtomicBool,
    counter: C,
}

impl Doorbell<OwnedFd> {
    /// Creates a doorbell on a new non-blocking eventfd.
    pub(crate) fn new() -> io::Result<Doorbell> {
        let fd = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )?;
        Ok(Doorbell::on(fd.into()))
    }

    /// The eventfd to poll for `POLLIN`; once it is readable, call `answer`.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.counter.as_fd()
    }
}

impl<C: Counter> Doorbell<C> {
    /// A doorbell on `counter`, which must start at zero.
    pub(crate) fn on(counter: C) -> Doorbell<C> {
        Doorbell {
            pending: AtomicBool::new(false),
            counter,
        }
    }

    /// Wakes the polling thread unless a wake-up is already on its way. Never blocks. Call it
    /// after making the change the woken thread is to see.
    pub(crate) fn ring(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.counter.add();
        }
    }

    /// Takes the wake-up: drains the counter, then clears the flag (this order; see the module
    /// docs). Call it once the counter polled readable, before looking for the changes.
    pub(crate) fn answer(&self) {
        self.counter.drain();
        // A swap where a store would do: loom 0.7 lets a plain store fall between the read and
        // the write of a concurrent `ring`'s swap (tokio-rs/loom#254), which reports a lost
        // wake-up that cannot happen. Once per wake-up, the cost does not matter.
        self.pending.swap(false, Ordering::AcqRel);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    fn readable(bell: &Doorbell) -> bool {
        let mut fds = [PollFd::new(bell.fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    #[test]
    fn a_burst_of_rings_is_one_wake_up_and_answer_rearms_it() {
        let bell = Doorbell::new().unwrap();
        assert!(!readable(&bell));
        bell.ring();
        bell.ring();
        assert!(readable(&bell));
        bell.answer();
        assert!(!readable(&bell));
        bell.ring();
        assert!(readable(&bell));
    }
}

/// The loom model: callers push tasks and ring, the dispatcher scans the queue and sleeps until
/// the counter is readable, as `dispatcher::Dispatcher` does around `poll`. Not modelled: the
/// other descriptors `poll` watches (worker sockets, pidfds), `Queue::wants_tasks` (taken as
/// always true, the case in which every submit rings), and `poll`'s timeout (none, as with
/// `PoolConfig::idle_tick = None`). A lost wake-up leaves the dispatcher waiting with nobody
/// left to wake it, which loom reports as a deadlock.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::{Condvar, Mutex};
    use loom::thread;
    // Not loom's: see `shared::sleepers::loom_model`.
    use std::sync::Arc;

    /// An eventfd: a counter that `poll` waits on until it is non-zero.
    #[derive(Default)]
    struct ModelEventFd {
        count: Mutex<u64>,
        readable: Condvar,
    }

    impl Counter for Arc<ModelEventFd> {
        fn add(&self) {
            *self.count.lock().unwrap() += 1;
            self.readable.notify_all();
        }

        fn drain(&self) {
            *self.count.lock().unwrap() = 0;
        }
    }

    impl ModelEventFd {
        /// `poll` with no timeout, on this descriptor alone.
        fn poll(&self) {
            let mut count = self.count.lock().unwrap();
            while *count == 0 {
                count = self.readable.wait(count).unwrap();
            }
        }
    }

    struct Pool {
        queue: Mutex<Vec<u32>>,
        bell: Doorbell<Arc<ModelEventFd>>,
        eventfd: Arc<ModelEventFd>,
    }

    /// Runs the model: one caller submits task 0, another 1 then 2; the dispatcher takes tasks
    /// until it has all three, answering the doorbell with `answer`.
    fn check(answer: fn(&Doorbell<Arc<ModelEventFd>>)) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(5);
        builder.check(move || {
            let eventfd = Arc::new(ModelEventFd::default());
            let pool = Arc::new(Pool {
                queue: Mutex::new(Vec::new()),
                bell: Doorbell::on(eventfd.clone()),
                eventfd,
            });
            let submit = |pool: &Pool, task: u32| {
                pool.queue.lock().unwrap().push(task);
                pool.bell.ring();
            };
            let callers: Vec<_> = [vec![0], vec![1, 2]]
                .into_iter()
                .map(|tasks| {
                    let pool = pool.clone();
                    thread::spawn(move || tasks.into_iter().for_each(|t| submit(&pool, t)))
                })
                .collect();
            let mut taken = Vec::new();
            loop {
                taken.append(&mut pool.queue.lock().unwrap());
                if taken.len() == 3 {
                    break;
                }
                pool.eventfd.poll();
                answer(&pool.bell);
            }
            taken.sort_unstable();
            assert_eq!(taken, [0, 1, 2]);
            callers.into_iter().for_each(|c| c.join().unwrap());
        });
    }

    #[test]
    fn no_submit_is_left_unseen() {
        check(Doorbell::answer);
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn clearing_the_flag_before_draining_loses_a_wake_up() {
        check(|bell| {
            bell.pending.swap(false, Ordering::AcqRel);
            bell.counter.drain();
        });
    }
}
