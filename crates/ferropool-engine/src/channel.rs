//! Transport of frames over a unix stream socket: buffered, batched reads and writes with file
//! descriptors riding along as `SCM_RIGHTS`.
//!
//! Batching: the writer appends encoded frames to one buffer and sends it with as few
//! `sendmsg` calls as possible; the reader pulls up to 256 KiB per `recvmsg` and decodes every
//! complete frame in it. Both work on blocking sockets (the worker) and non-blocking ones (the
//! parent's dispatcher, which polls), returning `io::ErrorKind::WouldBlock` in the latter case.
//!
//! Descriptors: a frame with `nfds > 0` is sent with one `sendmsg` whose data starts at the
//! frame's first byte and whose control message holds its descriptors. Linux hands them to the
//! first read that takes any byte of that message, and ends the read there (it may have read
//! earlier messages first), so they arrive with the read that holds the frame's first byte.
//! The reader tags each descriptor with its read's stream range; a frame takes those whose
//! range holds its first byte, and a descriptor no frame can claim is closed (a peer cannot
//! fill the table with descriptors it never announced). More than `MAX_FDS_PER_READ` in one
//! message (`MSG_CTRUNC`) is a corrupt stream. See `docs/wire-format.md`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use crate::frame::{Frame, Header, Kind, HEADER_LEN};

/// Bytes requested from the kernel per read when no large frame is pending.
const READ_CHUNK: usize = 256 * 1024;
/// Most descriptors accepted by one `recvmsg`.
const MAX_FDS_PER_READ: usize = 253;

/// Creates a connected pair of unix stream sockets, both close-on-exec.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// Sets or clears `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// A receive buffer larger than this is let go once it is empty, so that one large frame does
/// not pin its size for the connection's life.
const KEEP_BUFFER: usize = 4 * READ_CHUNK;

/// Accumulates bytes read from a socket and cuts them into frames.
///
/// Untrusted input: a peer (or a task that writes stray bytes to the socket) can announce any
/// length and send any descriptors. The buffer grows only as bytes arrive, never to what a
/// header claims; descriptors are tagged with the stream range of the read that brought them,
/// a frame takes only those whose read held its first byte, and any other is closed.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream offset of `buf[start]`: bytes taken out as frames so far.
    consumed: u64,
    /// Received descriptors, each with the stream range `[start, end)` of the read that
    /// brought it.
    fds: VecDeque<(u64, u64, OwnedFd)>,
    eof: bool,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Returns the bytes allocated for the receive buffer (its growth is bounded by what has
    /// arrived; the fuzz targets check it).
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Returns true once the peer has closed its end and every byte has been read.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Returns true if at least one whole frame is buffered, so `next_frame` needs no read.
    pub fn has_frame(&self) -> bool {
        self.pending_header()
            .is_some_and(|h| (self.end - self.start) as u64 >= HEADER_LEN as u64 + h.len)
    }

    /// The header of the frame being assembled, once its bytes are in and decode.
    pub fn pending_header(&self) -> Option<Header> {
        let avail = &self.buf[self.start..self.end];
        let h: &[u8; HEADER_LEN] = avail.get(..HEADER_LEN)?.try_into().ok()?;
        Header::decode(h).ok()
    }

    /// Reads once from `fd` (blocking or not, as the socket is set) and returns the number of
    /// bytes read; 0 means end of stream. Descriptors that arrive are queued for `next_frame`.
    pub fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.fill_with(fd, MsgFlags::empty())
    }

    /// `fill` that never blocks, whatever the socket's mode: `WouldBlock` when nothing is there.
    pub fn fill_nonblocking(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.fill_with(fd, MsgFlags::MSG_DONTWAIT)
    }

    fn fill_with(&mut self, fd: BorrowedFd<'_>, flags: MsgFlags) -> io::Result<usize> {
        // Make room for the frame being assembled, but grow towards its announced length only
        // as its bytes arrive (at most doubling what is buffered): a header is only a claim.
        let buffered = self.end - self.start;
        let want = match self.pending_header() {
            Some(h) => (HEADER_LEN as u64 + h.len).min(2 * buffered as u64) as usize,
            None => 0,
        }
        .max(READ_CHUNK);
        if self.start > 0 && (self.buf.len() - self.end < READ_CHUNK || self.start == self.end) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.start < want || self.buf.len() - self.end < 4096 {
            let new_len = (self.start + want).max(self.end + READ_CHUNK);
            // Exactly: `resize` alone may double the capacity past what arrived. `want` grows
            // geometrically already, so this costs no repeated copying.
            self.buf.reserve_exact(new_len - self.buf.len());
            self.buf.resize(new_len, 0);
        }
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_READ]);
        let mut iov = [IoSliceMut::new(&mut self.buf[self.end..])];
        // Descriptors come with the message that sent them, which begins within this read
        // (Linux ends a read once it has taken a message's descriptors; it may have read
        // earlier messages first). Tagged with the read's range once its length is known.
        let at = self.consumed + buffered as u64;
        let mut arrived = Vec::new();
        let n = loop {
            match recvmsg::<()>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | flags,
            ) {
                Ok(msg) => {
                    for c in msg.cmsgs().map_err(io::Error::from)? {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            // SAFETY: the kernel just installed these descriptors in our table for
                            // this message; nothing else owns them yet.
                            arrived.extend(
                                raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }),
                            );
                        }
                    }
                    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                        // The kernel closed descriptors that did not fit: no frame can be
                        // matched with its own any more.
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "more descriptors arrived than a frame may carry",
                        ));
                    }
                    break msg.bytes;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            self.eof = true;
        }
        let until = at + n as u64;
        self.fds
            .extend(arrived.into_iter().map(|fd| (at, until, fd)));
        self.end += n;
        Ok(n)
    }

    /// Takes the next complete frame out of the buffer, if there is one.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        let avail = self.end - self.start;
        if avail < HEADER_LEN {
            return Ok(None);
        }
        let hb: &[u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
            .try_into()
            .expect("header slice");
        let h = Header::decode(hb).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // `avail` fits in memory, so a frame that fits in it fits in a usize.
        if (avail as u64) < HEADER_LEN as u64 + h.len {
            return Ok(None);
        }
        let total = HEADER_LEN + h.len as usize;
        let (frame_at, frame_end) = (self.consumed, self.consumed + total as u64);
        // Its descriptors arrived with the read that held its first byte.
        let mut fds = Vec::with_capacity(h.nfds as usize);
        while fds.len() < h.nfds as usize
            && self
                .fds
                .front()
                .is_some_and(|&(from, until, _)| from <= frame_at && frame_at < until)
        {
            fds.push(self.fds.pop_front().expect("front exists").2);
        }
        // A descriptor whose read ended within this frame can belong to no later frame: one
        // that no frame claimed is closed here, when dropped.
        while self
            .fds
            .front()
            .is_some_and(|&(_, until, _)| until <= frame_end)
        {
            self.fds.pop_front();
        }
        if fds.len() < h.nfds as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame announces more descriptors than arrived",
            ));
        }
        let payload = self.buf[self.start + HEADER_LEN..self.start + total].to_vec();
        self.start += total;
        self.consumed = frame_end;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEEP_BUFFER {
                self.buf = Vec::new();
            }
        }
        Ok(Some(Frame {
            kind: h.kind,
            id: h.id,
            flags: h.flags,
            aux: h.aux,
            payload,
            fds,
        }))
    }
}

/// Encodes frames into one buffer and writes it out in as few system calls as possible.
#[derive(Default)]
pub struct FrameWriter {
    buf: Vec<u8>,
    written: usize,
    /// Bytes written since the writer was made (the stream offset of `buf[written]`).
    sent: u64,
    /// Descriptors to send, each with the buffer offset of the frame that owns them.
    fds: VecDeque<(usize, Vec<OwnedFd>)>,
}

impl FrameWriter {
    pub fn new() -> FrameWriter {
        FrameWriter::default()
    }

    /// Returns the stream offset of the end of everything queued so far: once `sent` reaches
    /// it, those frames have all been written.
    pub fn queued_end(&self) -> u64 {
        self.sent + self.pending() as u64
    }

    /// Returns the number of bytes written since the writer was made.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Returns the number of bytes queued but not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    /// The bytes queued but not yet written: whole frames, unless a write stopped mid-frame.
    pub fn unwritten(&self) -> &[u8] {
        &self.buf[self.written..]
    }

    /// Queues a frame; nothing is written until `flush`.
    pub fn push(&mut self, frame: Frame) {
        let at = self.buf.len();
        frame.header().encode_into(&mut self.buf);
        self.buf.extend_from_slice(&frame.payload);
        if !frame.fds.is_empty() {
            self.fds.push_back((at, frame.fds));
        }
    }

    /// Queues a frame made of its parts, copying the payload from a borrowed slice.
    pub fn push_parts(&mut self, kind: Kind, id: u64, aux: u32, payload: &[u8]) {
        Header {
            len: payload.len() as u64,
            id,
            kind,
            flags: 0,
            nfds: 0,
            aux,
        }
        .encode_into(&mut self.buf);
        self.buf.extend_from_slice(payload);
    }

    /// `push_parts` for a frame that carries descriptors (at most `u16::MAX`).
    pub fn push_parts_with_fds(
        &mut self,
        kind: Kind,
        id: u64,
        aux: u32,
        payload: &[u8],
        fds: Vec<OwnedFd>,
    ) {
        self.push_parts_flagged(kind, id, 0, aux, payload, fds);
    }

    /// `push_parts_with_fds` with the header's `flags` byte set.
    pub fn push_parts_flagged(
        &mut self,
        kind: Kind,
        id: u64,
        flags: u8,
        aux: u32,
        payload: &[u8],
        fds: Vec<OwnedFd>,
    ) {
        let at = self.buf.len();
        let nfds = u16::try_from(fds.len()).expect("at most 65535 descriptors per frame");
        Header {
            len: payload.len() as u64,
            id,
            kind,
            flags,
            nfds,
            aux,
        }
        .encode_into(&mut self.buf);
        self.buf.extend_from_slice(payload);
        if !fds.is_empty() {
            self.fds.push_back((at, fds));
        }
    }

    /// Writes queued bytes until all are out (`Ok(true)`) or the socket would block (`Ok(false)`).
    /// `EPIPE`/`ECONNRESET` come back as errors: the peer is gone.
    pub fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        while self.written < self.buf.len() {
            let next_mark = self.fds.front().map(|(at, _)| *at);
            let (end, with_fds) = match next_mark {
                Some(at) if at == self.written => {
                    let end = self.fds.get(1).map_or(self.buf.len(), |(a, _)| *a);
                    (end, true)
                }
                Some(at) => (at, false),
                None => (self.buf.len(), false),
            };
            let iov = [IoSlice::new(&self.buf[self.written..end])];
            let raw: Vec<RawFd> = if with_fds {
                self.fds[0].1.iter().map(|f| f.as_raw_fd()).collect()
            } else {
                Vec::new()
            };
            let cmsgs = [ControlMessage::ScmRights(&raw)];
            let cm: &[ControlMessage<'_>] = if with_fds { &cmsgs } else { &[] };
            match sendmsg::<()>(fd.as_raw_fd(), &iov, cm, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(n) => {
                    if with_fds {
                        // The kernel took the descriptors with the first byte; ours may close.
                        self.fds.pop_front();
                    }
                    self.written += n;
                    self.sent += n as u64;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        self.buf.clear();
        self.written = 0;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Connection;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    #[test]
    fn frames_cross_in_order_with_their_descriptors() {
        let (a, b) = pair().unwrap();
        let mut rx = Connection::new(b).unwrap();
        // The writer runs on its own thread: 1 MiB does not fit in a socket buffer.
        let sender = std::thread::spawn(move || {
            let mut tx = FrameWriter::new();
            let mut file = tempfile_with(b"through the socket");
            file.rewind().unwrap();
            let mut f = Frame::new(Kind::Task, 2, b"with fd".to_vec());
            f.fds.push(OwnedFd::from(file));
            tx.push(Frame::new(Kind::Task, 1, b"first".to_vec()));
            tx.push(f);
            tx.push(Frame::new(Kind::Task, 3, vec![7; 1 << 20]));
            assert!(
                tx.flush(a.as_fd()).unwrap(),
                "a blocking socket takes everything"
            );
        });
        let f1 = rx.recv().unwrap().unwrap();
        assert_eq!(
            (f1.id, f1.payload.as_slice(), f1.fds.len()),
            (1, &b"first"[..], 0)
        );
        let mut f2 = rx.recv().unwrap().unwrap();
        assert_eq!((f2.id, f2.fds.len()), (2, 1));
        let mut got = String::new();
        std::fs::File::from(f2.fds.pop().unwrap())
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "through the socket");
        let f3 = rx.recv().unwrap().unwrap();
        assert_eq!((f3.id, f3.payload.len()), (3, 1 << 20));
        assert!(f3.payload.iter().all(|&x| x == 7));
        sender.join().unwrap();
        assert!(
            rx.recv().unwrap().is_none(),
            "end of stream after the last frame"
        );
    }

    #[test]
    fn nonblocking_writer_resumes_after_would_block() {
        let (a, b) = pair().unwrap();
        set_nonblocking(a.as_fd(), true).unwrap();
        let mut w = FrameWriter::new();
        // More than any socket buffer: the first flush must stop short.
        w.push(Frame::new(Kind::Ok, 9, vec![1; 8 << 20]));
        assert!(!w.flush(a.as_fd()).unwrap());
        let reader = std::thread::spawn(move || {
            let mut rx = Connection::new(b).unwrap();
            rx.recv().unwrap().unwrap()
        });
        let mut polls = 0;
        while !w.flush(a.as_fd()).unwrap() {
            let mut pfd = [nix::poll::PollFd::new(
                a.as_fd(),
                nix::poll::PollFlags::POLLOUT,
            )];
            nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(5000u16)).unwrap();
            polls += 1;
            assert!(polls < 10_000, "writer made no progress");
        }
        let f = reader.join().unwrap();
        assert_eq!((f.id, f.payload.len()), (9, 8 << 20));
    }

    #[test]
    fn corrupt_header_is_an_error_not_a_hang() {
        let (a, b) = pair().unwrap();
        let mut raw = std::fs::File::from(a);
        raw.write_all(&[0xff; HEADER_LEN]).unwrap();
        drop(raw);
        let mut rx = Connection::new(b).unwrap();
        let err = rx.recv().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_claimed_length_is_not_allocated_before_its_bytes_arrive() {
        let (a, b) = pair().unwrap();
        let mut raw = std::fs::File::from(a);
        // Stray bytes that read as a header announcing 8 GiB (under MAX_PAYLOAD), then a few.
        let mut header = Vec::new();
        Header {
            len: 8 << 30,
            id: 1,
            kind: Kind::Ok,
            flags: 0,
            nfds: 0,
            aux: 0,
        }
        .encode_into(&mut header);
        raw.write_all(&header).unwrap();
        raw.write_all(&[0; 1000]).unwrap();
        let mut rx = FrameReader::new();
        for _ in 0..3 {
            rx.fill_nonblocking(b.as_fd()).ok();
        }
        assert!(rx.next_frame().unwrap().is_none());
        assert!(
            rx.buf.len() <= 2 * READ_CHUNK,
            "the buffer grew to {} bytes for 1024 that arrived",
            rx.buf.len()
        );
    }

    #[test]
    fn the_buffer_of_a_large_frame_is_let_go_once_it_is_read() {
        let (a, b) = pair().unwrap();
        let sender = std::thread::spawn(move || {
            let mut tx = FrameWriter::new();
            tx.push(Frame::new(Kind::Ok, 1, vec![3; 8 << 20]));
            tx.push(Frame::new(Kind::Ok, 2, b"small".to_vec()));
            assert!(tx.flush(a.as_fd()).unwrap());
        });
        let mut rx = FrameReader::new();
        let mut frames = Vec::new();
        while frames.len() < 2 {
            assert!(rx.fill(b.as_fd()).unwrap() > 0, "stream ended early");
            while let Some(f) = rx.next_frame().unwrap() {
                frames.push(f);
            }
        }
        sender.join().unwrap();
        assert_eq!(frames[0].payload.len(), 8 << 20);
        assert_eq!(frames[1].payload, b"small");
        assert!(
            rx.buf.len() <= KEEP_BUFFER,
            "{} bytes kept after the frames were read",
            rx.buf.len()
        );
    }

    #[test]
    fn descriptors_no_frame_announces_are_closed() {
        let (a, b) = pair().unwrap();
        // A frame that announces no descriptor, sent with one: the write end of a pipe.
        let (pipe_r, pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut bytes = Vec::new();
        Frame::new(Kind::Ok, 5, b"payload".to_vec())
            .header()
            .encode_into(&mut bytes);
        bytes.extend_from_slice(b"payload");
        let fds = [pipe_w.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(pipe_w);
        let mut rx = FrameReader::new();
        rx.fill(b.as_fd()).unwrap();
        let f = rx.next_frame().unwrap().unwrap();
        assert_eq!((f.id, f.fds.len()), (5, 0));
        // Every write end is closed now, ours and the one that arrived: end of file (not
        // EAGAIN, which would mean one is still open).
        set_nonblocking(pipe_r.as_fd(), true).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(&pipe_r, &mut buf), Ok(0));
    }

    fn tempfile_with(bytes: &[u8]) -> std::fs::File {
        let fd = crate::memfd::create(c"ferropool-test").unwrap();
        let mut f = std::fs::File::from(fd);
        f.write_all(bytes).unwrap();
        f
    }
}
