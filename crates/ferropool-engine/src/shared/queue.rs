//! A bounded multi-producer multi-consumer queue of byte strings in one segment: a byte ring
//! with one robust lock for producers and one for consumers.
//!
//! Layout: the `State` below (each hot group on its own cache line), then `capacity` bytes of
//! ring. An item is a record `[len: u32 little-endian][len bytes]`, written at `head % capacity`
//! and split in two where it wraps. `head` and `tail` count bytes ever written and consumed, so
//! `head - tail` is the bytes in use.
//!
//! Producers take `put_lock`, so the ring has one writer at a time; consumers take `get_lock`, so
//! one reader. Inside, it is a single-producer single-consumer ring: the producer copies the
//! record, then publishes it with a release store of `head`; the consumer reads `head` with
//! acquire, copies the record out, then frees it with a release store of `tail`.
//!
//! Waiting: a producer that finds no room (`capacity` bytes, or `maxsize` items) sleeps on
//! `rseq`, which every `get` bumps; a consumer that finds the ring empty sleeps on `wseq`, which
//! every `put` bumps. A sleeper first registers in `put_sleepers`/`get_sleepers`, then reads the
//! sequence word, then re-checks its condition, then sleeps while the word is unchanged; the other
//! side updates `head`/`tail` and `puts`/`gets`, bumps the sequence word, then wakes if the sleeper count is
//! non-zero. With sequentially consistent operations, either the waker sees the registration or
//! the sleeper's re-check (or the kernel's compare) sees the update: no lost wake-up (`sleepers.rs`
//! holds this protocol, and its loom model). Only the holder of the side's lock ever sleeps on its
//! sequence word, so waking one is enough.
//!
//! Nothing read from shared memory is trusted to stay in bounds: any process that maps the
//! segment can write any bytes into it. The ring's size and the item limit are read once, when
//! the queue is created or opened, and kept in this process's handle; `head`, `tail` and each
//! record's length are checked against them before any copy (`Corrupt` otherwise). The item
//! count is derived, `puts - gets`, each counter written by one side only, and clamped to what
//! the bytes in use can hold, so a counter off by a dead process's unfinished call (or
//! overwritten) can never make producers wait on an empty ring.
//!
//! A process that dies holding a lock is taken over by the next caller (see `lock`); because an
//! item becomes visible only with the store of `head` (or gone only with the store of `tail`), a
//! half-written or half-read record is never seen: the queue stays consistent. The one loss: an
//! item whose consumer dies after taking it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::lock;
use super::segment::{Kind, Segment};
use super::{deadline, remaining, sleepers, TimedOut};

/// Aligns its content to a cache line, so producers and consumers do not share one.
#[repr(C, align(64))]
struct Line<T>(T);

#[repr(C)]
struct Producers {
    lock: AtomicU32,
    /// Bumped by every put; consumers sleep on it.
    wseq: AtomicU32,
    get_sleepers: AtomicU32,
    head: AtomicU64,
    /// Items ever put; written only under the producers' lock, after `head`.
    puts: AtomicU64,
}

#[repr(C)]
struct Consumers {
    lock: AtomicU32,
    /// Bumped by every get; producers sleep on it.
    rseq: AtomicU32,
    put_sleepers: AtomicU32,
    tail: AtomicU64,
    /// Items ever taken; written only under the consumers' lock, after `tail`.
    gets: AtomicU64,
}

/// Written once by the creator; each opener copies it into its handle (see the module docs).
#[repr(C)]
struct Config {
    capacity: AtomicU64,
    /// Most items queued at once; 0 for no limit but the bytes.
    maxsize: AtomicU32,
}

#[repr(C)]
struct State {
    producers: Line<Producers>,
    consumers: Line<Consumers>,
    config: Line<Config>,
}

const RING: usize = std::mem::size_of::<State>();
const LEN: usize = 4;

/// Why `put` or `get` gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The timeout passed first (`put`: still full; `get`: still empty).
    TimedOut,
    /// `put`: the item is larger than the ring could ever hold.
    TooLarge,
    /// The ring's indices are impossible: memory was overwritten by someone else.
    Corrupt,
}

impl From<TimedOut> for QueueError {
    fn from(_: TimedOut) -> Self {
        QueueError::TimedOut
    }
}

/// A bounded MPMC queue of byte strings in its own segment.
#[derive(Debug)]
pub struct Queue {
    seg: Segment,
    /// The ring's size in bytes, as created; never re-read from the segment.
    capacity: u64,
    /// As created; never re-read from the segment.
    maxsize: u32,
}

impl Queue {
    /// Creates an empty queue with a ring of `capacity` bytes (each item takes its length plus 4)
    /// holding at most `maxsize` items (0: no limit but the bytes).
    pub fn create(capacity: usize, maxsize: u32) -> std::io::Result<Queue> {
        if capacity < 2 * LEN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "queue capacity too small",
            ));
        }
        let q = Queue {
            seg: Segment::create(c"ferropool-queue", Kind::Queue, RING + capacity)?,
            capacity: capacity as u64,
            maxsize,
        };
        let c = &q.state().config.0;
        c.capacity.store(capacity as u64, Ordering::Relaxed);
        c.maxsize.store(maxsize, Ordering::Relaxed);
        Ok(q)
    }

    /// Maps an existing queue's segment (see `Segment::open`).
    pub fn open(fd: std::os::fd::OwnedFd, id: u64) -> std::io::Result<Queue> {
        let seg = Segment::open(fd, Kind::Queue, id)?;
        if seg.payload_len() < RING {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "queue segment smaller than its state",
            ));
        }
        // SAFETY: the payload holds at least a `State` of atomics (checked just above).
        let config = &unsafe { seg.state::<State>() }.config.0;
        let capacity = config.capacity.load(Ordering::Relaxed);
        if capacity < 2 * LEN as u64 || capacity > (seg.payload_len() - RING) as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "queue capacity does not match its segment (the memory was overwritten)",
            ));
        }
        let maxsize = config.maxsize.load(Ordering::Relaxed);
        Ok(Queue {
            seg,
            capacity,
            maxsize,
        })
    }

    fn state(&self) -> &State {
        // SAFETY: a Kind::Queue segment's payload starts with a `State` of atomics (`create`
        // sized it so, `open` checked the size).
        unsafe { self.seg.state::<State>() }
    }

    /// The ring's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The most items queued at once (0: no limit but the bytes).
    pub fn maxsize(&self) -> u32 {
        self.maxsize
    }

    /// The number of items queued now (a snapshot).
    pub fn len(&self) -> usize {
        let (p, c) = (&self.state().producers.0, &self.state().consumers.0);
        let gets = c.gets.load(Ordering::SeqCst);
        let tail = c.tail.load(Ordering::SeqCst);
        let puts = p.puts.load(Ordering::SeqCst);
        let head = p.head.load(Ordering::SeqCst);
        self.items(puts, gets, head.wrapping_sub(tail)) as usize
    }

    /// The item count from the two counters, clamped to what `used` bytes can hold (a record
    /// takes at least `LEN` bytes): an empty ring holds no item whatever the counters say.
    fn items(&self, puts: u64, gets: u64, used: u64) -> u64 {
        if used > self.capacity {
            return 0;
        }
        puts.wrapping_sub(gets).min(used / LEN as u64)
    }

    /// Returns whether no item is queued now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns whether `maxsize` items are queued now.
    pub fn is_full(&self) -> bool {
        let max = self.maxsize();
        max > 0 && self.len() >= max as usize
    }

    /// Copies `src` into the ring at byte position `at` (wrapping).
    ///
    /// # Safety
    /// The caller holds `put_lock` and the `src.len()` bytes from `at` are free (`at` is at or
    /// after `head`, and `at + len - tail <= capacity`), so no reader touches them.
    unsafe fn write_at(&self, at: u64, src: &[u8]) {
        let cap = self.capacity;
        debug_assert!(src.len() as u64 <= cap);
        let ring = self.seg.payload().wrapping_add(RING);
        let start = (at % cap) as usize;
        let first = src.len().min(cap as usize - start);
        // SAFETY: `start + first <= capacity` and `src.len() - first <= capacity` (the caller's
        // `need <= capacity`), both inside the ring: `capacity` is this handle's own copy, checked
        // against the segment's size at open. The caller guarantees nobody reads these bytes now.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), ring.add(start), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), ring, src.len() - first);
        }
    }

    /// Copies ring bytes from position `at` (wrapping) into `dst`.
    ///
    /// # Safety
    /// The caller holds `get_lock` and the bytes are published (`at + dst.len() <= head`, read
    /// with acquire), so no writer touches them.
    unsafe fn read_at(&self, at: u64, dst: &mut [u8]) {
        let cap = self.capacity;
        debug_assert!(dst.len() as u64 <= cap);
        let ring = self.seg.payload().wrapping_add(RING);
        let start = (at % cap) as usize;
        let first = dst.len().min(cap as usize - start);
        // SAFETY: as in `write_at`, both ranges lie inside the ring; nobody writes them now.
        unsafe {
            std::ptr::copy_nonoverlapping(ring.add(start), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(ring, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }

    /// Appends `item`, blocking up to `timeout` (`None`: forever; zero: not at all) while the
    /// queue is full. Fails with `TooLarge` (at once) if the item could never fit.
    pub fn put(&self, item: &[u8], timeout: Option<Duration>) -> Result<(), QueueError> {
        self.check_size(item)?;
        let deadline = deadline(timeout);
        lock::lock(&self.state().producers.0.lock, timeout)?;
        self.put_locked(item, deadline)
    }

    /// Appends `item` only if that needs no waiting and no system call: `TimedOut` when another
    /// producer holds the lock or the queue is full (then call `put`).
    pub fn try_put(&self, item: &[u8]) -> Result<(), QueueError> {
        self.check_size(item)?;
        if !lock::try_lock_fast(&self.state().producers.0.lock) {
            return Err(QueueError::TimedOut);
        }
        self.put_locked(item, Some(std::time::Instant::now()))
    }

    fn check_size(&self, item: &[u8]) -> Result<(), QueueError> {
        if (LEN + item.len()) as u64 > self.capacity() || u32::try_from(item.len()).is_err() {
            return Err(QueueError::TooLarge);
        }
        Ok(())
    }

    /// `put` once `put_lock` is held; releases it.
    fn put_locked(&self, item: &[u8], deadline: super::Deadline) -> Result<(), QueueError> {
        let s = self.state();
        let (p, c) = (&s.producers.0, &s.consumers.0);
        let cap = self.capacity;
        let need = (LEN + item.len()) as u64;
        let max = u64::from(self.maxsize);
        let head = p.head.load(Ordering::Relaxed);
        let puts = p.puts.load(Ordering::Relaxed);
        let corrupt = || head.wrapping_sub(c.tail.load(Ordering::SeqCst)) > cap;
        let has_room = || {
            // `gets` first: a consumer stores it after `tail`, so the count is never too low.
            let gets = c.gets.load(Ordering::SeqCst);
            let used = head.wrapping_sub(c.tail.load(Ordering::SeqCst));
            used <= cap && cap - used >= need && (max == 0 || self.items(puts, gets, used) < max)
        };
        if corrupt() {
            let _ = lock::unlock(&p.lock);
            return Err(QueueError::Corrupt);
        }
        while !has_room() {
            let Ok(left) = remaining(deadline) else {
                let _ = lock::unlock(&p.lock);
                return Err(QueueError::TimedOut);
            };
            if spin_until(&has_room) {
                break;
            }
            sleepers::sleep(&c.rseq, &c.put_sleepers, has_room, left);
            if corrupt() {
                let _ = lock::unlock(&p.lock);
                return Err(QueueError::Corrupt);
            }
        }
        // SAFETY: we hold put_lock and `has_room` proved `need` free bytes from `head`.
        unsafe {
            self.write_at(head, &(item.len() as u32).to_le_bytes());
            self.write_at(head.wrapping_add(LEN as u64), item);
        }
        p.head.store(head.wrapping_add(need), Ordering::SeqCst);
        p.puts.store(puts.wrapping_add(1), Ordering::SeqCst);
        sleepers::wake_one(&p.wseq, &p.get_sleepers);
        let _ = lock::unlock(&p.lock);
        Ok(())
    }

    /// Removes the oldest item, blocking up to `timeout` (`None`: forever; zero: not at all)
    /// while the queue is empty; `into` receives its bytes (cleared first).
    pub fn get(&self, into: &mut Vec<u8>, timeout: Option<Duration>) -> Result<(), QueueError> {
        let deadline = deadline(timeout);
        lock::lock(&self.state().consumers.0.lock, timeout)?;
        self.get_locked(into, deadline)
    }

    /// Removes the oldest item only if that needs no waiting and no system call: `TimedOut`
    /// when another consumer holds the lock or the queue is empty (then call `get`).
    pub fn try_get(&self, into: &mut Vec<u8>) -> Result<(), QueueError> {
        if !lock::try_lock_fast(&self.state().consumers.0.lock) {
            return Err(QueueError::TimedOut);
        }
        self.get_locked(into, Some(std::time::Instant::now()))
    }

    /// `get` once `get_lock` is held; releases it.
    fn get_locked(&self, into: &mut Vec<u8>, deadline: super::Deadline) -> Result<(), QueueError> {
        let s = self.state();
        let (p, c) = (&s.producers.0, &s.consumers.0);
        let cap = self.capacity;
        let tail = c.tail.load(Ordering::Relaxed);
        let has_item = || p.head.load(Ordering::SeqCst) != tail;
        while !has_item() {
            let Ok(left) = remaining(deadline) else {
                let _ = lock::unlock(&c.lock);
                return Err(QueueError::TimedOut);
            };
            if spin_until(&has_item) {
                break;
            }
            sleepers::sleep(&p.wseq, &p.get_sleepers, has_item, left);
        }
        let used = p.head.load(Ordering::SeqCst).wrapping_sub(tail);
        let mut len = [0u8; LEN];
        let corrupt = used > cap || used < LEN as u64 || {
            // SAFETY: we hold get_lock and `used >= LEN` published bytes start at `tail`.
            unsafe { self.read_at(tail, &mut len) };
            u64::from(u32::from_le_bytes(len)) > used - LEN as u64
        };
        let gets = c.gets.load(Ordering::Relaxed);
        if corrupt {
            let _ = lock::unlock(&c.lock);
            return Err(QueueError::Corrupt);
        }
        let len = u32::from_le_bytes(len) as usize;
        into.clear();
        into.resize(len, 0);
        // SAFETY: as above; the record's `len` bytes are published (checked against `used`).
        unsafe { self.read_at(tail.wrapping_add(LEN as u64), into) };
        c.tail
            .store(tail.wrapping_add((LEN + len) as u64), Ordering::SeqCst);
        c.gets.store(gets.wrapping_add(1), Ordering::SeqCst);
        sleepers::wake_one(&c.rseq, &c.put_sleepers);
        let _ = lock::unlock(&c.lock);
        Ok(())
    }

    /// The segment holding the queue.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
}

/// Checks `ready` for a few microseconds (`SPIN_CHECKS` times), returning as soon as it holds.
/// A consumer that catches up with a busy producer (or the reverse) usually finds the next item
/// within that time; sleeping instead costs a futex wait here and a wake-up system call on the
/// other side for every item, which halved small-item throughput in `bench_shared.py`.
fn spin_until(ready: &impl Fn() -> bool) -> bool {
    for _ in 0..SPIN_CHECKS {
        std::hint::spin_loop();
        if ready() {
            return true;
        }
    }
    false
}

/// About 2-5 us of `spin_until` on current x86-64 (a pause is ~10-40 ns).
const SPIN_CHECKS: u32 = 200;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::lock::tests::{fork_child, reap, BOUND};
    use crate::shared::segment::reopen;
    use std::collections::HashSet;

    #[test]
    fn fifo_wraparound_and_limits() {
        let q = Queue::create(64, 3).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            q.get(&mut out, Some(Duration::ZERO)),
            Err(QueueError::TimedOut)
        );
        assert_eq!(q.put(&[0; 61], None), Err(QueueError::TooLarge));
        for round in 0..50u8 {
            // Items of 13 bytes + 4 wrap at varying offsets of the 64-byte ring.
            for i in 0..3u8 {
                q.put(&[round ^ i; 13], Some(Duration::ZERO)).unwrap();
            }
            assert!(q.is_full());
            assert_eq!(
                q.put(b"x", Some(Duration::from_millis(5))),
                Err(QueueError::TimedOut)
            );
            for i in 0..3u8 {
                q.get(&mut out, Some(Duration::ZERO)).unwrap();
                assert_eq!(out, vec![round ^ i; 13]);
            }
            assert!(q.is_empty());
        }
        // Byte-bounded: with no item limit, 60 bytes of records fill a 64-byte ring.
        let q = Queue::create(64, 0).unwrap();
        for _ in 0..3 {
            q.put(&[7; 16], Some(Duration::ZERO)).unwrap();
        }
        assert_eq!(
            q.put(&[7; 1], Some(Duration::ZERO)),
            Err(QueueError::TimedOut)
        );
        q.put(&[], Some(Duration::ZERO)).unwrap();
        assert_eq!(q.len(), 4);
        assert_eq!(q.try_get(&mut out), Ok(()));
        assert_eq!(q.try_put(&[1; 16]), Ok(()));
        assert_eq!(q.try_put(&[1; 16]), Err(QueueError::TimedOut));
    }

    /// Opens `q` again, as another process would.
    fn reopen_queue(q: &Queue) -> Queue {
        let seg = reopen(q.segment(), Kind::Queue).unwrap();
        let fd = seg.fd().try_clone_to_owned().unwrap();
        Queue::open(fd, q.segment().id()).unwrap()
    }

    #[test]
    fn a_capacity_overwritten_in_shared_memory_changes_no_open_handle() {
        let q = Queue::create(64, 0).unwrap();
        let other = reopen_queue(&q);
        // Another process claims a ring a thousand times larger than the segment.
        q.state().config.0.capacity.store(64_000, Ordering::Relaxed);
        assert_eq!(other.capacity(), 64);
        assert_eq!(other.put(&[1; 200], None), Err(QueueError::TooLarge));
        for i in 0..20u8 {
            other.put(&[i; 20], Some(BOUND)).unwrap();
            let mut out = Vec::new();
            q.get(&mut out, Some(BOUND)).unwrap();
            assert_eq!(out, [i; 20]);
        }
        assert!(
            Queue::open(
                q.segment().fd().try_clone_to_owned().unwrap(),
                q.segment().id()
            )
            .is_err(),
            "a new opener trusted the overwritten capacity"
        );
    }

    #[test]
    fn overwritten_indices_are_refused_not_followed() {
        let q = Queue::create(64, 0).unwrap();
        let (p, c) = (&q.state().producers.0, &q.state().consumers.0);
        let mut out = Vec::new();
        for (head, tail) in [(1 << 40, 0), (0, 1 << 40), (u64::MAX, 0), (3, 0)] {
            p.head.store(head, Ordering::SeqCst);
            c.tail.store(tail, Ordering::SeqCst);
            if head.wrapping_sub(tail) > 64 {
                assert_eq!(q.try_put(b"x"), Err(QueueError::Corrupt));
                assert_eq!(q.put(b"x", Some(Duration::ZERO)), Err(QueueError::Corrupt));
            }
            assert_eq!(q.get(&mut out, Some(BOUND)), Err(QueueError::Corrupt));
        }
        // A record whose length runs past what was written.
        p.head.store(8, Ordering::SeqCst);
        c.tail.store(0, Ordering::SeqCst);
        // SAFETY: the first 4 ring bytes; no other thread uses this queue.
        unsafe { q.write_at(0, &60u32.to_le_bytes()) };
        assert_eq!(q.get(&mut out, Some(BOUND)), Err(QueueError::Corrupt));
    }

    #[test]
    fn a_drifted_item_count_never_blocks_producers_of_an_empty_queue() {
        let q = Queue::create(256, 2).unwrap();
        let c = &q.state().consumers.0;
        // As if consumers had died between taking an item and counting it, many times over.
        c.gets.store(u64::MAX - 5, Ordering::SeqCst);
        assert_eq!(q.len(), 0);
        q.put(b"a", Some(BOUND)).unwrap();
        q.put(b"b", Some(BOUND)).unwrap();
        assert!(q.is_full());
        assert_eq!(q.put(b"c", Some(Duration::ZERO)), Err(QueueError::TimedOut));
        let mut out = Vec::new();
        q.get(&mut out, Some(BOUND)).unwrap();
        q.get(&mut out, Some(BOUND)).unwrap();
        assert!(q.is_empty());
        // And the other way: more items counted out than ever went in.
        q.state().producers.0.puts.store(1 << 50, Ordering::SeqCst);
        assert_eq!(q.len(), 0);
        q.put(b"d", Some(BOUND)).unwrap();
        assert_eq!(q.len(), 1);
        q.get(&mut out, Some(BOUND)).unwrap();
        assert_eq!(out, b"d");
    }

    #[test]
    fn processes_and_threads_lose_and_duplicate_nothing() {
        const PRODUCERS: u32 = 3;
        const CONSUMERS: u32 = 3;
        const PER: u32 = 5_000;
        let q = Queue::create(4096, 64).unwrap();
        let results = Queue::create(1 << 20, 0).unwrap();
        // Producers in child processes, consumers in child processes that report what they got.
        let mut children = Vec::new();
        for p in 0..PRODUCERS {
            let q = reopen_queue(&q);
            children.push(fork_child(move || {
                for i in 0..PER {
                    let item = (p * PER + i).to_le_bytes();
                    // Vary the size so records wrap at every offset.
                    let len = 4 + (i % 9) as usize;
                    let mut rec = item.to_vec();
                    rec.resize(len, 0xAB);
                    if q.put(&rec, Some(BOUND)).is_err() {
                        return 1;
                    }
                }
                0
            }));
        }
        for _ in 0..CONSUMERS {
            children.push(fork_child(|| {
                let mut got = Vec::new();
                let mut item = Vec::new();
                loop {
                    if q.get(&mut item, Some(BOUND)).is_err() {
                        return 1;
                    }
                    if item.is_empty() {
                        break; // the end marker
                    }
                    got.extend_from_slice(&item[..4]);
                }
                for chunk in got.chunks(4000) {
                    if results.put(chunk, Some(BOUND)).is_err() {
                        return 2;
                    }
                }
                0
            }));
        }
        for c in children.drain(..PRODUCERS as usize).collect::<Vec<_>>() {
            assert_eq!(reap(c), 0);
        }
        for _ in 0..CONSUMERS {
            q.put(&[], Some(BOUND)).unwrap();
        }
        for c in children {
            assert_eq!(reap(c), 0);
        }
        let mut seen = HashSet::new();
        let mut chunk = Vec::new();
        while results.get(&mut chunk, Some(Duration::ZERO)).is_ok() {
            for n in chunk.chunks(4) {
                let n = u32::from_le_bytes(n.try_into().unwrap());
                assert!(seen.insert(n), "item {n} received twice");
            }
        }
        assert_eq!(seen.len(), (PRODUCERS * PER) as usize, "items lost");
        assert!(q.is_empty());
    }
}
