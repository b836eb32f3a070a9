//! The worker's `Connection` reading an arbitrary stream from its parent, sent in the chunks the
//! input chooses by a peer thread that then reads the worker's answers. The worker answers
//! every task it is handed, the way a worker does.
//!
//! Checked against a model that decodes the same bytes: the frames handed out are the stream's
//! frames in order, less the tasks that a later `Cancel` removed and those `Cancel`s; every task
//! in the stream gets exactly one answer (`Ok` if handed out, `Cancel` if removed); an error
//! comes only for a corrupt header or missing descriptors; end of stream ends `recv`.

#![no_main]

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use arbitrary::Arbitrary;
use ferropool_engine::channel::{pair, FrameReader};
use ferropool_engine::connection::Connection;
use ferropool_engine::frame::{Header, Kind, HEADER_LEN};
use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{sendmsg, shutdown, MsgFlags, Shutdown};

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw bytes in one write.
    Bytes(Vec<u8>),
    /// A well-formed frame announcing no descriptors, in one write.
    Frame {
        kind: u8,
        id: u8,
        flags: u8,
        payload: u8,
    },
}

/// A frame as the model decodes it.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    kind: Kind,
    id: u64,
    flags: u8,
    aux: u32,
    payload: Vec<u8>,
}

/// Decodes `stream` into frames; the flag says whether it ends in a corrupt header or one
/// that announces descriptors (an error), rather than in an incomplete frame.
fn model(stream: &[u8]) -> (Vec<(Model, u16)>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(h) = stream.get(at..at + HEADER_LEN) {
        let Ok(h) = Header::decode(h.try_into().unwrap()) else {
            return (out, true);
        };
        let Some(payload) = stream.get(at + HEADER_LEN..at + HEADER_LEN + h.len as usize) else {
            break;
        };
        if h.nfds > 0 {
            return (out, true);
        }
        out.push((
            Model {
                kind: h.kind,
                id: h.id,
                flags: h.flags,
                aux: h.aux,
                payload: payload.to_vec(),
            },
            h.nfds,
        ));
        at += HEADER_LEN + h.len as usize;
    }
    (out, false)
}

/// The parent's side: sends every chunk, closes its writing half, then reads answers until
/// the worker's end is closed. Returns the answers' `(kind, id)`.
fn parent(sock: OwnedFd, chunks: Vec<Vec<u8>>) -> Vec<(Kind, u64)> {
    'send: for chunk in &chunks {
        let mut done = 0;
        while done < chunk.len() {
            match sendmsg::<()>(
                sock.as_raw_fd(),
                &[IoSlice::new(&chunk[done..])],
                &[],
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => done += n,
                Err(nix::errno::Errno::EINTR) => {}
                // The worker gave up on the stream and closed its end.
                Err(_) => break 'send,
            }
        }
    }
    let _ = shutdown(sock.as_raw_fd(), Shutdown::Write);
    let mut reader = FrameReader::new();
    let mut answers = Vec::new();
    loop {
        while let Some(f) = reader
            .next_frame()
            .expect("the worker writes well-formed frames")
        {
            answers.push((f.kind, f.id));
        }
        match reader.fill(std::os::fd::AsFd::as_fd(&sock)) {
            Ok(0) => return answers,
            Ok(_) => {}
            // The worker gave up on a corrupt stream, closing its end with bytes unread.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return answers,
            Err(e) => panic!("reading answers: {e}"),
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut chunks = Vec::new();
    let mut total = 0;
    for op in ops {
        let bytes = match op {
            Op::Bytes(b) => b,
            Op::Frame {
                kind,
                id,
                flags,
                payload,
            } => {
                let mut b = Vec::new();
                Header {
                    len: payload as u64,
                    id: (id % 8) as u64,
                    kind: Kind::from_u8(kind % 12 + 1).expect("kinds 1..=12"),
                    flags,
                    nfds: 0,
                    aux: 0,
                }
                .encode_into(&mut b);
                b.resize(HEADER_LEN + payload as usize, flags);
                b
            }
        };
        total += bytes.len();
        if total > 1 << 20 {
            break;
        }
        chunks.push(bytes);
    }
    let stream: Vec<u8> = chunks.concat();
    let (frames, corrupt) = model(&stream);

    let (parent_end, worker_end) = pair().expect("socketpair");
    let peer = std::thread::spawn(move || parent(parent_end, chunks));
    let mut conn = Connection::new(worker_end).expect("a connection over a fresh socket");
    let mut handed = Vec::new();
    let failed = loop {
        match conn.recv() {
            Ok(Some(f)) => {
                assert!(f.fds.is_empty());
                if f.kind == Kind::Task {
                    conn.answer(Kind::Ok, f.id, 0, 0, b"", Vec::new())
                        .expect("the parent reads answers");
                }
                handed.push(Model {
                    kind: f.kind,
                    id: f.id,
                    flags: f.flags,
                    aux: f.aux,
                    payload: f.payload,
                });
            }
            Ok(None) => break false,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
                break true;
            }
        }
    };
    conn.flush().expect("answers written");
    drop(conn);
    let answers = peer.join().expect("the parent thread");
    assert_eq!(failed, corrupt, "an error iff the stream is corrupt");

    // Replay the model: every frame is handed out in order, except a task removed by a later
    // cancel (answered `Cancel`) and that cancel. Matching is greedy, which is exact unless the
    // stream holds two equal frames (then which of them a cancel removed depends on timing,
    // and only the counts below are checked). After an error, frames decoded in the same batch
    // may never be handed out, so only a prefix is checked.
    let duplicates = frames
        .iter()
        .enumerate()
        .any(|(i, (a, _))| frames[..i].iter().any(|(b, _)| a == b));
    let mut h = handed.iter().peekable();
    let mut removed: Vec<u64> = Vec::new();
    let mut pending: Vec<u64> = Vec::new(); // ids of tasks not handed out (yet)
    let mut exact = !duplicates;
    for (i, (m, _)) in frames.iter().enumerate() {
        if h.peek().is_some_and(|x| *x == m) {
            h.next();
            continue;
        }
        let explained = match m.kind {
            Kind::Task => {
                pending.push(m.id);
                true
            }
            Kind::Cancel => match pending.iter().position(|&id| id == m.id) {
                Some(pos) => {
                    removed.push(pending.remove(pos));
                    true
                }
                None => false,
            },
            _ => false,
        };
        if !explained {
            assert!(
                failed || duplicates,
                "frame {i} ({:?} {}) was not handed out",
                m.kind,
                m.id
            );
            exact = false;
            break;
        }
    }
    if exact {
        assert!(
            h.next().is_none(),
            "a frame was handed out that the stream does not hold"
        );
        if !failed {
            assert!(
                pending.is_empty(),
                "tasks neither handed out nor cancelled: {pending:?}"
            );
        }
    }
    let ids = |kind: Kind, of: &mut dyn Iterator<Item = (Kind, u64)>| {
        let mut v: Vec<u64> = of.filter(|a| a.0 == kind).map(|a| a.1).collect();
        v.sort_unstable();
        v
    };
    let oks = ids(Kind::Ok, &mut answers.iter().copied());
    let cancels = ids(Kind::Cancel, &mut answers.iter().copied());
    assert_eq!(
        oks.len() + cancels.len(),
        answers.len(),
        "answers of other kinds"
    );
    let handed_tasks = ids(Kind::Task, &mut handed.iter().map(|m| (m.kind, m.id)));
    let stream_tasks = ids(Kind::Task, &mut frames.iter().map(|(m, _)| (m.kind, m.id)));
    if failed {
        // A worker that gives up closes its socket with the parent's bytes unread, which may
        // reset the connection before every answer is read: none may be invented, though.
        let mut left = handed_tasks;
        for id in oks {
            let i = left
                .iter()
                .position(|&x| x == id)
                .expect("an Ok for no task handed out");
            left.remove(i);
        }
    } else {
        assert_eq!(oks, handed_tasks, "answers of the tasks handed out");
        // Every task of the stream is answered exactly once, Ok or Cancel.
        let mut answered = [oks, cancels.clone()].concat();
        answered.sort_unstable();
        assert_eq!(answered, stream_tasks, "tasks answered once each");
        if exact {
            removed.sort_unstable();
            assert_eq!(cancels, removed, "tasks answered Cancel");
        }
    }
});
