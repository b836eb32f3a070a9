//! Opening a shared-memory segment, and each object kept in one, from a descriptor of anything:
//! a memory file holding arbitrary bytes (often a well-formed header, so that the objects'
//! own checks are reached), of arbitrary size, or a descriptor that is no memory file at all.
//!
//! Checked: `Segment::open` accepts exactly a regular file of at least the header's size whose
//! header has the magic, the kind and the id asked for and a payload that fits; an accepted
//! segment reports the file's size and the id; every object's `open` either fails or gives an
//! object whose non-blocking queries work.

#![no_main]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use arbitrary::Arbitrary;
use ferropool_engine::memfd;
use ferropool_engine::shared::barrier::Barrier;
use ferropool_engine::shared::event::Event;
use ferropool_engine::shared::lock::Lock;
use ferropool_engine::shared::queue::Queue;
use ferropool_engine::shared::rlock::RLock;
use ferropool_engine::shared::semaphore::Semaphore;
use ferropool_engine::shared::value::Value;
use ferropool_engine::shared::{segment::PAYLOAD, Kind, Segment};
use libfuzzer_sys::fuzz_target;

/// The header's magic (`shared/segment.rs`).
const MAGIC: u32 = 0x4650_5348;

#[derive(Arbitrary, Debug)]
enum Descriptor {
    /// A memory file holding `bytes`, then resized to `size` bytes if given (`% 16 MiB`:
    /// sparse, cut short or zero-extended), then sealed against resizing if `sealed`.
    MemFile {
        bytes: Vec<u8>,
        size: Option<u32>,
        sealed: bool,
    },
    Pipe,
    Socket,
    /// A directory (`/`): not a regular file either.
    Directory,
}

#[derive(Arbitrary, Debug)]
struct Input {
    fd: Descriptor,
    /// Overwrite the first 24 bytes with a valid header: magic, this kind (`% 8 + 1`),
    /// this id, this payload length.
    header: Option<(u8, u64, u64)>,
    /// The kind asked for (`% 8 + 1`).
    kind: u8,
    /// The id asked for; `None` asks for the one in the header.
    id: Option<u64>,
}

fn kind(k: u8) -> Kind {
    [
        Kind::Lock,
        Kind::RLock,
        Kind::Event,
        Kind::Semaphore,
        Kind::Barrier,
        Kind::Queue,
        Kind::Value,
        Kind::Array,
    ][k as usize % 8]
}

/// A memory file that can be sealed, as the engine's own segments are.
fn sealable_memfd() -> OwnedFd {
    // SAFETY: a valid C string; memfd_create returns a new descriptor or -1.
    let raw = unsafe {
        libc::memfd_create(
            c"ferropool-fuzz-segment".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(raw >= 0, "memfd_create");
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fuzz_target!(|input: Input| {
    let want_kind = kind(input.kind);
    // A segment's creator seals its size; an opener may insist on it, so a valid header in an
    // unsealed file need not be accepted.
    let mut is_sealed = false;
    // The file's bytes and size, as the model sees them (`None`: not a regular file).
    let (fd, file): (OwnedFd, Option<Vec<u8>>) = match input.fd {
        Descriptor::MemFile {
            mut bytes,
            size,
            sealed,
        } => {
            if let Some((k, id, payload)) = input.header {
                if bytes.len() < 24 {
                    bytes.resize(24, 0);
                }
                bytes[0..4].copy_from_slice(&MAGIC.to_le_bytes());
                bytes[4..8].copy_from_slice(&(kind(k) as u32).to_le_bytes());
                bytes[8..16].copy_from_slice(&id.to_le_bytes());
                bytes[16..24].copy_from_slice(&payload.to_le_bytes());
            }
            let fd = sealable_memfd();
            memfd::write_at(fd.as_fd(), &bytes, 0).unwrap();
            if let Some(size) = size {
                let size = size as usize % (16 << 20);
                memfd::resize(fd.as_fd(), size).unwrap();
                bytes.resize(size, 0);
            }
            if sealed {
                let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
                // SAFETY: plain fcntl on a descriptor we own.
                let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
                assert_eq!(rc, 0, "sealing a sealable memory file");
            }
            is_sealed = sealed;
            (fd, Some(bytes))
        }
        Descriptor::Pipe => (nix::unistd::pipe().unwrap().0, None),
        Descriptor::Socket => (ferropool_engine::channel::pair().unwrap().0, None),
        Descriptor::Directory => (std::fs::File::open("/").unwrap().into(), None),
    };
    let header_id = file.as_deref().and_then(|b| le64(b, 8)).unwrap_or(0);
    let want_id = input.id.unwrap_or(header_id);
    let valid = file.as_deref().is_some_and(|b| {
        b.len() >= PAYLOAD
            && le32(b, 0) == Some(MAGIC)
            && le32(b, 4) == Some(want_kind as u32)
            && le64(b, 8) == Some(want_id)
            && le64(b, 16).is_some_and(|p| p <= (b.len() - PAYLOAD) as u64)
    });
    let dup = |fd: &OwnedFd| fd.try_clone().unwrap();
    match Segment::open(dup(&fd), want_kind, want_id, 0) {
        Ok(seg) => {
            assert!(valid, "opened a segment whose header is wrong");
            let len = file.as_ref().unwrap().len();
            assert_eq!((seg.len(), seg.payload_len()), (len, len - PAYLOAD));
            assert_eq!(seg.id(), want_id);
        }
        Err(e) => {
            assert!(!(valid && is_sealed), "refused a valid segment: {e}");
        }
    }
    // Every object on the same descriptor: each checks its kind, and what it reads must not
    // fault whatever the state holds. Nothing here blocks: a zero timeout at most.
    let zero = Some(Duration::ZERO);
    if let Ok(q) = Queue::open(dup(&fd), want_id) {
        let mut out = Vec::new();
        let _ = q.get(&mut out, zero);
        let _ = (q.len(), q.capacity(), q.maxsize());
    }
    if let Ok(l) = Lock::open(dup(&fd), want_id) {
        if l.acquire(zero).is_ok() {
            let _ = l.release();
        }
        let _ = l.is_locked();
    }
    if let Ok(r) = RLock::open(dup(&fd), want_id) {
        if r.acquire(zero).is_ok() {
            let _ = r.release();
        }
        let _ = r.is_owned();
    }
    if let Ok(e) = Event::open(dup(&fd), want_id) {
        let _ = (e.is_set(), e.wait(zero));
    }
    if let Ok(s) = Semaphore::open(dup(&fd), want_id) {
        if s.try_acquire() {
            let _ = s.release(1);
        }
        let _ = s.value();
    }
    if let Ok(b) = Barrier::open(dup(&fd), want_id) {
        assert!(b.parties() > 0, "opened a barrier of 0 parties");
        let _ = (b.is_broken(), b.n_waiting());
    }
    if let Ok(v) = Value::open(dup(&fd), want_id) {
        let _ = v.ty();
        if v.ty().int_range().is_some() {
            let _ = v.load_int();
        } else {
            let _ = v.load_float();
        }
    }
});
