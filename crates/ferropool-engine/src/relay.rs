//! Relay of a worker's stdout and stderr: forwarded to the parent's a whole line at a time; for
//! stderr the last lines are kept too, so that a worker's death can say what it printed last (a
//! Python traceback, the faulthandler dump of a segfault, an error from native code).
//!
//! Each stream is a pipe whose read end the dispatcher polls beside the worker's socket; `pump`
//! reads what is there without blocking. Only the dispatcher writes the parent's descriptors 1
//! and 2 on the workers' behalf, and only whole lines (all complete lines read at once go out
//! in one `write`, finished if the kernel takes them in parts), so lines of different workers
//! never interleave mid-line. A line longer than `MAX_LINE` is cut into pieces of that size;
//! an unterminated last line is forwarded, with a newline, when the worker is gone.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// Bytes kept of the worker's last output lines.
pub const TAIL_BYTES: usize = 4096;
/// Longest piece written at once; longer lines are forwarded in pieces.
pub const MAX_LINE: usize = 64 * 1024;

/// Where a relay forwards lines.
#[derive(Clone, Debug)]
pub enum Sink {
    /// The parent's file descriptor 1.
    Stdout,
    /// The parent's file descriptor 2.
    Stderr,
    /// Any other descriptor (tests).
    Fd(Arc<OwnedFd>),
}

impl Sink {
    /// Writes all of `bytes`; errors (a closed or non-blocking and full descriptor) drop the
    /// rest, since the parent's output is the only place they could be reported.
    fn write_all(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let written = match self {
                Sink::Stdout => nix::unistd::write(io::stdout().as_fd(), bytes),
                Sink::Stderr => nix::unistd::write(io::stderr().as_fd(), bytes),
                Sink::Fd(fd) => nix::unistd::write(fd.as_fd(), bytes),
            };
            match written {
                Ok(0) => return,
                Ok(n) => bytes = &bytes[n..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}

/// The read end of one worker's output pipe and what has been read from it.
pub struct LineRelay {
    pipe: OwnedFd,
    sink: Sink,
    /// Keep the last `TAIL_BYTES` for crash reports (stderr only).
    keep_tail: bool,
    partial: Vec<u8>,
    tail: VecDeque<u8>,
    /// Bytes were dropped from the front of `tail`, so it may start mid-line.
    cut: bool,
    eof: bool,
}

impl LineRelay {
    /// Wraps the read end of a pipe (switched to non-blocking mode) whose lines go to `sink`;
    /// with `keep_tail`, the last lines are kept for `tail`.
    pub fn new(pipe: OwnedFd, sink: Sink, keep_tail: bool) -> io::Result<LineRelay> {
        crate::channel::set_nonblocking(pipe.as_fd(), true)?;
        let tail = VecDeque::with_capacity(if keep_tail { TAIL_BYTES } else { 0 });
        Ok(LineRelay {
            pipe,
            sink,
            keep_tail,
            partial: Vec::new(),
            tail,
            cut: false,
            eof: false,
        })
    }

    /// The pipe, for polling.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// Returns true once the writer side is closed and everything was read.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Reads everything available now, forwarding complete lines; never blocks.
    pub fn pump(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        while !self.eof {
            match nix::unistd::read(&self.pipe, &mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.accept(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break, // EAGAIN: nothing more for now
            }
        }
        if self.eof {
            self.flush_partial();
        }
    }

    /// Forwards a last unterminated line, if any (the worker has gone).
    pub fn flush_partial(&mut self) {
        if !self.partial.is_empty() {
            let mut line = std::mem::take(&mut self.partial);
            line.push(b'\n');
            self.remember(&line[..line.len() - 1]);
            self.sink.write_all(&line);
        }
    }

    /// Returns the last bytes the worker wrote (at most `TAIL_BYTES`, starting at a line);
    /// empty unless made with `keep_tail`.
    pub fn tail(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.tail.iter().copied().collect();
        out.extend_from_slice(&self.partial);
        let mut cut = self.cut;
        if out.len() > TAIL_BYTES {
            out.drain(..out.len() - TAIL_BYTES);
            cut = true;
        }
        if cut {
            if let Some(nl) = out.iter().position(|&b| b == b'\n') {
                out.drain(..=nl);
            }
        }
        out
    }

    /// Forwards every complete line now in `partial` plus `bytes` in one write and keeps the
    /// unterminated rest. Lines of `MAX_LINE` bytes or more are cut into pieces, each forwarded
    /// as a line of its own, so that no write ever ends mid-line.
    fn accept(&mut self, bytes: &[u8]) {
        let start = self.partial.len();
        self.partial.extend_from_slice(bytes);
        let end = self.partial[start..]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |nl| start + nl + 1);
        let mut out = Vec::with_capacity(end + 1);
        for line in self.partial[..end].split_inclusive(|&b| b == b'\n') {
            for piece in line.chunks(MAX_LINE) {
                out.extend_from_slice(piece);
                if !piece.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
        }
        let mut rest = end;
        while self.partial.len() - rest >= MAX_LINE {
            out.extend_from_slice(&self.partial[rest..rest + MAX_LINE]);
            out.push(b'\n');
            rest += MAX_LINE;
        }
        if out.is_empty() {
            return;
        }
        self.partial.drain(..rest);
        self.sink.write_all(&out);
        self.remember(&out);
    }

    fn remember(&mut self, line: &[u8]) {
        if !self.keep_tail {
            return;
        }
        if line.len() > TAIL_BYTES {
            self.cut = true;
        }
        let line = &line[line.len().saturating_sub(TAIL_BYTES)..];
        let over = (self.tail.len() + line.len()).saturating_sub(TAIL_BYTES);
        if over > 0 {
            self.tail.drain(..over.min(self.tail.len()));
            self.cut = true;
        }
        self.tail.extend(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn keeps_the_last_lines_and_the_unterminated_rest() {
        let (r, w) = pipe();
        let mut relay = LineRelay::new(r, Sink::Stderr, true).unwrap();
        let mut w = std::fs::File::from(w);
        for i in 0..2000 {
            writeln!(w, "line {i}").unwrap();
        }
        write!(w, "Segmentation fault").unwrap();
        drop(w);
        relay.pump();
        assert!(relay.at_eof());
        let tail = String::from_utf8(relay.tail()).unwrap();
        assert!(tail.len() <= TAIL_BYTES);
        assert!(
            tail.starts_with("line "),
            "the tail starts at a line: {:?}",
            &tail[..20]
        );
        assert!(tail.ends_with("line 1999\nSegmentation fault"), "{tail:?}");
    }

    /// A pipe whose ends close on exec, so that processes other tests start meanwhile cannot
    /// keep its write end open.
    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    /// Pumps `r` until its pipe reports end of file, waiting for it to become readable (at
    /// most 5 s in all). A process forked meanwhile by another test holds the write ends until
    /// it execs, so end of file may come a little after the writers here are dropped.
    fn pump_to_eof(r: &mut LineRelay) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        r.pump();
        while !r.at_eof() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "the relay never saw end of file");
            let mut pfd = libc::pollfd {
                fd: r.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
            r.pump();
        }
    }

    /// Reads everything written to a pipe until every writer has closed it.
    fn read_to_end(r: OwnedFd) -> String {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut out).unwrap();
        out
    }

    #[test]
    fn lines_of_two_workers_written_in_pieces_never_interleave() {
        let (sink_r, sink_w) = pipe();
        let sink = Sink::Fd(Arc::new(sink_w));
        let reader = std::thread::spawn(move || read_to_end(sink_r));
        let mut relays = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..2 {
            let (r, w) = pipe();
            relays.push(LineRelay::new(r, sink.clone(), false).unwrap());
            writers.push(std::fs::File::from(w));
        }
        drop(sink);
        // Each line goes out in uneven pieces, alternating between the two workers, with a
        // pump after each piece: the relay sees every line cut mid-way.
        for i in 0..200 {
            for (n, w) in writers.iter_mut().enumerate() {
                let line = format!("{}{}\n", n, "x".repeat(3000 + i));
                for piece in line.as_bytes().chunks(700) {
                    w.write_all(piece).unwrap();
                    relays[n].pump();
                }
            }
        }
        write!(writers[1], "unterminated").unwrap();
        drop(writers);
        for r in &mut relays {
            pump_to_eof(r);
            assert!(r.tail().is_empty(), "no tail is kept for stdout");
        }
        drop(relays);
        let out = reader.join().unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 401);
        for line in &lines[..400] {
            let body = &line[1..];
            assert!(
                body.len() >= 3000 && body.bytes().all(|b| b == b'x'),
                "a line was cut or mixed: {:?}...",
                &line[..40]
            );
        }
        assert_eq!(lines[400], "unterminated");
    }

    #[test]
    fn a_line_longer_than_max_line_goes_out_in_whole_pieces() {
        let (sink_r, sink_w) = pipe();
        let reader = std::thread::spawn(move || read_to_end(sink_r));
        let (r, w) = pipe();
        let mut relay = LineRelay::new(r, Sink::Fd(Arc::new(sink_w)), true).unwrap();
        let mut w = std::fs::File::from(w);
        let long = "y".repeat(MAX_LINE * 2 + 10);
        for piece in long.as_bytes().chunks(4096) {
            w.write_all(piece).unwrap();
            relay.pump();
        }
        w.write_all(b"\nshort\n").unwrap();
        drop(w);
        relay.pump();
        drop(relay);
        let out = reader.join().unwrap();
        let lens: Vec<usize> = out.lines().map(str::len).collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 10, 5]);
    }

    #[test]
    fn pump_never_blocks_on_an_open_empty_pipe() {
        let (r, w) = pipe();
        let mut relay = LineRelay::new(r, Sink::Stderr, true).unwrap();
        relay.pump();
        assert!(!relay.at_eof());
        assert!(relay.tail().is_empty());
        drop(w);
    }
}
