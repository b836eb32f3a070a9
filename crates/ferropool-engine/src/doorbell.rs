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

/// The loom models: callers push tasks and ring; the dispatcher scans the queue and sleeps in
/// `poll` until the eventfd (or a worker's socket) is readable, as `dispatcher::Dispatcher` does.
/// The first model has no workers and every submit rings; the second has one worker that holds
/// one task at a time, so the dispatcher publishes `Queue::wants_tasks` under the queue's lock
/// as `assign` does, submit rings only when it is set (as `ProcessPool::submit_within` does),
/// and a worker's answer wakes the dispatcher through its socket. Both copy those few lines of
/// `pool.rs` and `dispatcher/mod.rs` rather than run them. Not modelled: pidfds, timers and
/// `poll`'s timeout (none, as with `PoolConfig::idle_tick = None`). A lost wake-up leaves the
/// dispatcher waiting with nobody left to wake it, which loom reports as a deadlock.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::{Condvar, Mutex};
    use loom::thread;
    use std::collections::VecDeque;
    // Not loom's: see `shared::sleepers::loom_model`.
    use std::sync::Arc;

    /// What `poll` watches: the eventfd's counter and the bytes waiting in the worker's socket.
    #[derive(Default)]
    struct Readiness {
        eventfd: u64,
        socket: u64,
    }

    #[derive(Default)]
    struct Poller {
        ready: Mutex<Readiness>,
        changed: Condvar,
    }

    impl Poller {
        /// `poll` with no timeout: waits until a descriptor is readable, returns which.
        fn poll(&self) -> (bool, bool) {
            let mut ready = self.ready.lock().unwrap();
            while ready.eventfd == 0 && ready.socket == 0 {
                ready = self.changed.wait(ready).unwrap();
            }
            (ready.eventfd > 0, ready.socket > 0)
        }

        fn update(&self, f: impl FnOnce(&mut Readiness)) {
            f(&mut self.ready.lock().unwrap());
            self.changed.notify_all();
        }
    }

    /// The eventfd behind the doorbell.
    struct EventFd(Arc<Poller>);

    impl Counter for EventFd {
        fn add(&self) {
            self.0.update(|r| r.eventfd += 1);
        }

        fn drain(&self) {
            self.0.update(|r| r.eventfd = 0);
        }
    }

    #[derive(Default)]
    struct Queue {
        tasks: VecDeque<u32>,
        wants_tasks: bool,
    }

    struct Pool {
        queue: Mutex<Queue>,
        bell: Doorbell<EventFd>,
        poller: Arc<Poller>,
    }

    impl Pool {
        fn new() -> Arc<Pool> {
            let poller = Arc::new(Poller::default());
            Arc::new(Pool {
                queue: Mutex::new(Queue {
                    wants_tasks: true,
                    ..Queue::default()
                }),
                bell: Doorbell::on(EventFd(poller.clone())),
                poller,
            })
        }

        /// `ProcessPool::submit_within`: push, read `wants_tasks` under the same lock, ring.
        fn submit(&self, task: u32) {
            let mut q = self.queue.lock().unwrap();
            q.tasks.push_back(task);
            let wake = q.wants_tasks;
            drop(q);
            if wake {
                self.bell.ring();
            }
        }
    }

    /// Spawns one thread per list of tasks, each submitting its tasks in order with `submit`.
    fn callers(
        pool: &Arc<Pool>,
        tasks: &[&'static [u32]],
        submit: fn(&Pool, u32),
    ) -> Vec<thread::JoinHandle<()>> {
        tasks
            .iter()
            .map(|&tasks| {
                let pool = pool.clone();
                thread::spawn(move || tasks.iter().for_each(|&t| submit(&pool, t)))
            })
            .collect()
    }

    fn builder(preemption_bound: usize) -> loom::model::Builder {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(preemption_bound);
        builder
    }

    /// The first model: one caller submits task 0, another 1 then 2; the dispatcher takes tasks
    /// until it has all three, answering the doorbell with `answer`.
    fn check(answer: fn(&Doorbell<EventFd>)) {
        builder(5).check(move || {
            let pool = Pool::new();
            let callers = callers(&pool, &[&[0], &[1, 2]], Pool::submit);
            let mut taken = Vec::new();
            loop {
                taken.extend(pool.queue.lock().unwrap().tasks.drain(..));
                if taken.len() == 3 {
                    break;
                }
                pool.poller.poll();
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

    /// The second model: two callers submit a task each (with `submit`); one worker runs them
    /// one at a time and answers through its socket; the dispatcher assigns a task whenever the
    /// worker is free, until both are answered.
    fn check_with_worker(submit: fn(&Pool, u32)) {
        builder(3).check(move || {
            let pool = Pool::new();
            let to_worker = Arc::new((Mutex::new(None::<u32>), Condvar::new()));
            let worker = {
                let (to_worker, poller) = (to_worker.clone(), pool.poller.clone());
                thread::spawn(move || {
                    for _ in 0..2 {
                        let mut slot = to_worker.0.lock().unwrap();
                        while slot.take().is_none() {
                            slot = to_worker.1.wait(slot).unwrap();
                        }
                        drop(slot);
                        poller.update(|r| r.socket += 1);
                    }
                })
            };
            let callers = callers(&pool, &[&[0], &[1]], submit);
            let (mut free, mut answered) = (true, 0);
            loop {
                // `Dispatcher::assign`: take what fits and publish whether room is left, under
                // one lock.
                let mut q = pool.queue.lock().unwrap();
                if free {
                    if let Some(task) = q.tasks.pop_front() {
                        *to_worker.0.lock().unwrap() = Some(task);
                        to_worker.1.notify_one();
                        free = false;
                    }
                }
                q.wants_tasks = free;
                drop(q);
                if answered == 2 {
                    break;
                }
                let (bell, socket) = pool.poller.poll();
                if bell {
                    pool.bell.answer();
                }
                if socket {
                    let mut ready = pool.poller.ready.lock().unwrap();
                    answered += std::mem::take(&mut ready.socket);
                    free = true;
                }
            }
            worker.join().unwrap();
            callers.into_iter().for_each(|c| c.join().unwrap());
        });
    }

    #[test]
    fn no_submit_is_left_unseen_while_the_worker_is_busy() {
        check_with_worker(Pool::submit);
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn reading_wants_tasks_outside_the_push_loses_a_wake_up() {
        check_with_worker(|pool, task| {
            let wake = pool.queue.lock().unwrap().wants_tasks;
            pool.queue.lock().unwrap().tasks.push_back(task);
            if wake {
                pool.bell.ring();
            }
        });
    }
}
