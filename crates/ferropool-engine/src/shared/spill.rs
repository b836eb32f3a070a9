//! The large buffers of a `Queue`'s items, kept out of its ring (see `docs/shared-memory.md`,
//! "Queue").
//!
//! A spill file is one anonymous memory file per queue, created with it and reached by every
//! process that reaches the queue. It only ever grows: each buffer gets a fresh page-aligned
//! range, whose start is taken with one atomic add on the counter in the file's first page, and
//! is written there with `pwrite`. The consumer maps exactly that range (no copy) and, when its
//! last reference goes, unmaps it and punches a hole over it (`fallocate`), which frees its pages.
//! Offsets are never reused, so no range is ever written twice and no allocator state can be
//! corrupted by a process dying mid-call; the file's size is virtual (64-bit offsets).
//!
//! A buffer whose consumer dies holding it, or whose producer dies between writing it and
//! queueing its item, is not freed until every process has closed the spill file.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::buffer::{header_len, new_memfd, pwrite_all, RawMap};

/// A queue's spill file, as one process holds it.
pub struct Spill {
    fd: OwnedFd,
    /// The first page, mapped shared: the next free offset.
    head: RawMap,
}

impl Spill {
    /// Creates an empty spill file.
    pub fn create() -> io::Result<Spill> {
        let fd = new_memfd(c"ferropool-queue-spill")?;
        crate::buffer::resize(&fd, header_len())?;
        let spill = Spill::open(fd)?;
        spill.next().store(header_len() as u64, Ordering::Release);
        Ok(spill)
    }

    /// Maps the spill file behind `fd` (another process's, reopened).
    pub fn open(fd: OwnedFd) -> io::Result<Spill> {
        let head = RawMap::new(&fd, header_len(), libc::MAP_SHARED, 0)?;
        Ok(Spill { fd, head })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn next(&self) -> &AtomicU64 {
        // SAFETY: the head page is mapped shared and writable while `self` lives; offset 0 is
        // page-aligned and only ever accessed atomically, by every process mapping the file.
        unsafe { AtomicU64::from_ptr(self.head.as_ptr().cast()) }
    }

    /// Writes `data` into a fresh range of the file; returns the range's offset.
    pub fn write(&self, data: &[u8]) -> io::Result<u64> {
        let page = header_len();
        let span = data.len().div_ceil(page).max(1) * page;
        let offset = self.next().fetch_add(span as u64, Ordering::AcqRel);
        if let Err(e) = pwrite_all(&self.fd, data, as_usize(offset)?) {
            self.free(offset, data.len());
            return Err(e); // ENOSPC/ENOMEM: out of memory for shared pages
        }
        Ok(offset)
    }

    /// Maps the `len` bytes at `offset` (written by `write`) shared; the range is freed when the
    /// returned value is dropped.
    pub fn take(self: &Arc<Self>, offset: u64, len: usize) -> io::Result<SpillRange> {
        let page = header_len() as u64;
        if offset < page
            || !offset.is_multiple_of(page)
            || offset >= self.next().load(Ordering::Acquire)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a queue item names a spill range that was never written",
            ));
        }
        let map = if len == 0 {
            None
        } else {
            Some(RawMap::new(
                &self.fd,
                len,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                as_usize(offset)?,
            )?)
        };
        Ok(SpillRange {
            spill: Arc::clone(self),
            offset,
            len,
            map,
        })
    }

    /// Frees the pages of the range at `offset` (a buffer whose item was never queued).
    pub fn free(&self, offset: u64, len: usize) {
        let span = len.div_ceil(header_len()).max(1) * header_len();
        // SAFETY: plain syscall on our descriptor; punching a hole changes no mapping's
        // validity (a mapped punched page reads as zeroes), and only this range's owner calls it.
        unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                span as libc::off_t,
            )
        };
    }
}

fn as_usize(offset: u64) -> io::Result<usize> {
    usize::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "spill offset out of range"))
}

/// One received buffer of a queue item: its range of the spill file, mapped; unmapped and freed
/// on drop.
pub struct SpillRange {
    spill: Arc<Spill>,
    offset: u64,
    len: usize,
    map: Option<RawMap>,
}

impl SpillRange {
    /// Start of the bytes (dangling, never to be read, when `len()` is 0).
    pub fn as_ptr(&self) -> *mut u8 {
        self.map
            .as_ref()
            .map_or(std::ptr::NonNull::dangling().as_ptr(), RawMap::as_ptr)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SpillRange {
    fn drop(&mut self) {
        drop(self.map.take());
        self.spill.free(self.offset, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_pages(spill: &Spill) -> u64 {
        crate::buffer::fstat(spill.fd()).unwrap().st_blocks as u64 * 512 / header_len() as u64
    }

    #[test]
    fn buffers_come_back_from_another_opening_and_are_freed_when_dropped() {
        let producer = Spill::create().unwrap();
        let consumer = Arc::new(Spill::open(producer.fd().try_clone_to_owned().unwrap()).unwrap());
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let b = vec![9u8; 5000];
        let (oa, ob) = (producer.write(&a).unwrap(), producer.write(&b).unwrap());
        assert!(ob >= oa + a.len() as u64, "ranges overlap");
        let before = resident_pages(&producer);
        let ra = consumer.take(oa, a.len()).unwrap();
        let rb = consumer.take(ob, b.len()).unwrap();
        // SAFETY: the ranges are mapped for `len` bytes and nothing writes them meanwhile.
        unsafe {
            assert_eq!(std::slice::from_raw_parts(ra.as_ptr(), ra.len()), &a[..]);
            assert_eq!(std::slice::from_raw_parts(rb.as_ptr(), rb.len()), &b[..]);
        }
        drop(ra);
        assert!(
            resident_pages(&producer) + (a.len() / header_len()) as u64 <= before,
            "dropping a range did not free its pages"
        );
        drop(rb);
    }

    #[test]
    fn a_range_that_was_never_written_is_refused() {
        let spill = Arc::new(Spill::create().unwrap());
        assert!(spill.take(header_len() as u64 * 100, 10).is_err());
        assert!(spill.take(1, 10).is_err());
        let off = spill.write(b"x").unwrap();
        assert!(spill.take(off, 1).is_ok());
    }

    #[test]
    fn concurrent_writers_get_disjoint_ranges() {
        let spill = Arc::new(Spill::create().unwrap());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let spill = Arc::clone(&spill);
                std::thread::spawn(move || {
                    (0..50)
                        .map(|_| (t, spill.write(&vec![t; 10_000]).unwrap()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (t, off) in threads.into_iter().flat_map(|h| h.join().unwrap()) {
            let r = spill.take(off, 10_000).unwrap();
            // SAFETY: mapped for 10,000 bytes; nothing writes it any more.
            assert!(
                unsafe { std::slice::from_raw_parts(r.as_ptr(), r.len()) }
                    .iter()
                    .all(|&x| x == t),
                "a range was overwritten"
            );
        }
    }
}
