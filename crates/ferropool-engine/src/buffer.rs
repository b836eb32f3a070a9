//! Out-of-band buffers: the large byte ranges of a task's arguments and results, each carried in
//! an anonymous memory file (`memfd_create`) whose descriptor rides along with its frame
//! (`SCM_RIGHTS`). See `docs/shared-memory.md`, "Buffers".
//!
//! The sender writes the bytes into a new memory file with `pwrite` (the kernel copies straight
//! into page-cache pages, so the sender takes no page faults) and keeps the descriptor until the
//! task is done, in case it must be re-sent. The receiver maps the whole file and gets a
//! `Mapping`; the descriptor is closed at once, so the memory lives exactly as long as mappings of
//! it do. Nothing has a name in any filesystem: a crash or a killed process leaves nothing behind.
//!
//! Arguments may go to several workers from one memory file: `BufferCache` finds the file
//! already written for the same memory (same address and length) while a task still holds it,
//! and reuses it if its bytes are still equal (so a buffer changed in between is written anew).
//! Workers therefore map arguments private: their writes are copy-on-write and stay in that
//! worker. A result has one receiver, so the parent maps it shared: writing to it copies nothing.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// A memory file written once with a buffer's bytes, as the sender holds it.
pub struct MemFile {
    fd: OwnedFd,
    len: usize,
    /// A view of the file, made the first time its bytes are compared.
    view: OnceLock<io::Result<Mapping>>,
}

impl MemFile {
    /// Writes `data` into a new memory file.
    pub fn write(data: &[u8]) -> io::Result<MemFile> {
        Ok(MemFile { fd: memfd_with(data)?, len: data.len(), view: OnceLock::new() })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the file holds exactly `data`.
    fn holds(&self, data: &[u8]) -> bool {
        if data.len() != self.len {
            return false;
        }
        match self.view.get_or_init(|| Mapping::new(self.fd.as_fd(), true)) {
            // SAFETY: nobody writes a sender's memory file: receivers map it private.
            Ok(view) => (unsafe { view.bytes() }) == data,
            Err(_) => false,
        }
    }
}

/// Memory files of buffers still held by some task, by the address and length of the memory
/// they were written from (see the module docs). Entries die with the last task holding them.
#[derive(Default)]
pub struct BufferCache {
    entries: Mutex<Vec<(usize, usize, Weak<MemFile>)>>,
}

impl BufferCache {
    pub const fn new() -> BufferCache {
        BufferCache { entries: Mutex::new(Vec::new()) }
    }

    /// Returns a memory file holding `data`: one still held by a task if it was written from the
    /// same memory and its bytes are unchanged, else a new one.
    pub fn get_or_write(&self, data: &[u8]) -> io::Result<Arc<MemFile>> {
        let key = (data.as_ptr() as usize, data.len());
        let candidate = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.retain(|(_, _, weak)| weak.strong_count() > 0);
            entries.iter().find(|(p, l, _)| (*p, *l) == key).and_then(|(_, _, weak)| weak.upgrade())
        };
        if let Some(file) = candidate {
            if file.holds(data) {
                return Ok(file);
            }
        }
        let file = Arc::new(MemFile::write(data)?);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(p, l, weak)| weak.strong_count() > 0 && (*p, *l) != key);
        entries.push((key.0, key.1, Arc::downgrade(&file)));
        Ok(file)
    }
}

/// Creates an anonymous memory file holding `data`.
pub fn memfd_with(data: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: the name is a valid NUL-terminated string; memfd_create returns a new descriptor
    // or -1.
    let raw = unsafe { libc::memfd_create(c"ferropool-buffer".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut done = 0usize;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: `rest` is a live slice of `rest.len()` readable bytes; pwrite only reads it.
        let n = unsafe { libc::pwrite(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len(), done as libc::off_t) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err); // ENOSPC/ENOMEM: out of memory for shared pages
        }
        done += n as usize;
    }
    Ok(fd)
}

/// Returns the size in bytes of the file behind `fd`.
pub fn file_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat`; fstat writes only into it.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    usize::try_from(st.st_size).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative file size"))
}

/// A whole memory file mapped read-write into this process; unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is plain memory owned by this value; nothing about it is tied to a thread.
// Concurrent access to the bytes is the user's business, as with a bytearray.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out the pointer and length.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps all of `fd`'s file: `shared` writes go to the file (the caller is its only user),
    /// otherwise they are copy-on-write, private to this mapping. The descriptor may be closed
    /// afterwards.
    pub fn new(fd: BorrowedFd<'_>, shared: bool) -> io::Result<Mapping> {
        let len = file_len(fd)?;
        if len == 0 {
            return Ok(Mapping { ptr: NonNull::dangling(), len: 0 });
        }
        let flags = if shared { libc::MAP_SHARED | libc::MAP_POPULATE } else { libc::MAP_PRIVATE };
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) of `len` bytes of a file that
        // has `len` bytes; it aliases no Rust object.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if !shared {
            // Map every page for reading now, in one call, rather than fault by fault as the
            // task reads them (MAP_POPULATE would copy every page of a private writable
            // mapping). Best effort: before Linux 5.14 the pages are simply faulted in later.
            // SAFETY: the range is exactly the mapping just made; the advice changes no data.
            unsafe { libc::madvise(ptr, len, libc::MADV_POPULATE_READ) };
        }
        Ok(Mapping { ptr: NonNull::new(ptr.cast()).expect("mmap never returns NULL on success"), len })
    }

    /// Start of the mapped bytes (dangling, never to be read, when `len()` is 0).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the mapped bytes. The caller must make sure nothing writes them meanwhile.
    ///
    /// # Safety
    /// No other thread or process may write the mapping while the slice lives.
    pub unsafe fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` points to `len` mapped, readable bytes that live as long as `self`; the
        // caller guarantees no concurrent writes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: exactly the range mmap returned, unmapped once; no reference into it
            // outlives `self` (the binding keeps the owner alive while buffers are exported).
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn bytes_written_to_a_memfd_map_back_and_private_writes_stay_private() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let fd = memfd_with(&data).unwrap();
        assert_eq!(file_len(fd.as_fd()).unwrap(), data.len());
        let private = Mapping::new(fd.as_fd(), false).unwrap();
        let shared = Mapping::new(fd.as_fd(), true).unwrap();
        // SAFETY: nothing else writes these mappings during the test's reads.
        assert_eq!(unsafe { private.bytes() }, &data[..]);
        // SAFETY: index 7 is inside the private mapping, which nothing else accesses.
        unsafe { *private.as_ptr().add(7) = 0xAB };
        // SAFETY: read-only use while no writer runs.
        assert_eq!(unsafe { shared.bytes() }[7], data[7], "a private write reached the file");
        // SAFETY: index 9 is inside the shared mapping; no other reference is live.
        unsafe { *shared.as_ptr().add(9) = 0xCD };
        let again = Mapping::new(fd.as_fd(), false).unwrap();
        // SAFETY: read-only use while no writer runs.
        assert_eq!(unsafe { again.bytes() }[9], 0xCD, "a shared write did not reach the file");
    }

    #[test]
    fn the_cache_reuses_a_held_file_only_while_its_bytes_are_unchanged() {
        let cache = BufferCache::new();
        let mut data = vec![5u8; 100_000];
        let first = cache.get_or_write(&data).unwrap();
        assert!(Arc::ptr_eq(&first, &cache.get_or_write(&data).unwrap()), "same memory, same bytes: reused");
        data[50_000] = 6;
        let changed = cache.get_or_write(&data).unwrap();
        assert!(!Arc::ptr_eq(&first, &changed), "changed bytes must be written anew");
        let changed_fd = changed.fd().as_raw_fd();
        drop((first, changed));
        let fresh = cache.get_or_write(&data).unwrap();
        assert!(fresh.holds(&data));
        assert_eq!(cache.entries.lock().unwrap().len(), 1, "dead entries are dropped");
        let _ = changed_fd;
    }

    #[test]
    fn an_empty_buffer_maps_to_nothing() {
        let fd = memfd_with(&[]).unwrap();
        let m = Mapping::new(fd.as_fd(), true).unwrap();
        assert!(m.is_empty());
        // SAFETY: empty mapping: returns an empty slice without touching memory.
        assert!(unsafe { m.bytes() }.is_empty());
    }
}
