//! The robust mutex: a futex word that holds its owner's pid, so that a process that dies while
//! holding the lock does not deadlock the others (robust-mutex semantics without pthread's).
//!
//! Word states (`WAITERS` is bit 31, pids fit in 22 bits):
//! - `0`: free;
//! - `pid`: held by process `pid`, nobody sleeps on the word;
//! - `pid | WAITERS`: held, and someone may sleep on the word.
//!
//! The protocol is Drepper's "mutex 3" ("Futexes Are Tricky", 2011) with the owner's pid in
//! place of the constant 1: lock by CAS `0 -> pid`; a waiter sets `WAITERS` and sleeps while the
//! word is unchanged; unlock swaps in `0` and wakes one sleeper if `WAITERS` was set. A woken
//! waiter locks with `pid | WAITERS`, since other sleepers may remain. No wake-up is lost because
//! the kernel only lets a waiter sleep if the word still has the value it saw.
//!
//! Robustness: a waiter sleeps in slices of at most `LIVENESS_SLICE`; when a slice (or the whole
//! timeout) runs out it asks whether the owner process is still alive (`ident::is_alive`, through
//! a pidfd, which also sees unreaped zombies). If not, it takes the lock over by CAS and reports
//! `Acquired::OwnerDied`, the equivalent of `EOWNERDEAD`. Why not glibc's robust pthread
//! mutexes: their recovery runs in the kernel at thread exit, which needs the mutex on the dying
//! thread's robust list, so it breaks if the list is corrupted and it makes the lock per thread,
//! whereas `threading.Lock` may be released by any thread. Owning by process is what a pool of
//! worker processes needs: a worker that crashes is a process that dies. The costs: a thread that
//! exits holding the lock in a live process is not detected (as with `threading.Lock`), a waiter
//! learns of a death only at the next slice, and a dead owner's pid reused by a new process
//! before any waiter looks (pids wrap after `pid_max`, 4 million by default) keeps the lock held.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::segment::{Kind, Segment};
use super::{deadline, futex, ident, remaining, TimedOut};

/// Bit 31 of the word: a waiter may be sleeping on it.
pub(crate) const WAITERS: u32 = 1 << 31;
const PID_MASK: u32 = !WAITERS;

/// How long a blocked waiter sleeps before it checks whether the owner is still alive.
pub const LIVENESS_SLICE: Duration = Duration::from_millis(100);

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// From a live owner's release, or free.
    Clean,
    /// Taken over from process `pid`, which died holding it: what it protected may be
    /// half-updated.
    OwnerDied(u32),
}

/// The error of `release` on a lock that is not held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotLocked;

/// Locks `word` if it is free, without blocking and without system calls.
pub(crate) fn try_lock_fast(word: &AtomicU32) -> bool {
    word.compare_exchange(0, ident::pid(), Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// Takes `word` over if its owner is dead; `None` if the owner lives or the word changed.
fn take_over_if_dead(word: &AtomicU32) -> Option<Acquired> {
    let cur = word.load(Ordering::Relaxed);
    let owner = cur & PID_MASK;
    if owner == 0 || ident::is_alive(owner) {
        return None;
    }
    // Keep WAITERS set: others may sleep on the word and must be woken by our unlock.
    word.compare_exchange(
        cur,
        ident::pid() | WAITERS,
        Ordering::Acquire,
        Ordering::Relaxed,
    )
    .ok()
    .map(|_| Acquired::OwnerDied(owner))
}

/// Locks `word`, blocking up to `timeout` (`None`: forever; zero: do not block). A held lock
/// whose owner is dead is taken over (`Acquired::OwnerDied`), also when not blocking.
pub(crate) fn lock(word: &AtomicU32, timeout: Option<Duration>) -> Result<Acquired, TimedOut> {
    if try_lock_fast(word) {
        return Ok(Acquired::Clean);
    }
    let me = ident::pid();
    let deadline = deadline(timeout);
    loop {
        let cur = word.load(Ordering::Relaxed);
        if cur == 0 {
            if word
                .compare_exchange(0, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(Acquired::Clean);
            }
            continue;
        }
        let Ok(left) = remaining(deadline) else {
            return take_over_if_dead(word).ok_or(TimedOut);
        };
        if cur & WAITERS == 0
            && word
                .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            continue;
        }
        let slice = left.map_or(LIVENESS_SLICE, |l| l.min(LIVENESS_SLICE));
        if !futex::wait(word, cur | WAITERS, Some(slice)) {
            if let Some(acquired) = take_over_if_dead(word) {
                return Ok(acquired);
            }
        }
    }
}

/// Unlocks `word` and wakes one sleeper if there may be one. Any thread of any process may
/// unlock (as with `threading.Lock`); fails if the lock is not held.
pub(crate) fn unlock(word: &AtomicU32) -> Result<(), NotLocked> {
    let prev = word.swap(0, Ordering::Release);
    if prev == 0 {
        return Err(NotLocked);
    }
    if prev & WAITERS != 0 {
        futex::wake(word, 1);
    }
    Ok(())
}

/// Returns the pid of the process holding `word`, or `None` when free.
pub(crate) fn owner(word: &AtomicU32) -> Option<u32> {
    match word.load(Ordering::Relaxed) & PID_MASK {
        0 => None,
        pid => Some(pid),
    }
}

#[repr(C)]
struct State {
    word: AtomicU32,
}

/// A robust, non-recursive lock in its own segment (`threading.Lock` across processes).
#[derive(Debug)]
pub struct Lock {
    seg: Segment,
}

impl Lock {
    /// Creates an unlocked lock in a new segment.
    pub fn create() -> std::io::Result<Lock> {
        Ok(Lock {
            seg: Segment::create(c"ferropool-lock", Kind::Lock, std::mem::size_of::<State>())?,
        })
    }

    /// Maps an existing lock's segment (see `Segment::open`).
    pub fn open(fd: std::os::fd::OwnedFd, id: u64) -> std::io::Result<Lock> {
        Ok(Lock {
            seg: Segment::open(fd, Kind::Lock, id, std::mem::size_of::<State>())?,
        })
    }

    fn word(&self) -> &AtomicU32 {
        // SAFETY: the segment was created or checked as a Kind::Lock, whose payload is a `State`
        // (one atomic).
        unsafe { &self.seg.state::<State>().word }
    }

    /// Acquires the lock, blocking up to `timeout`; see `lock` for dead owners.
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<Acquired, TimedOut> {
        lock(self.word(), timeout)
    }

    /// Acquires the lock if it is free, without blocking or system calls (no dead-owner check).
    pub fn try_acquire_fast(&self) -> bool {
        try_lock_fast(self.word())
    }

    /// Releases the lock; fails if it is not held.
    pub fn release(&self) -> Result<(), NotLocked> {
        unlock(self.word())
    }

    /// Returns whether some process holds the lock.
    pub fn is_locked(&self) -> bool {
        owner(self.word()).is_some()
    }

    /// The segment holding the lock.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::shared::segment::reopen;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    pub(crate) const BOUND: Duration = Duration::from_secs(10);

    /// Forks; the child runs `f` and exits with its return value without unwinding into the test
    /// harness. Returns the child's pid.
    pub(crate) fn fork_child(f: impl FnOnce() -> i32) -> libc::pid_t {
        // SAFETY: the child only runs `f` (atomics, futexes and syscalls on memory it inherited)
        // and then `_exit`s, never returning into the multithreaded test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        pid
    }

    /// Waits for child `pid` and returns its exit code (panics if it was killed).
    pub(crate) fn reap(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child ended by a signal: {status}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn acquire_release_and_errors() {
        let l = Lock::create().unwrap();
        assert!(!l.is_locked());
        assert_eq!(l.acquire(None), Ok(Acquired::Clean));
        assert!(l.is_locked());
        assert_eq!(l.acquire(Some(Duration::ZERO)), Err(TimedOut));
        assert_eq!(l.acquire(Some(Duration::from_millis(20))), Err(TimedOut));
        assert_eq!(l.release(), Ok(()));
        assert_eq!(l.release(), Err(NotLocked));
        assert!(l.try_acquire_fast());
        assert!(!l.try_acquire_fast());
        l.release().unwrap();
    }

    #[test]
    fn threads_keep_a_plain_counter_exact() {
        const THREADS: u64 = 4;
        const N: u64 = 20_000;
        let l = Arc::new(Lock::create().unwrap());
        let counter = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (l, counter) = (Arc::clone(&l), Arc::clone(&counter));
                std::thread::spawn(move || {
                    for _ in 0..N {
                        l.acquire(Some(BOUND)).unwrap();
                        // A non-atomic read-modify-write: only the lock keeps it exact.
                        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                        l.release().unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed), THREADS * N);
    }

    #[test]
    fn processes_keep_a_plain_counter_exact() {
        const N: u64 = 20_000;
        let l = Lock::create().unwrap();
        let data = Segment::create(c"ferropool-test", Kind::Value, 8).unwrap();
        // SAFETY: one AtomicU64 in an 8-byte payload.
        let counter = unsafe { data.state::<AtomicU64>() };
        let work = || {
            for _ in 0..N {
                l.acquire(Some(BOUND)).unwrap();
                counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                l.release().unwrap();
            }
        };
        let children: Vec<_> = (0..2)
            .map(|_| {
                fork_child(|| {
                    work();
                    0
                })
            })
            .collect();
        work();
        for c in children {
            assert_eq!(reap(c), 0);
        }
        assert_eq!(counter.load(Ordering::Relaxed), 3 * N);
    }

    #[test]
    fn a_dead_owners_lock_is_taken_over_and_reported() {
        let l = Lock::create().unwrap();
        let child = fork_child(|| match l.acquire(Some(BOUND)) {
            Ok(Acquired::Clean) => 0,
            _ => 1,
        });
        // Wait for the child's exit without reaping it: a zombie owner must count as dead.
        // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with WNOWAIT only fills `info`; the child is ours.
        let waited = unsafe {
            libc::waitid(
                libc::P_PID,
                child as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(waited, 0);
        let other = reopen(l.segment(), Kind::Lock).unwrap();
        let other = Lock { seg: other };
        assert_eq!(
            other.acquire(Some(BOUND)),
            Ok(Acquired::OwnerDied(child as u32))
        );
        assert_eq!(reap(child), 0);
        other.release().unwrap();
        assert_eq!(l.acquire(Some(Duration::ZERO)), Ok(Acquired::Clean));
        l.release().unwrap();
    }

    #[test]
    fn a_non_blocking_acquire_also_takes_over() {
        let l = Lock::create().unwrap();
        let child = fork_child(|| i32::from(l.acquire(None).is_err()));
        assert_eq!(reap(child), 0);
        assert_eq!(
            l.acquire(Some(Duration::ZERO)),
            Ok(Acquired::OwnerDied(child as u32))
        );
    }
}
