//! A closable multi-producer multi-consumer FIFO with blocking, timed pops: the task queue
//! behind the thread pool.
//!
//! The algorithm is the textbook monitor: one `Mutex` guards the items, a `closed` flag and the
//! number of consumers blocked in `pop`; one `Condvar` wakes them. Producers signal only when
//! someone is blocked, so a queue that never runs dry costs one uncontended lock per operation.
//!
//! Who wakes whom:
//! - `push` wakes one blocked consumer (if any) per item.
//! - `close` wakes every blocked consumer; they drain what is left, then see `Pop::Closed`.
//! - A consumer whose wait times out re-checks the queue once before returning `TimedOut`, so an
//!   item pushed at the deadline is never stranded while a consumer returns empty-handed.
//!
//! No item is ever dropped while the lock is held (`drain` hands them back to the caller), so an
//! item whose destructor re-enters the queue cannot deadlock.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The result of `pop`.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop<T> {
    /// The oldest item in the queue.
    Item(T),
    /// The timeout passed and the queue stayed empty.
    TimedOut,
    /// The queue is closed and empty; it will never yield another item.
    Closed,
}

/// The error of `push`: the queue is closed. It carries the refused item back.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed<T>(pub T);

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Consumers blocked in `pop` (counted from before they wait until they re-lock).
    waiting: usize,
    /// Callers blocked in `wait_idle`; consumers signal `idle_changed` only when there are some.
    watchers: usize,
    /// Consumers between `returning` and their next pop: done with an item, coming back for
    /// another. `push` counts them as free, so a producer woken by the item's outcome does not
    /// start a new consumer for work this one is about to take.
    returning: usize,
}

/// A closable FIFO shared by any number of producers and consumers.
pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    available: Condvar,
    /// Signalled when a consumer starts waiting, for `wait_idle`.
    idle_changed: Condvar,
}

impl<T> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> WorkQueue<T> {
    /// Creates an empty, open queue.
    pub fn new() -> Self {
        WorkQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
                waiting: 0,
                watchers: 0,
                returning: 0,
            }),
            available: Condvar::new(),
            idle_changed: Condvar::new(),
        }
    }

    /// Locks the state. A panic while the lock was held cannot leave `State` half-updated (every
    /// critical section is a few field updates), so a poisoned lock is still safe to use.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `item` without blocking and wakes one blocked consumer if there is one.
    ///
    /// Returns `Ok(true)` when a blocked consumer is free to take it (there are at least as many
    /// blocked consumers as queued items), `Ok(false)` when it must wait for a busy consumer; a
    /// thread pool starts another thread on `false`. Fails with the item when the queue is closed.
    pub fn push(&self, item: T) -> Result<bool, Closed<T>> {
        let mut s = self.lock();
        if s.closed {
            return Err(Closed(item));
        }
        s.items.push_back(item);
        let waiting = s.waiting;
        let absorbed = waiting + s.returning >= s.items.len();
        drop(s);
        if waiting > 0 {
            self.available.notify_one();
        }
        Ok(absorbed)
    }

    /// Removes the oldest item without blocking; `None` if the queue is empty (open or closed).
    pub fn try_pop(&self) -> Option<T> {
        self.lock().items.pop_front()
    }

    /// Counts the calling consumer as free from now until its next `try_pop_returned` that
    /// yields an item or `pop_returned`. Call it right before publishing an item's outcome:
    /// whoever the outcome wakes and pushes next sees this consumer free (see `push`).
    pub fn returning(&self) {
        self.lock().returning += 1;
    }

    /// `try_pop` for a consumer that called `returning` (`returned`): taking an item ends its
    /// return; finding none leaves it counted free until its `pop_returned`.
    pub fn try_pop_returned(&self, returned: bool) -> Option<T> {
        let mut s = self.lock();
        let item = s.items.pop_front();
        if returned && item.is_some() {
            s.returning -= 1;
        }
        item
    }

    /// `pop` for a consumer that called `returning` (`returned`): its return ends under the same
    /// lock in which it takes an item or starts waiting, so it is counted free throughout.
    pub fn pop_returned(&self, timeout: Option<Duration>, returned: bool) -> Pop<T> {
        // A timeout too large to represent as an `Instant` is the same as none.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut s = self.lock();
        if returned {
            s.returning -= 1;
        }
        loop {
            if let Some(item) = s.items.pop_front() {
                return Pop::Item(item);
            }
            if s.closed {
                return Pop::Closed;
            }
            s.waiting += 1;
            if s.watchers > 0 {
                self.idle_changed.notify_all();
            }
            s = match deadline {
                None => self
                    .available
                    .wait(s)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        s.waiting -= 1;
                        return Pop::TimedOut;
                    }
                    self.available
                        .wait_timeout(s, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            s.waiting -= 1;
        }
    }

    /// Removes the oldest item, blocking while the queue is empty and open.
    ///
    /// With `timeout: None` it blocks until an item arrives or the queue is closed; otherwise it
    /// returns `Pop::TimedOut` once `timeout` has passed with the queue still empty. Items pushed
    /// before `close` are still returned; `Pop::Closed` comes only when the queue is also empty.
    pub fn pop(&self, timeout: Option<Duration>) -> Pop<T> {
        self.pop_returned(timeout, false)
    }

    /// Refuses further pushes and wakes every blocked consumer. Queued items stay and can still
    /// be popped or drained. Closing twice is harmless.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        let waiting = s.waiting;
        drop(s);
        if waiting > 0 {
            self.available.notify_all();
        }
    }

    /// Removes and returns every queued item, oldest first, without blocking. The caller drops
    /// them, outside the lock.
    pub fn drain(&self) -> Vec<T> {
        self.lock().items.drain(..).collect()
    }

    /// Returns the number of queued items.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Returns whether no item is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns whether `close` has been called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Returns the number of consumers blocked in `pop` with no queued item set aside for them:
    /// how many more pushes can be taken at once without a new consumer.
    pub fn idle(&self) -> usize {
        let s = self.lock();
        (s.waiting + s.returning).saturating_sub(s.items.len())
    }

    /// Blocks until at least `n` consumers are idle (see `idle`) or `timeout` passes; returns
    /// whether they are. Woken each time a consumer starts waiting, so it never polls.
    pub fn wait_idle(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut s = self.lock();
        loop {
            if s.waiting.saturating_sub(s.items.len()) >= n {
                return true;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(u32::MAX as u64),
            };
            if left.is_zero() {
                return false;
            }
            s.watchers += 1;
            s = self
                .idle_changed
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            s.watchers -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::mpsc;
    use std::sync::{Arc, Barrier};
    use std::thread;

    /// Bound for every wait that is expected to finish: long enough for a loaded CI machine,
    /// short enough that a lost wake-up fails the test instead of hanging it.
    const BOUND: Duration = Duration::from_secs(10);

    /// Waits until `n` consumers are idle, failing after `BOUND`.
    fn wait_idle<T>(q: &WorkQueue<T>, n: usize) {
        assert!(
            q.wait_idle(n, BOUND),
            "{n} idle consumers not reached within {BOUND:?}"
        );
    }

    #[test]
    fn fifo_order_and_len() {
        let q = WorkQueue::new();
        assert!(q.is_empty());
        for i in 0..5 {
            assert_eq!(q.push(i), Ok(false));
        }
        assert_eq!(q.len(), 5);
        assert_eq!(q.try_pop(), Some(0));
        assert_eq!(q.pop(Some(Duration::ZERO)), Pop::Item(1));
        assert_eq!(q.drain(), vec![2, 3, 4]);
        assert_eq!(q.try_pop(), None);
    }

    #[test]
    fn pop_times_out_on_empty_queue() {
        let q = WorkQueue::<u32>::new();
        let start = Instant::now();
        assert_eq!(q.pop(Some(Duration::from_millis(20))), Pop::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert_eq!(q.pop(Some(Duration::ZERO)), Pop::TimedOut);
        assert_eq!(q.idle(), 0);
    }

    #[test]
    fn close_refuses_pushes_but_keeps_items() {
        let q = WorkQueue::new();
        q.push(1).unwrap();
        q.close();
        q.close();
        assert!(q.is_closed());
        assert_eq!(q.push(2), Err(Closed(2)));
        assert_eq!(q.pop(None), Pop::Item(1));
        assert_eq!(q.pop(None), Pop::Closed);
        assert_eq!(q.pop(Some(BOUND)), Pop::Closed);
    }

    #[test]
    fn push_wakes_blocked_consumer_and_reports_it_idle() {
        let q = Arc::new(WorkQueue::new());
        let (tx, rx) = mpsc::channel();
        let consumer = {
            let q = Arc::clone(&q);
            thread::spawn(move || tx.send(q.pop(Some(BOUND))).unwrap())
        };
        wait_idle(&q, 1);
        assert_eq!(
            q.push(7),
            Ok(true),
            "the blocked consumer should absorb the item"
        );
        assert_eq!(rx.recv_timeout(BOUND).unwrap(), Pop::Item(7));
        consumer.join().unwrap();
        // Nobody waits now, so the next item needs a new consumer.
        assert_eq!(q.push(8), Ok(false));
    }

    #[test]
    fn a_returning_consumer_absorbs_a_push_until_it_pops() {
        let q = WorkQueue::new();
        q.returning();
        assert_eq!(q.idle(), 1, "a returning consumer is free");
        assert_eq!(
            q.push(1),
            Ok(true),
            "it will take the item: no new consumer"
        );
        assert_eq!(
            q.push(2),
            Ok(false),
            "one returning consumer absorbs one item"
        );
        assert_eq!(q.try_pop_returned(true), Some(1));
        assert_eq!(q.idle(), 0, "taking an item ends the return");
        q.returning();
        assert_eq!(q.pop_returned(Some(Duration::ZERO), true), Pop::Item(2));
        assert_eq!(q.try_pop_returned(false), None);
        assert_eq!(q.idle(), 0, "popping ends the return");
        q.returning();
        assert_eq!(q.try_pop_returned(true), None);
        assert_eq!(
            q.idle(),
            1,
            "finding nothing keeps it counted until its blocking pop"
        );
        assert_eq!(q.pop_returned(Some(Duration::ZERO), true), Pop::TimedOut);
        assert_eq!(q.idle(), 0);
    }

    #[test]
    fn close_wakes_every_blocked_consumer() {
        let q = Arc::new(WorkQueue::<u32>::new());
        let (tx, rx) = mpsc::channel();
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let (q, tx) = (Arc::clone(&q), tx.clone());
                thread::spawn(move || tx.send(q.pop(None)).unwrap())
            })
            .collect();
        wait_idle(&q, 4);
        q.close();
        for _ in 0..4 {
            assert_eq!(rx.recv_timeout(BOUND).unwrap(), Pop::Closed);
        }
        for c in consumers {
            c.join().unwrap();
        }
    }

    #[test]
    fn many_producers_and_consumers_lose_and_duplicate_nothing() {
        const PRODUCERS: usize = 4;
        const CONSUMERS: usize = 4;
        const PER_PRODUCER: usize = 20_000;
        let q = Arc::new(WorkQueue::new());
        let start = Arc::new(Barrier::new(PRODUCERS + CONSUMERS));
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let (q, start) = (Arc::clone(&q), Arc::clone(&start));
                thread::spawn(move || {
                    start.wait();
                    let mut got = Vec::new();
                    loop {
                        match q.pop(Some(BOUND)) {
                            Pop::Item(i) => got.push(i),
                            Pop::Closed => return got,
                            Pop::TimedOut => panic!("consumer starved for {BOUND:?}"),
                        }
                    }
                })
            })
            .collect();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (q, start) = (Arc::clone(&q), Arc::clone(&start));
                thread::spawn(move || {
                    start.wait();
                    for i in 0..PER_PRODUCER {
                        q.push(p * PER_PRODUCER + i).unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        q.close();
        let mut seen = HashSet::new();
        for c in consumers {
            let got = c.join().unwrap();
            // Each producer's items reach any one consumer in the order they were pushed.
            for w in got.windows(2) {
                if w[0] / PER_PRODUCER == w[1] / PER_PRODUCER {
                    assert!(w[0] < w[1], "FIFO violated: {} before {}", w[0], w[1]);
                }
            }
            for i in got {
                assert!(seen.insert(i), "item {i} popped twice");
            }
        }
        assert_eq!(seen.len(), PRODUCERS * PER_PRODUCER, "items lost");
        assert_eq!(q.idle(), 0);
    }

    #[test]
    fn dropping_a_drained_item_may_reenter_the_queue() {
        /// Pushes a plain copy of itself back onto its own queue when dropped.
        struct Reenter(Arc<WorkQueue<Reenter>>, bool);
        impl Drop for Reenter {
            fn drop(&mut self) {
                if self.1 {
                    let _ = self.0.push(Reenter(Arc::clone(&self.0), false));
                }
            }
        }
        let q = Arc::new(WorkQueue::new());
        assert!(q.push(Reenter(Arc::clone(&q), true)).is_ok());
        drop(q.drain()); // would deadlock if the item were dropped under the lock
        assert_eq!(q.len(), 1);
        drop(q.drain()); // breaks the queue -> item -> queue cycle
    }
}
