//! A shared-memory segment: an anonymous memory file (`crate::memfd`) mapped shared, with a
//! header that says which object it holds.
//!
//! The file's size is fixed: it is sealed against shrinking and growing once sized, so that no
//! holder of a descriptor can `ftruncate` it under another process's mapping (`SIGBUS`), and
//! `open` refuses a file without those seals.
//!
//! The file has no name in any filesystem, so nothing is left under `/dev/shm` or `/tmp` when a
//! process dies. Another process reaches the same memory through a descriptor of the same
//! file (opened via `/proc/<pid>/fd/<n>`, or passed over a unix socket) and `Segment::open`.
//!
//! Layout: a 64-byte header, then the object's state at `PAYLOAD` (a cache line, so the state's
//! atomics never share one with the header):
//!
//! | offset | field         | meaning                                                |
//! |--------|---------------|--------------------------------------------------------|
//! | 0      | magic `u32`   | `MAGIC`: this is a ferropool segment                   |
//! | 4      | kind `u32`    | which object lives here (`Kind`)                       |
//! | 8      | id `u64`      | random, set once: tells a reopened segment from another |
//! | 16     | payload `u64` | bytes of state after the header                        |

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::memfd::{self, Map, Share};

/// Bytes before the object's state.
pub const PAYLOAD: usize = 64;
const MAGIC: u32 = 0x4650_5348; // "FPSH"
/// The seals of every segment: its size never changes.
const FIXED_SIZE: i32 = memfd::SEAL_SHRINK | memfd::SEAL_GROW | memfd::SEAL_SEAL;

/// The object a segment holds, recorded in its header so that a reopened segment is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    Lock = 1,
    RLock = 2,
    Event = 3,
    Semaphore = 4,
    Barrier = 5,
    Queue = 6,
    Value = 7,
    Array = 8,
}

#[repr(C)]
struct Header {
    magic: u32,
    kind: u32,
    id: u64,
    payload: u64,
}

/// One mapping of a memory file; unmapped and its descriptor closed on drop. Every access to the
/// mapping goes through atomics or through byte copies whose exclusivity the owning object's
/// protocol guarantees (documented at each use).
pub struct Segment {
    /// Declared first so that it is unmapped before the descriptor is closed.
    map: Map,
    fd: OwnedFd,
}

pub(crate) fn random_id() -> u64 {
    let mut id = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `id`.
    let n = unsafe { libc::getrandom((&mut id as *mut u64).cast(), 8, 0) };
    if n != 8 || id == 0 {
        // Not secret, only distinct: the pid and the clock are enough without getrandom.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        id = t ^ (u64::from(std::process::id()) << 40) | 1;
    }
    id
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not the expected ferropool shared segment: {what}"),
    )
}

impl Segment {
    /// Creates a zero-filled segment for a `kind` object with `payload` bytes of state. The file's
    /// name (seen only in `/proc/*/maps` and `/proc/*/fd`) is `name`. The descriptor is
    /// close-on-exec. Fails with the errno of `memfd_create`, `ftruncate` or `mmap`.
    pub fn create(name: &CStr, kind: Kind, payload: usize) -> io::Result<Segment> {
        let len = PAYLOAD
            .checked_add(payload)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
        let fd = memfd::create(name)?;
        memfd::resize(fd.as_fd(), len)?;
        memfd::seal(fd.as_fd(), FIXED_SIZE)?;
        let map = Map::new(fd.as_fd(), len, 0, Share::Shared)?;
        let seg = Segment { fd, map };
        let header = Header {
            magic: MAGIC,
            kind: kind as u32,
            id: random_id(),
            payload: payload as u64,
        };
        // SAFETY: the mapping is at least PAYLOAD (64) bytes, page-aligned, and not yet visible to
        // any other thread or process, so this plain write races with nothing.
        unsafe { seg.map.as_ptr().cast::<Header>().write(header) };
        Ok(seg)
    }

    /// Maps the memory file `fd` (taking ownership of it) and checks that it holds a `kind` object
    /// whose id is `id`, with at least `state` bytes of state. Fails with `InvalidData` when it
    /// does not (say the descriptor number was reused for another file, or another process made
    /// the file too small for the object) or when its size is not sealed, or with the errno of
    /// `fstat` or `mmap`.
    pub fn open(fd: OwnedFd, kind: Kind, id: u64, state: usize) -> io::Result<Segment> {
        // Sealed first: only then does the size read next stay true while the file is mapped.
        memfd::require_seals(fd.as_fd(), FIXED_SIZE)?;
        let st = memfd::fstat(fd.as_fd())?;
        let len = usize::try_from(st.st_size).map_err(|_| invalid("negative size"))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || len < PAYLOAD {
            return Err(invalid("not a memory file with a header"));
        }
        let map = Map::new(fd.as_fd(), len, 0, Share::Shared)?;
        let seg = Segment { fd, map };
        // SAFETY: the mapping is at least PAYLOAD bytes; the header is written once by the
        // creator before the descriptor was shared and never changes afterwards.
        let h = unsafe { seg.map.as_ptr().cast::<Header>().read() };
        if h.magic != MAGIC {
            return Err(invalid("bad magic"));
        }
        if h.kind != kind as u32 {
            return Err(invalid("it holds another kind of object"));
        }
        if h.id != id {
            return Err(invalid(
                "its id differs (the descriptor now names another segment)",
            ));
        }
        if h.payload > (len - PAYLOAD) as u64 {
            return Err(invalid("payload larger than the file"));
        }
        if h.payload < state as u64 {
            return Err(invalid(&format!(
                "it holds {} bytes of state, fewer than a {kind:?} needs ({state})",
                h.payload
            )));
        }
        Ok(seg)
    }

    /// The segment's random id, as given to `open`.
    pub fn id(&self) -> u64 {
        // SAFETY: see `open`: the header is immutable after creation.
        unsafe { (*self.map.as_ptr().cast::<Header>()).id }
    }

    /// The descriptor of the memory file.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The size of the mapping in bytes, header included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: a segment holds at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes of state after the header.
    pub fn payload_len(&self) -> usize {
        self.map.len() - PAYLOAD
    }

    /// A pointer to the first byte of state (`PAYLOAD` bytes into the mapping, 64-byte aligned).
    pub fn payload(&self) -> *mut u8 {
        // SAFETY: the mapping is at least PAYLOAD bytes long, so the offset stays inside it.
        unsafe { self.map.as_ptr().add(PAYLOAD) }
    }

    /// Returns the state at the start of the payload as a `T`.
    ///
    /// # Safety
    /// `T` must be `repr(C)`, at most `payload_len()` bytes, aligned to at most 64, and valid for
    /// any bit pattern another process may write (in practice: made only of atomics), and every
    /// access to it must be atomic.
    pub(crate) unsafe fn state<T>(&self) -> &T {
        debug_assert!(std::mem::size_of::<T>() <= self.payload_len());
        debug_assert!(std::mem::align_of::<T>() <= PAYLOAD);
        // SAFETY: the caller promises the size, alignment and validity; the reference lives no
        // longer than `self`, which keeps the mapping.
        unsafe { &*self.payload().cast::<T>() }
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("fd", &self.fd.as_raw_fd())
            .field("len", &self.map.len())
            .field("id", &self.id())
            .finish()
    }
}

/// Creates, in tests, a segment whose state is `T` (zero-filled).
#[cfg(test)]
pub(crate) fn test_segment(kind: Kind, payload: usize) -> Segment {
    Segment::create(c"ferropool-test", kind, payload).unwrap()
}

/// A new descriptor of `seg`'s file, opened the way another process would: through
/// `/proc/self/fd/<n>`.
#[cfg(test)]
pub(crate) fn reopen_fd(seg: &Segment) -> OwnedFd {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", seg.fd().as_raw_fd()))
        .unwrap();
    OwnedFd::from(file)
}

/// Reopens `seg` the way another process would: through `/proc/self/fd/<n>`.
#[cfg(test)]
pub(crate) fn reopen(seg: &Segment, kind: Kind) -> io::Result<Segment> {
    Segment::open(reopen_fd(seg), kind, seg.id(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn a_reopened_segment_shares_memory_and_checks_its_header() {
        let a = test_segment(Kind::Value, 8);
        let b = reopen(&a, Kind::Value).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.payload_len(), b.payload_len());
        // SAFETY: one AtomicU64 fits in the 8-byte payload.
        let (x, y) = unsafe { (a.state::<AtomicU64>(), b.state::<AtomicU64>()) };
        x.store(42, Ordering::SeqCst);
        assert_eq!(y.load(Ordering::SeqCst), 42);
        assert_eq!(
            reopen(&a, Kind::Lock).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", a.fd().as_raw_fd()))
            .unwrap();
        assert_eq!(
            Segment::open(OwnedFd::from(file), Kind::Value, a.id() ^ 1, 0)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_segment_cannot_be_resized_and_an_unsealed_file_is_refused() {
        let a = test_segment(Kind::Value, 8);
        for len in [0, 4096, 1 << 20] {
            let err = memfd::resize(a.fd(), len).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "resized to {len}");
        }
        let plain = memfd::create(c"ferropool-test").unwrap();
        memfd::resize(plain.as_fd(), 4096).unwrap();
        assert_eq!(
            Segment::open(plain, Kind::Value, a.id(), 0)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn an_object_whose_state_the_segment_does_not_cover_is_refused() {
        use crate::shared::{barrier, event, lock, queue, rlock, semaphore, value};
        fn open_as(kind: Kind, fd: OwnedFd, id: u64) -> io::Result<()> {
            match kind {
                Kind::Lock => lock::Lock::open(fd, id).map(drop),
                Kind::RLock => rlock::RLock::open(fd, id).map(drop),
                Kind::Event => event::Event::open(fd, id).map(drop),
                Kind::Semaphore => semaphore::Semaphore::open(fd, id).map(drop),
                Kind::Barrier => barrier::Barrier::open(fd, id).map(drop),
                Kind::Queue => queue::Queue::open(fd, id).map(drop),
                Kind::Value => value::Value::open(fd, id).map(drop),
                Kind::Array => Segment::open(fd, kind, id, 0).map(drop),
            }
        }
        let kinds = [
            Kind::Lock,
            Kind::RLock,
            Kind::Event,
            Kind::Semaphore,
            Kind::Barrier,
            Kind::Queue,
            Kind::Value,
        ];
        for kind in kinds {
            // A header naming the right kind and id, over less state than the object has (the
            // mapping still spans a page, so reading past the state would not even fault).
            for payload in [0, 1, 3] {
                let small = test_segment(kind, payload);
                let fd = reopen_fd(&small);
                let err = open_as(kind, fd, small.id()).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{kind:?}: {err}");
            }
        }
        let array = test_segment(Kind::Array, 0);
        open_as(Kind::Array, reopen_fd(&array), array.id()).unwrap();
        let err = Segment::open(reopen_fd(&array), Kind::Array, array.id(), 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_segment_is_no_file_in_dev_shm() {
        let a = test_segment(Kind::Value, 8);
        let link = std::fs::read_link(format!("/proc/self/fd/{}", a.fd().as_raw_fd())).unwrap();
        assert!(
            link.to_string_lossy().starts_with("/memfd:ferropool-test"),
            "{link:?}"
        );
    }
}
