//! The wire format between the parent and its workers: a fixed 24-byte header, then an opaque payload.
//!
//! ```text
//!  0        8        16   17    18      20       24
//!  +--------+--------+----+-----+-------+--------+---------------- - -
//!  | len u64| id u64 |kind|flags| nfds  |  aux   | payload (len bytes)
//!  +--------+--------+----+-----+-------+--------+---------------- - -
//! ```
//!
//! All integers are little-endian. `id` names the task a frame is about (0 for frames about the
//! worker itself). `nfds` says how many file descriptors travel with this frame as `SCM_RIGHTS`
//! ancillary data; the transport hands them over in order (see `channel.rs`). `aux` is
//! kind-specific: for results it is the task's run time in microseconds (saturating), which the
//! scheduler uses to size prefetch and `map` uses to size chunks, and `flags` is the share of
//! that time the worker spent pickling, in 255ths (for `pool.stats()`). The payload is opaque to the
//! engine: the Python layer puts pickles in it. See `docs/wire-format.md`.

use std::os::fd::OwnedFd;

/// `flags` of an `Ok`/`Err` frame that stands for "all of the run time went to pickling".
pub const SERIALIZE_SHARE_FULL: u8 = 255;

/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 24;

/// Largest payload accepted; anything larger is a corrupt stream (stray bytes read as a
/// header), not a real message. Large buffers travel in memory files, so real payloads stay
/// far below it; the reader never allocates more than what has arrived in any case.
pub const MAX_PAYLOAD: u64 = 1 << 34;

/// What a frame means. Parent-to-worker and worker-to-parent kinds share one numbering so a
/// captured stream can be decoded without knowing its direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// worker -> parent, first frame: the worker is up; payload is empty.
    Hello = 1,
    /// parent -> worker, first frame: configuration (sys.path, initializer); opaque payload.
    Init = 2,
    /// worker -> parent: the initializer ran; payload empty.
    Ready = 3,
    /// worker -> parent: the initializer failed; payload describes the error.
    InitFailed = 4,
    /// parent -> worker: run the task `id`; payload is the call.
    Task = 5,
    /// worker -> parent: task `id` returned; payload is the result.
    Ok = 6,
    /// worker -> parent: task `id` raised; payload describes the exception.
    Err = 7,
    /// parent -> worker: skip task `id` if it has not begun, stop it if it can (a coroutine);
    /// worker -> parent: task `id` was skipped or stopped (in place of its answer).
    Cancel = 8,
    /// parent -> worker: finish the queued tasks, then exit.
    Shutdown = 9,
    /// either way: liveness probe and its answer (control message).
    Heartbeat = 10,
    /// worker -> parent: a log record the worker emitted; opaque payload (see `docs/wire-format.md`).
    Log = 11,
    /// worker -> parent: task `id` has started while another task of this worker is unanswered
    /// (a worker running tasks one at a time never sends it; see `docs/wire-format.md`).
    Start = 12,
}

/// `Task` flag: the call is a coroutine function, run on the worker's event loop; it takes no
/// thread of the worker while it awaits.
pub const FLAG_ASYNC: u8 = 1;

/// `Cancel` flag (parent -> worker): skip the task if it has not begun, but leave it running
/// if it has (a coroutine is not cancelled). `shutdown(cancel_futures=True)` sends it.
pub const FLAG_SKIP_ONLY: u8 = 2;

impl Kind {
    /// Decodes a kind byte; `None` for a byte no version of the protocol uses.
    pub fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        Some(match b {
            1 => Hello,
            2 => Init,
            3 => Ready,
            4 => InitFailed,
            5 => Task,
            6 => Ok,
            7 => Err,
            8 => Cancel,
            9 => Shutdown,
            10 => Heartbeat,
            11 => Log,
            12 => Start,
            _ => return None,
        })
    }
}

/// The decoded fixed header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: u64,
    pub id: u64,
    pub kind: Kind,
    pub flags: u8,
    pub nfds: u16,
    pub aux: u32,
}

/// Why a byte stream could not be decoded into frames.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    UnknownKind(u8),
    TooLarge(u64),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            DecodeError::TooLarge(n) => write!(f, "frame payload of {n} bytes exceeds the limit"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Header {
    /// Appends the encoded header to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.push(self.kind as u8);
        out.push(self.flags);
        out.extend_from_slice(&self.nfds.to_le_bytes());
        out.extend_from_slice(&self.aux.to_le_bytes());
    }

    /// Decodes a header from exactly `HEADER_LEN` bytes.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
        let le64 = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8-byte slice"));
        let len = le64(0);
        if len > MAX_PAYLOAD {
            return Err(DecodeError::TooLarge(len));
        }
        let kind = Kind::from_u8(b[16]).ok_or(DecodeError::UnknownKind(b[16]))?;
        Ok(Header {
            len,
            id: le64(8),
            kind,
            flags: b[17],
            nfds: u16::from_le_bytes([b[18], b[19]]),
            aux: u32::from_le_bytes(b[20..24].try_into().expect("4-byte slice")),
        })
    }
}

/// One message: its header fields, payload and the descriptors that came with it.
#[derive(Debug)]
pub struct Frame {
    pub kind: Kind,
    pub id: u64,
    pub flags: u8,
    pub aux: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Frame {
    /// Builds a frame without descriptors.
    pub fn new(kind: Kind, id: u64, payload: Vec<u8>) -> Frame {
        Frame {
            kind,
            id,
            flags: 0,
            aux: 0,
            payload,
            fds: Vec::new(),
        }
    }

    /// Returns this frame's header as it goes on the wire.
    pub fn header(&self) -> Header {
        Header {
            len: self.payload.len() as u64,
            id: self.id,
            kind: self.kind,
            flags: self.flags,
            nfds: u16::try_from(self.fds.len()).expect("at most 65535 descriptors per frame"),
            aux: self.aux,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            len: 5,
            id: u64::MAX - 1,
            kind: Kind::Err,
            flags: 3,
            nfds: 2,
            aux: 77,
        };
        let mut buf = Vec::new();
        h.encode_into(&mut buf);
        assert_eq!(buf.len(), HEADER_LEN);
        let back = Header::decode(buf.as_slice().try_into().unwrap()).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn rejects_unknown_kind_and_oversized_payload() {
        let mut buf = Vec::new();
        Header {
            len: 0,
            id: 0,
            kind: Kind::Task,
            flags: 0,
            nfds: 0,
            aux: 0,
        }
        .encode_into(&mut buf);
        buf[16] = 200;
        assert_eq!(
            Header::decode(buf.as_slice().try_into().unwrap()),
            Err(DecodeError::UnknownKind(200))
        );
        buf[16] = Kind::Task as u8;
        buf[0..8].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert_eq!(
            Header::decode(buf.as_slice().try_into().unwrap()),
            Err(DecodeError::TooLarge(MAX_PAYLOAD + 1))
        );
    }

    #[test]
    fn every_kind_byte_decodes_to_itself() {
        for b in 0..=255u8 {
            if let Some(k) = Kind::from_u8(b) {
                assert_eq!(k as u8, b);
            }
        }
    }
}
