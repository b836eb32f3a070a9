//! `FrameReader` fed arbitrary bytes over a real socket pair, in the chunks the input chooses,
//! some with pipe write ends attached as `SCM_RIGHTS`, read whenever the input says (and
//! whenever the socket is full).
//!
//! Checked against a model that decodes the same bytes: every frame that comes out is the next
//! one in the stream, with exactly the descriptors its header announces, each sent with a
//! message whose first byte came in the same read as the frame's first byte, in sending order;
//! `None` only when the next frame is incomplete, an error only for a corrupt header or missing
//! descriptors; the buffer never grows beyond twice what arrived plus 512 KiB; once the stream
//! has ended on a frame boundary every descriptor no frame took is closed, and in the end none
//! is left open.

#![no_main]

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use arbitrary::Arbitrary;
use ferropool_engine::channel::{pair, set_nonblocking, FrameReader};
use ferropool_engine::frame::{Frame, Header, Kind, HEADER_LEN};
use ferropool_fuzz::{inode, open_fds, Probe};
use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// Most bytes one input sends in all.
const MAX_STREAM: usize = 4 << 20;
/// Most descriptors one input sends in all.
const MAX_FDS: usize = 64;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw bytes in one `sendmsg`, with `fds % 4` descriptors attached.
    Bytes { data: Vec<u8>, fds: u8 },
    /// `len % 1 MiB` copies of `byte`: large streams from small inputs.
    Run { len: u32, byte: u8, fds: u8 },
    /// A well-formed frame in one `sendmsg`, announcing `nfds % 4` descriptors and carrying
    /// `sent % 4` (as many as announced when `sent` is 0).
    Frame {
        kind: u8,
        id: u64,
        flags: u8,
        aux: u32,
        payload: u16,
        nfds: u8,
        sent: u8,
    },
    /// One read, then every complete frame taken out.
    Read,
}

struct Run {
    reader: FrameReader,
    /// The sending end; dropped for end of stream.
    tx: Option<OwnedFd>,
    rx: OwnedFd,
    /// Every byte sent, in order (the model's input).
    stream: Vec<u8>,
    /// Bytes received so far.
    received: u64,
    /// Stream range of each read.
    reads: Vec<(u64, u64)>,
    /// The pipes whose write ends were sent, in sending order.
    probes: Vec<Probe>,
    /// Pipe inode -> (index in `probes`, stream offset of the message that carried it).
    sent: HashMap<u64, (usize, u64)>,
    /// Stream offset of the next frame the model expects.
    pos: u64,
    /// Index in `probes` of the last descriptor handed out in a frame.
    last_fd: Option<usize>,
    /// The reader has returned an error: the connection would be dropped.
    failed: bool,
}

impl Run {
    fn send(&mut self, bytes: &[u8], nfds: usize) {
        if self.failed || self.stream.len() + bytes.len() > MAX_STREAM {
            return;
        }
        let nfds = if bytes.is_empty() {
            0 // a descriptor needs at least one byte to travel with
        } else {
            nfds.min(MAX_FDS - self.probes.len())
        };
        let first = self.probes.len();
        for _ in 0..nfds {
            let p = Probe::new();
            self.sent
                .insert(p.ino, (self.probes.len(), self.stream.len() as u64));
            self.probes.push(p);
        }
        let raw: Vec<i32> = self.probes[first..]
            .iter()
            .map(|p| p.write.as_ref().expect("not sent yet").as_raw_fd())
            .collect();
        let mut done = 0;
        while done < bytes.len() {
            let cmsg = [ControlMessage::ScmRights(&raw)];
            let cm: &[ControlMessage<'_>] = if done == 0 && !raw.is_empty() {
                &cmsg
            } else {
                &[]
            };
            match sendmsg::<()>(
                self.tx.as_ref().expect("sending end open").as_raw_fd(),
                &[IoSlice::new(&bytes[done..])],
                cm,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(n) => {
                    if done == 0 {
                        // The kernel holds its own copies now; ours close.
                        for p in &mut self.probes[first..] {
                            p.write = None;
                        }
                    }
                    self.stream.extend_from_slice(&bytes[done..done + n]);
                    done += n;
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    self.read();
                    if self.failed {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => panic!("sendmsg: {e}"),
            }
        }
    }

    fn read(&mut self) {
        if self.failed {
            return;
        }
        match self.reader.fill_nonblocking(self.rx.as_fd()) {
            Ok(n) => {
                self.reads.push((self.received, self.received + n as u64));
                self.received += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read from a healthy socket failed: {e}"),
        }
        let cap = self.reader.buffered_capacity() as u64;
        assert!(
            cap <= 2 * self.received + (512 << 10),
            "the buffer holds {cap} bytes for {} received",
            self.received
        );
        self.drain();
    }

    /// The header the model sees at `pos`, if its bytes have arrived.
    fn model_header(&self) -> Option<Result<Header, ()>> {
        let at = self.pos as usize;
        if self.received < self.pos + HEADER_LEN as u64 {
            return None;
        }
        let h: &[u8; HEADER_LEN] = self.stream[at..at + HEADER_LEN].try_into().unwrap();
        Some(Header::decode(h).map_err(|_| ()))
    }

    fn drain(&mut self) {
        loop {
            let model = self.model_header();
            match self.reader.next_frame() {
                Ok(Some(f)) => {
                    let h = match model {
                        Some(Ok(h)) => h,
                        other => panic!("a frame came out where the model has {other:?}"),
                    };
                    self.check_frame(&f, &h);
                    self.pos += HEADER_LEN as u64 + h.len;
                }
                Ok(None) => match model {
                    None => return,
                    Some(Ok(h)) => {
                        assert!(
                            self.pos + HEADER_LEN as u64 + h.len > self.received,
                            "a complete frame at {} was not returned",
                            self.pos
                        );
                        return;
                    }
                    Some(Err(())) => panic!("a corrupt header at {} was not reported", self.pos),
                },
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                    match model {
                        Some(Err(())) => {}
                        Some(Ok(h)) => assert!(
                            h.nfds > 0,
                            "a frame that announces no descriptor failed: {e}"
                        ),
                        None => panic!("an error before a whole header arrived: {e}"),
                    }
                    self.failed = true;
                    return;
                }
            }
        }
    }

    fn check_frame(&mut self, f: &Frame, h: &Header) {
        let at = self.pos as usize + HEADER_LEN;
        assert_eq!(
            (f.kind, f.id, f.flags, f.aux),
            (h.kind, h.id, h.flags, h.aux)
        );
        assert!(
            f.payload == self.stream[at..at + h.len as usize],
            "payload differs"
        );
        assert_eq!(f.fds.len(), h.nfds as usize, "descriptors handed out");
        let frame_read = self.read_holding(self.pos);
        for fd in &f.fds {
            let (index, carried_at) = *self
                .sent
                .get(&inode(fd.as_fd()))
                .expect("a descriptor that was never sent");
            assert!(
                self.last_fd.is_none_or(|last| index > last),
                "descriptor {index} handed out after {:?}",
                self.last_fd
            );
            self.last_fd = Some(index);
            assert_eq!(
                self.read_holding(carried_at),
                frame_read,
                "a descriptor from another read's message"
            );
        }
    }

    fn read_holding(&self, offset: u64) -> usize {
        self.reads
            .iter()
            .position(|&(from, until)| from <= offset && offset < until)
            .expect("offset was read")
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let before = open_fds();
    let (tx, rx) = pair().expect("socketpair");
    set_nonblocking(rx.as_fd(), true).unwrap();
    let mut run = Run {
        reader: FrameReader::new(),
        tx: Some(tx),
        rx,
        stream: Vec::new(),
        received: 0,
        reads: Vec::new(),
        probes: Vec::new(),
        sent: HashMap::new(),
        pos: 0,
        last_fd: None,
        failed: false,
    };
    for op in ops {
        match op {
            Op::Bytes { data, fds } => run.send(&data, fds as usize % 4),
            Op::Run { len, byte, fds } => {
                run.send(&vec![byte; len as usize % (1 << 20)], fds as usize % 4)
            }
            Op::Frame {
                kind,
                id,
                flags,
                aux,
                payload,
                nfds,
                sent,
            } => {
                let nfds = nfds % 4;
                let mut bytes = Vec::new();
                Header {
                    len: payload as u64,
                    id,
                    kind: Kind::from_u8(kind % 12 + 1).expect("kinds 1..=12"),
                    flags,
                    nfds: nfds as u16,
                    aux,
                }
                .encode_into(&mut bytes);
                bytes.resize(HEADER_LEN + payload as usize, kind);
                let sent = if sent == 0 { nfds } else { sent % 4 };
                run.send(&bytes, sent as usize);
            }
            Op::Read => run.read(),
        }
        if run.failed {
            break;
        }
    }
    // End of stream: whatever is left must be an incomplete frame.
    run.tx = None;
    while !run.failed && !run.reader.at_eof() {
        run.read();
    }
    if !run.failed {
        assert_eq!(run.received, run.stream.len() as u64, "bytes lost");
        match run.model_header() {
            None => {}
            Some(Ok(h)) => assert!(run.pos + HEADER_LEN as u64 + h.len > run.received),
            Some(Err(())) => panic!("a corrupt header at end of stream went unreported"),
        }
        if run.pos == run.received {
            // Every byte went out in frames, so no descriptor can be claimed any more: each one
            // sent is closed already, the reader still alive (the frames were dropped).
            for (i, p) in run.probes.iter_mut().enumerate() {
                p.write = None;
                assert!(
                    p.all_writers_closed(),
                    "descriptor {i} held after the last frame"
                );
            }
        }
    }
    let Run {
        reader,
        mut probes,
        rx,
        ..
    } = run;
    drop((reader, rx));
    for (i, p) in probes.iter_mut().enumerate() {
        // Ours is still open when the reader failed before the message could be sent.
        p.write = None;
        assert!(p.all_writers_closed(), "descriptor {i} was never closed");
    }
    drop(probes);
    assert_eq!(open_fds(), before, "descriptors leaked");
});
