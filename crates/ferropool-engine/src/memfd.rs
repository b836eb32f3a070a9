//! Anonymous memory files (`memfd_create(2)`) and their mappings: every system call the engine
//! makes on shared memory, each behind a safe function, so that the modules built on them
//! (`buffer`, `shared::segment`, `shared::spill`) hold only their protocols.
//!
//! A memory file has no name in any filesystem: its memory is freed once the last descriptor is
//! closed and the last mapping is gone, so a crashed or killed process leaves nothing behind
//! (nothing under `/dev/shm` or `/tmp`). Another process reaches it through a descriptor of the
//! same file, passed over a unix socket or opened via `/proc/<pid>/fd/<n>`.
//!
//! Files are created sealable, and every user seals what it can (`seal`): a segment of fixed
//! size can neither shrink nor grow, a spill file or a buffer's file that only grows cannot
//! shrink. Without the shrink seal any holder of a descriptor could `ftruncate` the file and
//! every other process that maps it would die of `SIGBUS` on its next access past the new end;
//! an opener checks the seals (`seals`) before it trusts a size it reads with `fstat`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::OnceLock;

/// The system page size: the granularity of mappings and of their offsets in a file.
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(page).unwrap_or(4096).max(4096)
    })
}

/// Creates an empty, sealable memory file (close-on-exec) named `name` in `/proc/*/fd` and
/// `/proc/*/maps` listings. Fails with the errno of `memfd_create`.
pub fn create(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: the name is a valid NUL-terminated string; memfd_create returns a new descriptor
    // or -1.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The file cannot be made shorter.
pub const SEAL_SHRINK: i32 = libc::F_SEAL_SHRINK;
/// The file cannot be made longer (by `ftruncate` or by writing past its end).
pub const SEAL_GROW: i32 = libc::F_SEAL_GROW;
/// The seals cannot change any more.
pub const SEAL_SEAL: i32 = libc::F_SEAL_SEAL;

/// Adds `seals` (`SEAL_*`) to memory file `fd` (`fcntl(F_ADD_SEALS)`); a seal can never be
/// removed. Fails with `EPERM` once `SEAL_SEAL` is set, `EBUSY` for a write seal on a file
/// mapped writable.
pub fn seal(fd: BorrowedFd<'_>, seals: i32) -> io::Result<()> {
    // SAFETY: plain fcntl on a descriptor the caller holds open.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Returns the seals of file `fd` (`fcntl(F_GET_SEALS)`; `EINVAL` for a file that is not a
/// memory file).
pub fn seals(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: plain fcntl on a descriptor the caller holds open; it only reads.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(seals)
}

/// Fails with `InvalidData` unless file `fd` carries every seal in `wanted`: the check an
/// opener makes before it maps a length it read with `fstat`.
pub fn require_seals(fd: BorrowedFd<'_>, wanted: i32) -> io::Result<()> {
    let have = seals(fd).unwrap_or(0);
    if have & wanted != wanted {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the shared memory file is not sealed against shrinking (not made by this ferropool?)",
        ));
    }
    Ok(())
}

/// Sets the size of file `fd` to `len` bytes (`ftruncate(2)`): new bytes read as zero.
pub fn resize(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "memory file too large"))?;
    // SAFETY: plain syscall on a descriptor the caller holds open (it is borrowed).
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes all of `data` into file `fd` at `offset` (`pwrite(2)`, retried when interrupted or
/// short). The kernel copies straight into the file's pages, without page faults in this
/// process. Fails with `ENOSPC` or `ENOMEM` when shared memory runs out.
pub fn write_at(fd: BorrowedFd<'_>, data: &[u8], offset: usize) -> io::Result<()> {
    let mut done = 0usize;
    while done < data.len() {
        let rest = &data[done..];
        let at = libc::off_t::try_from(offset + done)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: `rest` is a live slice of `rest.len()` readable bytes; pwrite only reads it.
        let n = unsafe { libc::pwrite(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len(), at) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes of file `fd` at `offset` (`pread(2)`); `UnexpectedEof` when
/// the file ends first. Never faults: a file shorter than expected is an error, not a `SIGBUS`.
pub fn read_at(fd: BorrowedFd<'_>, buf: &mut [u8], offset: usize) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = libc::off_t::try_from(offset + done)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a live, writable slice of `rest.len()` bytes; pread writes only into it.
        let n = unsafe { libc::pread(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), at) };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            n => done += n as usize,
        }
    }
    Ok(())
}

/// Frees the pages of `len` bytes of file `fd` from `offset`, keeping its size
/// (`fallocate(2)` with `FALLOC_FL_PUNCH_HOLE`); the range then reads as zeroes. Best effort:
/// a failure only leaves the memory in use.
pub fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: usize) {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on a descriptor the caller holds open; punching a hole changes no
    // mapping's validity (a mapped punched page reads as zeroes).
    unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
}

/// `fstat(2)` of `fd`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat`; fstat writes only into it.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Takes ownership of descriptor `fd` after checking that it is open (`EBADF` otherwise).
///
/// # Safety
/// The caller must own `fd`: nothing else may use or close it afterwards.
pub unsafe fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `fd` is open (checked) and the caller passes its ownership.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How a mapping sees its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Writes go to the file: every shared mapping of it, in any process, sees them.
    Shared,
    /// As `Shared`, with every page mapped now, in one call (`MAP_POPULATE`), rather than by
    /// a page fault per page as it is touched.
    SharedPopulated,
    /// Copy-on-write: writes stay in this mapping; the file and other mappings never see them.
    Private,
}

/// One read-write `mmap(2)` of part of a file; unmapped on drop. It hands out only a raw
/// pointer: every access through it is the user's to prove safe.
pub struct Map {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Map is memory owned by this value, tied to no thread; it hands out only a raw
// pointer, whose every use is `unsafe` and justified where it is made.
unsafe impl Send for Map {}
// SAFETY: as above; `&Map` only hands out the pointer and the length.
unsafe impl Sync for Map {}

impl Map {
    /// Maps `len` (> 0) bytes of file `fd` from `offset` (a multiple of the page size). Fails
    /// with the errno of `mmap` (`EINVAL` for a zero length or an unaligned offset).
    pub fn new(fd: BorrowedFd<'_>, len: usize, offset: usize, share: Share) -> io::Result<Map> {
        let flags = match share {
            Share::Shared => libc::MAP_SHARED,
            Share::SharedPopulated => libc::MAP_SHARED | libc::MAP_POPULATE,
            Share::Private => libc::MAP_PRIVATE,
        };
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: a fresh mapping at an address the kernel chooses (addr NULL), so it aliases
        // no Rust object; the descriptor is open (borrowed).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Map { ptr, len })
    }

    /// The first mapped byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping is at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether every page of this (private) mapping still shows its file: none was written. A
    /// page of a private file mapping that was written is an anonymous copy; `/proc/self/pagemap`
    /// tells them apart (per page: bit 63 present, 62 swapped, 61 "file page or shared
    /// anonymous"; readable without privileges, which only hides the frame numbers). A page
    /// never touched is not present and shows the file when it is. False when pagemap cannot be
    /// read.
    pub fn shows_only_its_file(&self) -> bool {
        const PRESENT: u64 = 1 << 63;
        const SWAPPED: u64 = 1 << 62;
        const FILE: u64 = 1 << 61;
        let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else {
            return false;
        };
        let page = page_size();
        let first = self.ptr.as_ptr() as usize / page;
        let pages = self.len.div_ceil(page);
        let mut entries = vec![0u8; 8 * pages.min(8192)];
        let mut done = 0;
        while done < pages {
            let n = (pages - done).min(8192);
            let buf = &mut entries[..8 * n];
            if read_at(pagemap.as_fd(), buf, 8 * (first + done)).is_err() {
                return false;
            }
            let written = buf.chunks_exact(8).any(|e| {
                let e = u64::from_le_bytes(e.try_into().expect("8 bytes"));
                e & SWAPPED != 0 || (e & PRESENT != 0 && e & FILE == 0)
            });
            if written {
                return false;
            }
            done += n;
        }
        true
    }

    /// Maps every page of the `len` bytes at `offset` into the mapping now, in one call, instead
    /// of by a fault per page (`MADV_POPULATE_READ`; read faults map pages in runs, so this
    /// beats [`Map::populate_write`] on pages that exist). A page of the file that does not exist
    /// yet is allocated; one that cannot be is an error (see [`Map::populate_write`]).
    pub fn populate(&self, offset: usize, len: usize) -> io::Result<()> {
        self.populate_with(offset, len, libc::MADV_POPULATE_READ)
    }

    /// Allocates every page of the `len` bytes at `offset` (page-aligned) in the file and maps it
    /// writable now (`MADV_POPULATE_WRITE`), so that a later `memcpy` there takes no faults.
    /// Unlike touching the pages, a page the kernel cannot provide is an error here (`ENOMEM`,
    /// `EFAULT`), not a `SIGBUS`; before Linux 5.14 it fails with `EINVAL`.
    pub fn populate_write(&self, offset: usize, len: usize) -> io::Result<()> {
        self.populate_with(offset, len, libc::MADV_POPULATE_WRITE)
    }

    fn populate_with(&self, offset: usize, len: usize, advice: libc::c_int) -> io::Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the mapping",
            ));
        }
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the range is inside this mapping (checked above); the advice (one of the two
        // populate advices) changes no data: it allocates the file's missing pages, zeroed, and
        // maps them.
        let rc = unsafe { libc::madvise(self.ptr.as_ptr().add(offset).cast(), len, advice) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: exactly the range mmap returned, unmapped once; no reference into it outlives
        // `self`, because a Map hands out only raw pointers and their users keep the Map alive
        // while they use them.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl std::fmt::Debug for Map {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_tells_a_written_page_of_a_private_mapping_from_the_files_own() {
        let page = page_size();
        let fd = create(c"test-pagemap").unwrap();
        resize(fd.as_fd(), 5 * page).unwrap();
        write_at(fd.as_fd(), &vec![3u8; 5 * page], 0).unwrap();
        let m = Map::new(fd.as_fd(), 5 * page, 0, Share::Private).unwrap();
        assert!(m.shows_only_its_file(), "untouched");
        for i in (0..5 * page).step_by(page) {
            // SAFETY: inside the mapping; nothing writes it meanwhile.
            assert_eq!(unsafe { m.as_ptr().add(i).read_volatile() }, 3);
        }
        assert!(m.shows_only_its_file(), "every page read");
        // SAFETY: inside the mapping, which nothing else accesses.
        unsafe { m.as_ptr().add(2 * page + 7).write_volatile(4) };
        assert!(!m.shows_only_its_file(), "a page was written");
    }

    #[test]
    fn a_memory_file_maps_shared_and_private() {
        let fd = create(c"ferropool-test").unwrap();
        let page = page_size();
        resize(fd.as_fd(), 2 * page).unwrap();
        write_at(fd.as_fd(), b"hello", page).unwrap();
        assert_eq!(fstat(fd.as_fd()).unwrap().st_size as usize, 2 * page);
        let shared = Map::new(fd.as_fd(), page, page, Share::Shared).unwrap();
        let private = Map::new(fd.as_fd(), page, page, Share::Private).unwrap();
        shared.populate(0, page).unwrap();
        // SAFETY: both mappings are `page` bytes long and only this thread touches them.
        unsafe {
            assert_eq!(std::slice::from_raw_parts(shared.as_ptr(), 5), b"hello");
            *shared.as_ptr().add(1) = b'a';
            assert_eq!(
                *private.as_ptr().add(1),
                b'a',
                "a shared write missed the file"
            );
            // The first private write copies the page: from then on the mappings differ.
            *private.as_ptr() = b'j';
            assert_eq!(*shared.as_ptr(), b'h', "a private write reached the file");
        }
    }

    #[test]
    fn a_punched_hole_reads_as_zeroes_and_frees_its_pages() {
        let fd = create(c"ferropool-test").unwrap();
        let page = page_size();
        write_at(fd.as_fd(), &vec![7u8; 4 * page], 0).unwrap();
        let blocks = |fd: &OwnedFd| fstat(fd.as_fd()).unwrap().st_blocks;
        let before = blocks(&fd);
        punch_hole(fd.as_fd(), page as u64, 2 * page);
        assert!(blocks(&fd) < before, "no page was freed");
        let map = Map::new(fd.as_fd(), 4 * page, 0, Share::Shared).unwrap();
        // SAFETY: the mapping is 4 pages long and only this thread touches it.
        let bytes = unsafe { std::slice::from_raw_parts(map.as_ptr(), 4 * page) };
        assert!(bytes[..page].iter().all(|&b| b == 7));
        assert!(bytes[page..3 * page].iter().all(|&b| b == 0));
        assert!(bytes[3 * page..].iter().all(|&b| b == 7));
    }

    #[test]
    fn a_sealed_file_cannot_shrink_under_its_mappers() {
        let fd = create(c"ferropool-test").unwrap();
        let page = page_size();
        resize(fd.as_fd(), 2 * page).unwrap();
        assert!(require_seals(fd.as_fd(), SEAL_SHRINK).is_err());
        seal(fd.as_fd(), SEAL_SHRINK).unwrap();
        require_seals(fd.as_fd(), SEAL_SHRINK).unwrap();
        let err = resize(fd.as_fd(), page).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        resize(fd.as_fd(), 3 * page).unwrap();
        seal(fd.as_fd(), SEAL_GROW | SEAL_SEAL).unwrap();
        assert_eq!(
            resize(fd.as_fd(), 4 * page).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        assert!(seal(fd.as_fd(), 0).is_err(), "the seals are sealed");
    }

    #[test]
    fn adopting_a_descriptor_that_is_not_open_fails() {
        // Numbers no descriptor can have: a closed one could be reused meanwhile by a test
        // running in another thread, which this would then close.
        for raw in [-1, i32::MAX] {
            // SAFETY: no descriptor has this number, so nothing is taken over.
            let err = unsafe { adopt_fd(raw) }.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        }
    }
}
