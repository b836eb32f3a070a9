//! Who the caller is (process and thread ids, cached per thread and reset by fork) and whether
//! another process is still alive: what the robust lock needs to name and judge an owner.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// Bumped in the child after every `fork`, so that cached ids from before the fork are dropped.
static FORK_GENERATION: AtomicU32 = AtomicU32::new(0);
static ATFORK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

thread_local! {
    /// `(fork generation + 1, pid, tid)`; a zero first field means not yet read.
    static IDS: Cell<(u32, u32, u32)> = const { Cell::new((0, 0, 0)) };
}

fn ids() -> (u32, u32) {
    ATFORK.call_once(|| {
        // SAFETY: registers a plain function that only touches an atomic; it stays valid for the
        // life of the process (a static function in this library, which is never unloaded while
        // a shared object exists).
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    let generation = FORK_GENERATION.load(Ordering::Relaxed).wrapping_add(1);
    IDS.with(|cell| {
        let (g, pid, tid) = cell.get();
        if g == generation && g != 0 {
            return (pid, tid);
        }
        // SAFETY: getpid and gettid have no preconditions and cannot fail.
        let (pid, tid) = unsafe {
            (
                libc::getpid() as u32,
                libc::syscall(libc::SYS_gettid) as u32,
            )
        };
        cell.set((generation, pid, tid));
        (pid, tid)
    })
}

/// Returns this process's id, without a system call after the first use in a thread.
pub fn pid() -> u32 {
    ids().0
}

/// Returns this thread's id (unique among the live threads of the pid namespace).
pub fn tid() -> u32 {
    ids().1
}

/// Returns whether process `pid` is alive: it exists and has not exited (a zombie that waits to
/// be reaped counts as dead). Asks through a pidfd, which sees zombies; falls back to `kill(pid,
/// 0)` on kernels without `pidfd_open` (before 5.3), where an unreaped zombie still looks alive.
pub fn is_alive(pid: u32) -> bool {
    if pid == self::pid() {
        return true;
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    if fd < 0 {
        let err = std::io::Error::last_os_error().raw_os_error();
        if err == Some(libc::ESRCH) {
            return false;
        }
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let rc = unsafe { libc::kill(pid, 0) };
        return rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd; a zero timeout never blocks. A pidfd polls readable once
    // its process has exited. `fd` is ours and closed exactly once.
    let exited = unsafe {
        let n = libc::poll(&mut pfd, 1, 0);
        libc::close(fd);
        n > 0 && pfd.revents & libc::POLLIN != 0
    };
    !exited
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_kernels() {
        assert_eq!(pid(), std::process::id());
        // SAFETY: gettid has no preconditions.
        assert_eq!(tid(), unsafe { libc::syscall(libc::SYS_gettid) } as u32);
        let other = std::thread::spawn(tid).join().unwrap();
        assert_ne!(other, tid());
    }

    #[test]
    fn a_reaped_or_unreaped_dead_child_is_dead_and_we_are_alive() {
        assert!(is_alive(pid()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let child_pid = child.id();
        // Wait for the exit without reaping, so the child is a zombie.
        // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with WNOWAIT only fills `info`; the child is ours.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                child_pid,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(rc, 0);
        assert!(!is_alive(child_pid), "an unreaped zombie counts as dead");
        child.wait().unwrap();
        assert!(!is_alive(child_pid));
    }
}
