//! Wait and wake on a 32-bit word of shared memory: the Linux futex, without `FUTEX_PRIVATE_FLAG`
//! so that waiters in different processes meet on the same word of a `MAP_SHARED` mapping.
//!
//! `wait` sleeps only while the word still holds `expected` (the kernel checks it atomically with
//! queueing the waiter), which is what makes "check, then sleep" free of lost wake-ups: a waker
//! changes the word before it calls `wake`. Every return from `wait` may be spurious; callers
//! re-check their condition in a loop.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `word == expected`, for at most `timeout` (`None`: no limit). Returns `false`
/// when the timeout passed, `true` on any other return (woken, value changed, signal).
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> bool {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 4-byte atomic for the duration of the call; FUTEX_WAIT
    // only reads it. `ts_ptr` is null or points to `ts`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            0usize,
            0u32,
        )
    };
    !(rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT))
}

/// Wakes up to `n` waiters sleeping on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: `word` is a live, aligned 4-byte atomic; FUTEX_WAKE does not touch its memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            0usize,
            0usize,
            0u32,
        )
    };
    rc.max(0) as usize
}

/// Wakes every waiter sleeping on `word`.
pub fn wake_all(word: &AtomicU32) -> usize {
    wake(word, i32::MAX as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn wait_returns_at_once_when_the_word_differs() {
        let w = AtomicU32::new(1);
        assert!(wait(&w, 0, Some(Duration::from_secs(10))));
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(0);
        let start = Instant::now();
        assert!(!wait(&w, 0, Some(Duration::from_millis(20))));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn wake_releases_a_waiter() {
        let w = Arc::new(AtomicU32::new(0));
        let t = {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while w.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
                    wait(&w, 0, Some(Duration::from_secs(1)));
                }
                w.load(Ordering::Acquire)
            })
        };
        w.store(1, Ordering::Release);
        wake_all(&w);
        assert_eq!(t.join().unwrap(), 1);
    }
}
