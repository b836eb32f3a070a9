//! The large buffers of a `Queue`'s items, kept out of its ring (see `docs/shared-memory.md`,
//! "Queue").
//!
//! A spill file is one anonymous memory file per queue, created with it and reached by every
//! process that reaches the queue. It only ever grows (it is sealed against shrinking, so a
//! mapping of a range below its size stays valid): each buffer gets a fresh page-aligned range,
//! whose start is taken with one atomic add on the counter in the file's first page. A range is
//! a tag page, then the buffer's bytes, both written with `pwrite`. The consumer checks the range
//! before it maps it: inside the file, and its tag page naming this very buffer (its length and
//! a random tag that the ring entry carries too), claimed once by a compare-and-swap. So a
//! corrupted ring entry can neither make a consumer map past the end of the file (`SIGBUS`) nor
//! hand it another item's buffer. The consumer then maps the range (no copy) and, when its last
//! reference goes, unmaps it and punches a hole over it (`fallocate`), which frees its pages and
//! clears its tag. Offsets are never reused, so no range is ever written twice and no allocator
//! state can be corrupted by a process dying mid-call; the file's size is virtual (64-bit
//! offsets).
//!
//! A buffer whose consumer dies holding it, or whose producer dies between writing it and
//! queueing its item, is not freed until every process has closed the spill file.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::memfd::{self, page_size, Map, Share};

/// The first bytes of a range's tag page.
#[repr(C)]
struct Tag {
    magic: u32,
    /// `WRITTEN` until a consumer claims it (`TAKEN`); zero once the range is freed.
    state: AtomicU32,
    len: u64,
    tag: u64,
}

const TAG_MAGIC: u32 = 0x4650_5350; // "FPSP"
const WRITTEN: u32 = 1;
const TAKEN: u32 = 2;

/// A buffer written into the spill file: what a ring entry carries to name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub offset: u64,
    pub len: usize,
    /// Random, also in the range's tag page: a ring entry must name both to take the range.
    pub tag: u64,
}

/// A queue's spill file, as one process holds it.
pub struct Spill {
    fd: OwnedFd,
    /// The first page, mapped shared: the next free offset.
    head: Map,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a queue item names a bad spill range (the shared memory is corrupt): {what}"),
    )
}

/// The bytes a range of a `len`-byte buffer spans: its tag page and its bytes, in whole pages.
fn span(len: usize) -> Option<u64> {
    let page = page_size();
    let pages = len.checked_add(page - 1)? / page + 1;
    u64::try_from(pages.checked_mul(page)?).ok()
}

impl Spill {
    /// Creates an empty spill file, sealed against shrinking.
    pub fn create() -> io::Result<Spill> {
        let fd = memfd::create(c"ferropool-queue-spill")?;
        memfd::resize(fd.as_fd(), page_size())?;
        memfd::seal(fd.as_fd(), memfd::SEAL_SHRINK | memfd::SEAL_SEAL)?;
        let spill = Spill::open(fd)?;
        spill.next().store(page_size() as u64, Ordering::Release);
        Ok(spill)
    }

    /// Maps the spill file behind `fd` (another process's, reopened). Fails with `InvalidData`
    /// unless the file is sealed against shrinking and holds at least the counter's page.
    pub fn open(fd: OwnedFd) -> io::Result<Spill> {
        memfd::require_seals(fd.as_fd(), memfd::SEAL_SHRINK)?;
        if size(fd.as_fd())? < page_size() as u64 {
            return Err(invalid("the spill file is shorter than its first page"));
        }
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

    /// Writes `data` into a fresh range of the file, behind its tag page.
    pub fn write(&self, data: &[u8]) -> io::Result<Written> {
        let span = span(data.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer too large"))?;
        let offset = self.next().fetch_add(span, Ordering::AcqRel);
        let written = Written {
            offset,
            len: data.len(),
            tag: super::segment::random_id(),
        };
        let tag = Tag {
            magic: TAG_MAGIC,
            state: AtomicU32::new(WRITTEN),
            len: data.len() as u64,
            tag: written.tag,
        };
        // SAFETY: `Tag` is `repr(C)` plain data without padding (u32, u32, u64, u64); viewing it
        // as its bytes reads only initialised memory.
        let tag_bytes = unsafe {
            std::slice::from_raw_parts((&tag as *const Tag).cast::<u8>(), size_of::<Tag>())
        };
        // The bytes first, then the tag that makes them claimable.
        let at = as_usize(offset)?;
        let outcome = memfd::write_at(self.fd.as_fd(), data, at + page_size())
            .and_then(|()| memfd::write_at(self.fd.as_fd(), tag_bytes, at));
        if let Err(e) = outcome {
            self.free(&written);
            return Err(e); // ENOSPC/ENOMEM: out of memory for shared pages
        }
        Ok(written)
    }

    /// Checks that `w` (read from a ring entry) names a range written for it and not yet
    /// taken, claims it, and maps its bytes shared; the range is freed when the returned value is
    /// dropped. Fails with `InvalidData` for anything else: the shared memory was overwritten.
    pub fn take(self: &Arc<Self>, w: Written) -> io::Result<SpillRange> {
        let page = page_size() as u64;
        let span = span(w.len).ok_or_else(|| invalid("length too large"))?;
        let end = w
            .offset
            .checked_add(span)
            .ok_or_else(|| invalid("offset too large"))?;
        if w.offset < page || !w.offset.is_multiple_of(page) {
            return Err(invalid("offset not a range start"));
        }
        if end > self.next().load(Ordering::Acquire) {
            return Err(invalid("a range that was never handed out"));
        }
        // The file only grows (sealed), so a range inside it now stays inside it. An empty
        // buffer's range ends with its tag: nothing was written past it.
        let written_end = if w.len == 0 {
            w.offset + size_of::<Tag>() as u64
        } else {
            w.offset + page + w.len as u64
        };
        if written_end > size(self.fd.as_fd())? {
            return Err(invalid("a range past the end of the file"));
        }
        let map = Map::new(
            self.fd.as_fd(),
            page_size() + w.len,
            as_usize(w.offset)?,
            Share::SharedPopulated,
        )?;
        // SAFETY: the mapping starts with the range's tag page, page-aligned and inside the file
        // (checked above); `Tag` is valid for any bits but its `state`, which is only ever
        // accessed atomically by every process.
        let tag = unsafe { &*map.as_ptr().cast::<Tag>() };
        if tag.magic != TAG_MAGIC || tag.len != w.len as u64 || tag.tag != w.tag {
            return Err(invalid("the range belongs to no such buffer"));
        }
        if tag
            .state
            .compare_exchange(WRITTEN, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(invalid("the range was taken already"));
        }
        Ok(SpillRange {
            spill: Arc::clone(self),
            written: w,
            map,
        })
    }

    /// Frees the pages (tag included) of range `w` (a buffer whose item was never queued).
    pub fn free(&self, w: &Written) {
        // Only this range's owner calls it, so no live buffer loses its bytes.
        if let Some(span) = span(w.len).and_then(|s| usize::try_from(s).ok()) {
            memfd::punch_hole(self.fd.as_fd(), w.offset, span);
        }
    }
}

fn size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    u64::try_from(memfd::fstat(fd)?.st_size).map_err(|_| invalid("negative file size"))
}

fn as_usize(offset: u64) -> io::Result<usize> {
    usize::try_from(offset).map_err(|_| invalid("offset out of range"))
}

/// One received buffer of a queue item: its range of the spill file, mapped; unmapped and freed
/// on drop.
pub struct SpillRange {
    spill: Arc<Spill>,
    written: Written,
    /// The tag page, then the bytes.
    map: Map,
}

impl SpillRange {
    /// Start of the bytes (one past the tag page; never to be read when `len()` is 0).
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr().wrapping_add(page_size())
    }

    pub fn len(&self) -> usize {
        self.written.len
    }

    pub fn is_empty(&self) -> bool {
        self.written.len == 0
    }
}

impl Drop for SpillRange {
    fn drop(&mut self) {
        // The hole clears the tag too, so the range can never be taken again.
        self.spill.free(&self.written);
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
        let (wa, wb) = (producer.write(&a).unwrap(), producer.write(&b).unwrap());
        assert!(wb.offset >= wa.offset + a.len() as u64, "ranges overlap");
        let before = resident_pages(&producer);
        let ra = consumer.take(wa).unwrap();
        let rb = consumer.take(wb).unwrap();
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
        assert!(consumer.take(wa).is_err(), "a freed range was taken again");
    }

    #[test]
    fn an_empty_buffer_round_trips_even_as_the_last_range_of_the_file() {
        let producer = Spill::create().unwrap();
        let consumer = Arc::new(Spill::open(producer.fd().try_clone_to_owned().unwrap()).unwrap());
        // Alone at the end of the file: nothing was written past its tag.
        let empty = producer.write(b"").unwrap();
        let got = consumer.take(empty).unwrap();
        assert!(got.is_empty());
        drop(got);
        assert!(
            consumer.take(empty).is_err(),
            "a freed range was taken again"
        );
        // Between two others.
        let a = producer.write(&[1u8; 10]).unwrap();
        let empty = producer.write(b"").unwrap();
        let b = producer.write(&[2u8; 10]).unwrap();
        for w in [empty, a, b] {
            assert_eq!(consumer.take(w).unwrap().len(), w.len);
        }
        // An empty range past the end of the file is still refused before it is mapped.
        let past = Written {
            offset: b.offset + 16 * page_size() as u64,
            ..empty
        };
        consumer
            .next()
            .fetch_add(32 * page_size() as u64, Ordering::AcqRel);
        assert!(consumer.take(past).is_err());
    }

    #[test]
    fn a_range_that_was_never_written_is_refused() {
        let spill = Arc::new(Spill::create().unwrap());
        let w = |offset, len, tag| Written { offset, len, tag };
        assert!(spill.take(w(page_size() as u64 * 100, 10, 0)).is_err());
        assert!(spill.take(w(1, 10, 0)).is_err());
        let ok = spill.write(b"x").unwrap();
        assert!(spill.take(ok).is_ok());
    }

    #[test]
    fn a_corrupted_range_is_refused_before_it_is_mapped() {
        let spill = Arc::new(Spill::create().unwrap());
        let a = spill.write(&[1u8; 10_000]).unwrap();
        let b = spill.write(&[2u8; 10_000]).unwrap();
        // Longer than the file: mapping it and reading would raise SIGBUS.
        for len in [10_000 + 3 * page_size(), 1 << 40, usize::MAX] {
            assert!(spill.take(Written { len, ..a }).is_err(), "len {len}");
        }
        // The counter claims more than was written: still refused by the file's size.
        spill.next().fetch_add(1 << 30, Ordering::AcqRel);
        assert!(spill.take(Written { len: 1 << 29, ..b }).is_err());
        // Another item's range, or this one's under another tag.
        assert!(spill.take(Written { tag: a.tag, ..b }).is_err());
        assert!(spill.take(Written { len: 9_999, ..a }).is_err());
        let got = spill.take(a).unwrap();
        assert!(spill.take(a).is_err(), "one range taken twice");
        drop(got);
        assert!(spill.take(b).is_ok());
    }

    #[test]
    fn the_spill_file_cannot_shrink() {
        let spill = Spill::create().unwrap();
        spill.write(&[1u8; 10_000]).unwrap();
        let err = memfd::resize(spill.fd(), page_size()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        let plain = memfd::create(c"ferropool-test").unwrap();
        memfd::resize(plain.as_fd(), page_size()).unwrap();
        assert!(Spill::open(plain).is_err(), "an unsealed file was accepted");
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
        for (t, w) in threads.into_iter().flat_map(|h| h.join().unwrap()) {
            let r = spill.take(w).unwrap();
            // SAFETY: mapped for 10,000 bytes; nothing writes it any more.
            let bytes = unsafe { std::slice::from_raw_parts(r.as_ptr(), r.len()) };
            assert!(bytes.iter().all(|&x| x == t), "a range was overwritten");
        }
    }
}
