//! Helpers shared by the fuzz targets: descriptor accounting and pipes whose write ends are
//! the descriptors sent, so that a leaked one shows up as a pipe that never reaches end of file.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Returns the number of descriptors open in this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd is readable")
        .count()
}

/// Returns the inode of `fd`: the same for both ends of a pipe, so it tells which pipe a
/// received write end belongs to.
pub fn inode(fd: BorrowedFd<'_>) -> u64 {
    nix::sys::stat::fstat(fd)
        .expect("fstat of an open descriptor")
        .st_ino
}

/// A pipe whose write end is to be sent away; the read end stays here to check that every
/// copy of the write end was closed in the end.
pub struct Probe {
    pub read: OwnedFd,
    pub write: Option<OwnedFd>,
    pub ino: u64,
}

impl Probe {
    pub fn new() -> Probe {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .expect("pipe2");
        let ino = inode(read.as_fd());
        Probe {
            read,
            write: Some(write),
            ino,
        }
    }

    /// Returns true when no write end of the pipe is open anywhere in this process: a read
    /// gives end of file, not `EAGAIN`.
    pub fn all_writers_closed(&self) -> bool {
        let mut b = [0u8; 1];
        matches!(nix::unistd::read(&self.read, &mut b), Ok(0))
    }
}

impl Default for Probe {
    fn default() -> Self {
        Probe::new()
    }
}
