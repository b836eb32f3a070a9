//! How the shared queue's producers and consumers sleep until the other side makes progress, and
//! how that side wakes them, with no lost wake-up (`queue.rs` uses it on both sides).
//!
//! Each side has a sequence word that the other side bumps after every change, and a count of
//! its sleepers. A sleeper registers in the count, reads the sequence word, re-checks its
//! condition, then sleeps while the word still holds what it read (the futex compares it
//! atomically with queueing the sleeper). The other side makes its change, bumps the word, then
//! wakes one sleeper if the count is non-zero. With sequentially consistent operations either the
//! waker sees the registration, or the sleeper's re-check sees the change, or the futex sees the
//! bumped word: the sleeper never sleeps through the change it waits for. Without the re-check
//! it could: the change and the bump may fall between the caller's first check and the read of
//! the word, before the registration, so nobody wakes it and the word it waits on stays put.
//!
//! Model-checked (`loom_model` below, under `cfg(loom)`): `sleep` and `wake_one` as written
//! here, driving a one-producer one-consumer byte ring that copies `queue.rs`'s publication order
//! (record bytes, then `head`; read, then `tail`), with the futex replaced by a loom mutex and
//! condition variable, with no timeouts, and with a `SeqCst` fence after each side's write
//! (`seq_cst_in_model`), since loom weakens `SeqCst` accesses. Not modelled: the robust locks
//! (only their holder sleeps, so one producer and one consumer stand for each side), the spin
//! before sleeping, corruption checks and other processes' deaths. Sleeping without the re-check
//! is checked to fail, and so is publishing `head` with a relaxed store (the consumer then reads
//! a torn record). The ring is the model's copy, not `queue.rs`'s code: it checks the order that
//! `queue.rs` follows, not that `queue.rs` follows it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::futex;

/// A 32-bit word that threads can sleep on: a futex word, or its model.
pub(crate) trait Word {
    fn load(&self, order: Ordering) -> u32;
    fn fetch_add(&self, n: u32, order: Ordering) -> u32;
    fn fetch_sub(&self, n: u32, order: Ordering) -> u32;
    /// Sleeps while the word holds `expected`, for at most `timeout` (`None`: no limit); may
    /// return early for any reason.
    fn wait(&self, expected: u32, timeout: Option<Duration>);
    /// Wakes up to `n` sleepers.
    fn wake(&self, n: u32);
}

impl Word for AtomicU32 {
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }

    fn fetch_add(&self, n: u32, order: Ordering) -> u32 {
        AtomicU32::fetch_add(self, n, order)
    }

    fn fetch_sub(&self, n: u32, order: Ordering) -> u32 {
        AtomicU32::fetch_sub(self, n, order)
    }

    fn wait(&self, expected: u32, timeout: Option<Duration>) {
        futex::wait(self, expected, timeout);
    }

    fn wake(&self, n: u32) {
        futex::wake(self, n);
    }
}

/// Sleeps until the other side bumps `seq`, for at most `timeout`, unless `ready` holds once
/// this thread is counted in `sleepers`. May return early (spuriously, or on timeout): callers
/// re-check `ready` in a loop.
pub(crate) fn sleep<W: Word>(
    seq: &W,
    sleepers: &W,
    ready: impl Fn() -> bool,
    timeout: Option<Duration>,
) {
    sleepers.fetch_add(1, Ordering::SeqCst);
    seq_cst_in_model();
    let seen = seq.load(Ordering::SeqCst);
    if !ready() {
        seq.wait(seen, timeout);
    }
    sleepers.fetch_sub(1, Ordering::SeqCst);
}

/// Bumps `seq` and wakes one sleeper if `sleepers` counts any. Call it after the change the
/// sleepers wait for. Never blocks.
pub(crate) fn wake_one<W: Word>(seq: &W, sleepers: &W) {
    seq.fetch_add(1, Ordering::SeqCst);
    seq_cst_in_model();
    if sleepers.load(Ordering::SeqCst) > 0 {
        seq.wake(1);
    }
}

/// Nothing, except in the loom model, where it is the fence that stands in for what `SeqCst`
/// guarantees between a side's write (registration, or change and bump) and its later loads:
/// loom treats `SeqCst` accesses as `AcqRel` (its README, "Unsupported features"), which lets
/// both sides read the other's old value, an outcome `SeqCst` rules out.
#[inline(always)]
fn seq_cst_in_model() {
    #[cfg(all(test, loom))]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

/// The loom model (see the module docs): a producer puts two 2-byte items through a 4-byte ring
/// that holds one record at a time, so each side sleeps on the other; the consumer checks each
/// item. A lost wake-up leaves both sides asleep, which loom reports as a deadlock; a torn
/// record is a read of ring bytes not ordered after their write, which loom reports as a
/// causality violation.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{AtomicU32, AtomicU64};
    use loom::sync::{Condvar, Mutex};
    use loom::thread;
    // Not loom's: a failed check panics inside loom's scheduler, and a loom `Arc` dropped while
    // that panic unwinds a model thread calls back into the scheduler and aborts the process.
    use std::sync::Arc;

    /// A futex word: `wait` compares the word under the lock that `wake` takes, as the kernel
    /// compares it under the lock of the futex's wait queue.
    #[derive(Default)]
    struct ModelWord {
        value: AtomicU32,
        queue: Mutex<()>,
        woken: Condvar,
    }

    impl Word for ModelWord {
        fn load(&self, order: Ordering) -> u32 {
            self.value.load(order)
        }

        fn fetch_add(&self, n: u32, order: Ordering) -> u32 {
            self.value.fetch_add(n, order)
        }

        fn fetch_sub(&self, n: u32, order: Ordering) -> u32 {
            self.value.fetch_sub(n, order)
        }

        fn wait(&self, expected: u32, timeout: Option<Duration>) {
            assert!(timeout.is_none(), "loom does not model time");
            let queued = self.queue.lock().unwrap();
            if self.value.load(Ordering::SeqCst) == expected {
                drop(self.woken.wait(queued).unwrap());
            }
        }

        fn wake(&self, _n: u32) {
            let _queue = self.queue.lock().unwrap();
            self.woken.notify_all();
        }
    }

    const CAPACITY: u64 = 4;
    /// A record: one length byte, then the item.
    const ITEM: usize = 2;
    const RECORD: u64 = 1 + ITEM as u64;

    /// `queue.rs`'s state, less the locks, with a ring of tracked bytes.
    #[derive(Default)]
    struct Ring {
        head: AtomicU64,
        wseq: ModelWord,
        get_sleepers: ModelWord,
        tail: AtomicU64,
        rseq: ModelWord,
        put_sleepers: ModelWord,
        bytes: [UnsafeCell<u8>; CAPACITY as usize],
    }

    // SAFETY: as in the shared queue, the producer writes only free bytes and the consumer reads
    // only published ones (`put`, `get`); loom's cells check that every read is ordered after
    // the write it reads, which is what this model is for.
    unsafe impl Sync for Ring {}

    /// How a side sleeps: `sleep`, or a wrong variant.
    type Sleep = fn(&ModelWord, &ModelWord, &dyn Fn() -> bool);

    impl Ring {
        fn write(&self, at: u64, byte: u8) {
            self.bytes[(at % CAPACITY) as usize].with_mut(|b| {
                // SAFETY: only the producer writes, and only bytes it has room for (`put`).
                unsafe { *b = byte }
            });
        }

        fn read(&self, at: u64) -> u8 {
            self.bytes[(at % CAPACITY) as usize].with(|b| {
                // SAFETY: only the consumer reads, and only published bytes (`get`).
                unsafe { *b }
            })
        }

        /// `Queue::put_locked`: wait for room, write the record, publish it, wake a consumer.
        fn put(&self, item: [u8; ITEM], sleep: Sleep, publish: Ordering) {
            let head = self.head.load(Ordering::Relaxed);
            let has_room = || head - self.tail.load(Ordering::SeqCst) + RECORD <= CAPACITY;
            while !has_room() {
                sleep(&self.rseq, &self.put_sleepers, &has_room);
            }
            self.write(head, ITEM as u8);
            for (i, &b) in item.iter().enumerate() {
                self.write(head + 1 + i as u64, b);
            }
            self.head.store(head + RECORD, publish);
            wake_one(&self.wseq, &self.get_sleepers);
        }

        /// `Queue::get_locked`: wait for a record, copy it out, free it, wake a producer.
        fn get(&self, sleep: Sleep) -> [u8; ITEM] {
            let tail = self.tail.load(Ordering::Relaxed);
            let has_item = || self.head.load(Ordering::SeqCst) != tail;
            while !has_item() {
                sleep(&self.wseq, &self.get_sleepers, &has_item);
            }
            assert_eq!(self.read(tail), ITEM as u8, "torn record: length");
            let mut item = [0; ITEM];
            for (i, b) in item.iter_mut().enumerate() {
                *b = self.read(tail + 1 + i as u64);
            }
            self.tail.store(tail + RECORD, Ordering::SeqCst);
            wake_one(&self.rseq, &self.put_sleepers);
            item
        }
    }

    fn check(sleep: Sleep, publish: Ordering) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(4);
        builder.check(move || {
            let ring = Arc::new(Ring::default());
            let producer = {
                let ring = ring.clone();
                thread::spawn(move || {
                    ring.put([1, 2], sleep, publish);
                    ring.put([3, 4], sleep, publish);
                    ring.put([5, 6], sleep, publish);
                })
            };
            assert_eq!(ring.get(sleep), [1, 2]);
            assert_eq!(ring.get(sleep), [3, 4]);
            assert_eq!(ring.get(sleep), [5, 6]);
            producer.join().unwrap();
        });
    }

    fn real_sleep(seq: &ModelWord, sleepers: &ModelWord, ready: &dyn Fn() -> bool) {
        sleep(seq, sleepers, ready, None);
    }

    #[test]
    fn no_sleeper_misses_its_wake_up_and_no_record_tears() {
        check(real_sleep, Ordering::SeqCst);
    }

    #[test]
    #[should_panic(expected = "deadlock")]
    fn sleeping_without_the_recheck_loses_a_wake_up() {
        check(
            |seq, sleepers, _ready| {
                sleepers.fetch_add(1, Ordering::SeqCst);
                seq_cst_in_model();
                let seen = seq.load(Ordering::SeqCst);
                seq.wait(seen, None);
                sleepers.fetch_sub(1, Ordering::SeqCst);
            },
            Ordering::SeqCst,
        );
    }

    #[test]
    #[should_panic(expected = "Causality violation")]
    fn publishing_head_relaxed_tears_a_record() {
        check(real_sleep, Ordering::Relaxed);
    }
}
