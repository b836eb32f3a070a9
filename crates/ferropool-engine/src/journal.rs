//! The answers a worker holds back, kept where its parent can still read them if it dies.
//!
//! A worker batches its answers: one held back for up to `connection::MAX_HOLD` leaves with the
//! next ones in one write. If a later task then kills the worker (`os._exit`, a segfault, the
//! OOM killer), what was held never reaches the socket: the tasks that had finished would be
//! failed as if they had crashed it, and the task that did crash it, seen as not started, run
//! again elsewhere. So the worker also copies every frame it holds back into a small memory
//! file its parent made and handed over with `Init`; once the frames are written to the socket
//! (where they outlive the process) the copy is emptied. When the worker dies, the parent reads
//! the socket to its end, then the copy, and takes from it the frames about tasks it still
//! counts as unanswered: a frame that also reached the socket has been taken already.
//!
//! Layout: a little-endian `u64` count of bytes held, then that many bytes of encoded frames
//! (`frame.rs`). Only frames without descriptors are held (descriptors die with the process),
//! and never more than `CAPACITY` bytes: past that the worker writes at once. The parent reads
//! the file only after the worker is gone, so nothing here is concurrent; it validates every
//! length it reads, since the task may have scribbled over the worker's memory.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr;

use crate::frame::{Frame, Header, Kind, HEADER_LEN};
use crate::memfd::{self, Map, Share};

/// Most bytes of held frames the file keeps.
pub const CAPACITY: usize = 256 * 1024;
/// Bytes of the count in front.
const COUNT: usize = 8;

/// The file's size: the count and the frames, in whole pages.
fn file_len() -> usize {
    (COUNT + CAPACITY).next_multiple_of(memfd::page_size())
}

/// The parent's side: makes the file for one worker. Returns the descriptor to send with
/// `Init` and the parent's mapping, to read with `held_frames` once the worker is gone.
pub fn create() -> io::Result<(OwnedFd, Map)> {
    let fd = memfd::create(c"ferropool-held-answers")?;
    memfd::resize(fd.as_fd(), file_len())?;
    let map = Map::new(fd.as_fd(), file_len(), 0, Share::Shared)?;
    Ok((fd, map))
}

/// Returns the frames a dead worker held back, as far as they are whole and well formed: only
/// answers, cancels and starts (`Ok`, `Err`, `Cancel`, `Start`) without descriptors.
pub fn held_frames(map: &Map) -> Vec<Frame> {
    if map.len() < COUNT {
        return Vec::new();
    }
    let mut count = [0u8; COUNT];
    // SAFETY: the mapping is at least COUNT bytes long (checked) and stays mapped while `map`
    // is borrowed; its writer is gone, so no one changes the bytes while they are copied.
    unsafe { ptr::copy_nonoverlapping(map.as_ptr(), count.as_mut_ptr(), COUNT) };
    let held = usize::try_from(u64::from_le_bytes(count))
        .unwrap_or(usize::MAX)
        .min(map.len() - COUNT)
        .min(CAPACITY);
    let mut bytes = vec![0u8; held];
    // SAFETY: `held` bytes from COUNT lie inside the mapping (clamped above); as above, nothing
    // writes them meanwhile.
    unsafe { ptr::copy_nonoverlapping(map.as_ptr().add(COUNT), bytes.as_mut_ptr(), held) };
    parse(&bytes)
}

/// Decodes whole frames from `bytes`, stopping at the first one that is cut short or malformed.
fn parse(bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER_LEN) {
        let Ok(h) = Header::decode(header.try_into().expect("HEADER_LEN bytes")) else {
            break;
        };
        let Some(payload) = usize::try_from(h.len)
            .ok()
            .and_then(|len| bytes.get(at + HEADER_LEN..at.checked_add(HEADER_LEN + len)?))
        else {
            break;
        };
        at += HEADER_LEN + payload.len();
        if h.nfds == 0 && matches!(h.kind, Kind::Ok | Kind::Err | Kind::Cancel | Kind::Start) {
            frames.push(Frame {
                kind: h.kind,
                id: h.id,
                flags: h.flags,
                aux: h.aux,
                payload: payload.to_vec(),
                fds: Vec::new(),
            });
        }
    }
    frames
}

/// The worker's side: its copy of the frames it holds back.
pub struct Journal {
    map: Map,
}

impl Journal {
    /// Maps the file the parent sent with `Init`; refuses one of another size.
    pub fn adopt(fd: OwnedFd) -> io::Result<Journal> {
        let size = memfd::fstat(fd.as_fd())?.st_size;
        if usize::try_from(size).ok() != Some(file_len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "held-answers file of an unexpected size",
            ));
        }
        Ok(Journal {
            map: Map::new(fd.as_fd(), file_len(), 0, Share::Shared)?,
        })
    }

    /// Makes the copy hold exactly `unwritten` (every byte queued and not yet written, whole
    /// frames). Returns false, copying nothing, if they do not fit: then write them now.
    pub fn mirror(&mut self, unwritten: &[u8]) -> bool {
        if unwritten.len() > CAPACITY {
            return false;
        }
        // SAFETY: COUNT + unwritten.len() <= COUNT + CAPACITY <= the mapping's length; the
        // mapping is this process's, written by this thread alone (under the connection's
        // lock) and read by the parent only after this process has gone.
        unsafe {
            ptr::copy_nonoverlapping(
                unwritten.as_ptr(),
                self.map.as_ptr().add(COUNT),
                unwritten.len(),
            );
            self.set_count(unwritten.len());
        }
        true
    }

    /// Empties the copy: everything held has reached the socket.
    pub fn clear(&mut self) {
        // SAFETY: as in `mirror`.
        unsafe { self.set_count(0) };
    }

    /// # Safety
    /// Only this thread may be writing the mapping (the caller holds the connection's lock).
    unsafe fn set_count(&mut self, n: usize) {
        let bytes = (n as u64).to_le_bytes();
        // SAFETY: the first COUNT bytes lie inside the mapping; the caller guarantees no other
        // writer.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_ptr(), COUNT) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::FrameWriter;

    #[test]
    fn frames_mirrored_by_the_worker_are_read_back_by_the_parent() {
        let (fd, parent) = create().unwrap();
        let mut worker = Journal::adopt(fd).unwrap();
        let mut w = FrameWriter::new();
        w.push(Frame::new(Kind::Ok, 1, b"one".to_vec()));
        w.push(Frame::new(Kind::Log, 0, b"a log record".to_vec()));
        w.push(Frame::new(Kind::Err, 2, b"two".to_vec()));
        assert!(worker.mirror(w.unwritten()));
        let back = held_frames(&parent);
        let got: Vec<_> = back
            .iter()
            .map(|f| (f.kind, f.id, f.payload.as_slice()))
            .collect();
        assert_eq!(
            got,
            [(Kind::Ok, 1, &b"one"[..]), (Kind::Err, 2, &b"two"[..])]
        );
        worker.clear();
        assert!(held_frames(&parent).is_empty());
    }

    #[test]
    fn too_much_is_refused_and_garbage_is_ignored() {
        let (fd, parent) = create().unwrap();
        let mut worker = Journal::adopt(fd).unwrap();
        assert!(!worker.mirror(&vec![0; CAPACITY + 1]));
        // A count past the file and bytes that are no frame: nothing, and no read outside.
        assert!(worker.mirror(&[0xff; 100]));
        // SAFETY: the test's own mapping; nothing else writes it.
        unsafe { worker.set_count(usize::MAX) };
        assert!(held_frames(&parent).is_empty());
        // A frame cut short is left out; the whole one before it is kept.
        let mut w = FrameWriter::new();
        w.push(Frame::new(Kind::Ok, 7, b"whole".to_vec()));
        w.push(Frame::new(Kind::Ok, 8, b"cut short".to_vec()));
        let bytes = w.unwritten();
        assert!(worker.mirror(&bytes[..bytes.len() - 3]));
        let ids: Vec<u64> = held_frames(&parent).iter().map(|f| f.id).collect();
        assert_eq!(ids, [7]);
    }

    #[test]
    fn a_file_of_another_size_is_refused() {
        let fd = memfd::create(c"not-a-journal").unwrap();
        memfd::resize(fd.as_fd(), 4096).unwrap();
        assert!(Journal::adopt(fd).is_err());
    }
}
