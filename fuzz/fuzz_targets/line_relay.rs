//! A worker's output relay fed arbitrary output through a real pipe, in the chunks the input
//! chooses, pumped whenever the input says (and whenever the pipe is full), forwarding into a
//! memory file.
//!
//! Checked after every pump against a model of the whole output so far: the relay has
//! forwarded exactly its complete lines, each cut into pieces of at most `MAX_LINE` bytes and
//! each piece ended with a newline, plus the full `MAX_LINE` pieces of the unterminated rest
//! (so every byte arrives, in order, and no line is longer than `MAX_LINE`); `tail` holds the
//! last `TAIL_BYTES` of that output at most, from the first line that starts in them; at end
//! of file the unterminated rest is forwarded with a newline.

#![no_main]

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use arbitrary::Arbitrary;
use ferropool_engine::memfd;
use ferropool_engine::relay::{LineRelay, Sink, Target, MAX_LINE, TAIL_BYTES};
use libfuzzer_sys::fuzz_target;

/// Most bytes one input writes in all.
const MAX_OUTPUT: usize = 2 << 20;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Bytes written to the pipe (in as many writes as it takes).
    Write(Vec<u8>),
    /// `len % 256 KiB` copies of `byte`: lines longer than `MAX_LINE` from small inputs.
    Run {
        len: u32,
        byte: u8,
    },
    /// `len % 8 KiB` bytes of `line` repeated: many lines at once.
    Lines {
        line: Vec<u8>,
        len: u16,
    },
    Pump,
}

#[derive(Arbitrary, Debug)]
struct Input {
    keep_tail: bool,
    ops: Vec<Op>,
}

/// What the relay must have forwarded after reading `input`, and the rest it keeps back.
fn model(input: &[u8]) -> (Vec<u8>, &[u8]) {
    let end = input
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |nl| nl + 1);
    let mut out = Vec::with_capacity(input.len() + input.len() / MAX_LINE + 1);
    for line in input[..end].split_inclusive(|&b| b == b'\n') {
        for piece in line.chunks(MAX_LINE) {
            out.extend_from_slice(piece);
            if !piece.ends_with(b"\n") {
                out.push(b'\n');
            }
        }
    }
    let mut rest = &input[end..];
    while rest.len() >= MAX_LINE {
        out.extend_from_slice(&rest[..MAX_LINE]);
        out.push(b'\n');
        rest = &rest[MAX_LINE..];
    }
    (out, rest)
}

/// What `tail` must return when `all` is everything forwarded or kept back.
fn model_tail(all: &[u8]) -> &[u8] {
    if all.len() <= TAIL_BYTES {
        return all;
    }
    let w = &all[all.len() - TAIL_BYTES..];
    match w.iter().position(|&b| b == b'\n') {
        Some(nl) => &w[nl + 1..],
        None => w,
    }
}

fn sink_contents(sink: &OwnedFd) -> Vec<u8> {
    let len = memfd::fstat(sink.as_fd()).unwrap().st_size as usize;
    let mut out = vec![0u8; len];
    let n = nix::sys::uio::pread(sink, &mut out, 0).unwrap();
    assert_eq!(n, len);
    out
}

struct Run {
    relay: LineRelay,
    /// The worker's end of the pipe; dropped for end of file.
    pipe: Option<OwnedFd>,
    sink: Arc<OwnedFd>,
    written: Vec<u8>,
    keep_tail: bool,
}

impl Run {
    fn write(&mut self, mut bytes: &[u8]) {
        let room = MAX_OUTPUT.saturating_sub(self.written.len());
        bytes = &bytes[..bytes.len().min(room)];
        while !bytes.is_empty() {
            match nix::unistd::write(self.pipe.as_ref().expect("pipe open"), bytes) {
                Ok(n) => {
                    self.written.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                }
                Err(nix::errno::Errno::EAGAIN) => self.pump(),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => panic!("write to the pipe: {e}"),
            }
        }
    }

    /// Pumps (everything written has been read afterwards) and checks the relay's state.
    fn pump(&mut self) {
        self.relay.pump();
        let (forwarded, rest) = model(&self.written);
        let got = sink_contents(&self.sink);
        if got != forwarded {
            let at = got
                .iter()
                .zip(&forwarded)
                .take_while(|(a, b)| a == b)
                .count();
            panic!(
                "forwarded {} bytes where {} were due; first difference at {at}",
                got.len(),
                forwarded.len()
            );
        }
        for line in got.split(|&b| b == b'\n') {
            assert!(line.len() <= MAX_LINE, "a line of {} bytes", line.len());
        }
        let tail = self.relay.tail();
        assert!(tail.len() <= TAIL_BYTES);
        if self.keep_tail {
            let all = [forwarded.as_slice(), rest].concat();
            assert!(tail == model_tail(&all), "the tail differs");
        } else {
            assert!(tail.is_empty(), "a tail kept without keep_tail");
        }
    }
}

fuzz_target!(|input: Input| {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .expect("pipe2");
    let sink = Arc::new(memfd::create(c"ferropool-fuzz-relay").unwrap());
    let relay = LineRelay::new(r, Sink::new(Target::Fd(sink.clone())), input.keep_tail).unwrap();
    let mut run = Run {
        relay,
        pipe: Some(w),
        sink,
        written: Vec::new(),
        keep_tail: input.keep_tail,
    };
    for op in input.ops {
        match op {
            Op::Write(bytes) => run.write(&bytes),
            Op::Run { len, byte } => run.write(&vec![byte; len as usize % (256 << 10)]),
            Op::Lines { line, len } => {
                if !line.is_empty() {
                    let n = len as usize % (8 << 10);
                    let bytes: Vec<u8> = line.iter().copied().cycle().take(n).collect();
                    run.write(&bytes);
                }
            }
            Op::Pump => run.pump(),
        }
    }
    run.pump();
    assert!(!run.relay.at_eof(), "end of file while the pipe is open");
    run.pipe = None;
    run.relay.pump();
    assert!(
        run.relay.at_eof(),
        "no end of file once the pipe is closed and read"
    );
    let (mut forwarded, rest) = model(&run.written);
    if !rest.is_empty() {
        forwarded.extend_from_slice(rest);
        forwarded.push(b'\n');
    }
    assert!(
        sink_contents(&run.sink) == forwarded,
        "the unterminated rest at end of file"
    );
    let tail = run.relay.tail();
    if run.keep_tail {
        let (f, rest) = model(&run.written);
        assert!(
            tail == model_tail(&[f.as_slice(), rest].concat()),
            "the tail at end of file"
        );
    } else {
        assert!(tail.is_empty(), "a tail kept without keep_tail");
    }
    // Pumping after the end changes nothing.
    run.relay.pump();
    assert!(sink_contents(&run.sink) == forwarded);
});
