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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::memfd::{self, page_size, Map, Share};

/// A queue's spill file, as one process holds it.
pub struct Spill {
    fd: OwnedFd,
    /// The first page, mapped shared: the next free offset.
    head: Map,
}

impl Spill {
    /// Creates an empty spill file.
    pub fn create() -> io::Result<Spill> {
        let fd = memfd::create(c"ferropool-queue-spill")?;
        memfd::resize(fd.as_fd(), page_size())?;
        let spill = Spill::open(fd)?;
        spill.next().store(page_size() as u64, Ordering::Release);
        Ok(spill)
    }

    /// Maps the spill file behind `fd` (another process's, reopened).
    pub fn open(fd: OwnedFd) -> io::Result<Spill> {
        let head = Map::new(fd.as_fd(), page_size(), 0, Share::Shared)?;
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
        let page = page_size();
        let span = data.len().div_ceil(page).max(1) * page;
        let offset = self.next().fetch_add(span as u64, Ordering::AcqRel);
        if let Err(e) = memfd::write_at(self.fd.as_fd(), data, as_usize(offset)?) {
            self.free(offset, data.len());
            return Err(e); // ENOSPC/ENOMEM: out of memory for shared pages
        }
        Ok(offset)
    }

    /// Maps the `len` bytes at `offset` (written by `write`) shared; the range is freed when the
    /// returned value is dropped.
    pub fn take(self: &Arc<Self>, offset: u64, len: usize) -> io::Result<SpillRange> {
        let page = page_size() as u64;
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
            Some(Map::new(
                self.fd.as_fd(),
                len,
                as_usize(offset)?,
                Share::SharedPopulated,
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
        // Only this range's owner calls it, so no live buffer loses its bytes.
        let span = len.div_ceil(page_size()).max(1) * page_size();
        memfd::punch_hole(self.fd.as_fd(), offset, span);
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
    map: Option<Map>,
}

impl SpillRange {
    /// Start of the bytes (dangling, never to be read, when `len()` is 0).
    pub fn as_ptr(&self) -> *mut u8 {
        self.map
            .as_ref()
            .map_or(std::ptr::NonNull::dangling().as_ptr(), Map::as_ptr)
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
        memfd::fstat(spill.fd()).unwrap().st_blocks as u64 * 512 / page_size() as u64
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
            resident_pages(&producer) + (a.len() / page_size()) as u64 <= before,
            "dropping a range did not free its pages"
        );
        drop(rb);
    }

    #[test]
    fn a_range_that_was_never_written_is_refused() {
        let spill = Arc::new(Spill::create().unwrap());
        assert!(spill.take(page_size() as u64 * 100, 10).is_err());
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
            let bytes = unsafe { std::slice::from_raw_parts(r.as_ptr(), r.len()) };
            assert!(bytes.iter().all(|&x| x == t), "a range was overwritten");
        }
    }
}
