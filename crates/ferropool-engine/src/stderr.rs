//! Relay of a worker's stderr: forwarded to the parent's stderr a whole line at a time, with the
//! last lines kept so that a worker's death can say what it printed last (a Python traceback,
//! the faulthandler dump of a segfault, an error from native code).
//!
//! The worker's stderr is a pipe whose read end the dispatcher polls beside the worker's socket;
//! `pump` reads what is there without blocking. Whole lines go to file descriptor 2 in one
//! `write` each, so lines of different workers never interleave mid-line; a line longer than
//! `MAX_LINE` is cut into pieces of that size.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Bytes kept of the worker's last output lines.
pub const TAIL_BYTES: usize = 4096;
/// Longest piece written at once; longer lines are forwarded in pieces.
const MAX_LINE: usize = 64 * 1024;

/// The read end of one worker's stderr pipe and what has been read from it.
pub struct StderrRelay {
    pipe: OwnedFd,
    partial: Vec<u8>,
    tail: VecDeque<u8>,
    /// Bytes were dropped from the front of `tail`, so it may start mid-line.
    cut: bool,
    eof: bool,
}

impl StderrRelay {
    /// Wraps the read end of a pipe; it is switched to non-blocking mode.
    pub fn new(pipe: OwnedFd) -> io::Result<StderrRelay> {
        crate::channel::set_nonblocking(pipe.as_fd(), true)?;
        Ok(StderrRelay { pipe, partial: Vec::new(), tail: VecDeque::with_capacity(TAIL_BYTES), cut: false, eof: false })
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
            let line = std::mem::take(&mut self.partial);
            self.remember(&line);
            forward(&[line.as_slice(), b"\n"].concat());
        }
    }

    /// Returns the last bytes the worker wrote (at most `TAIL_BYTES`, starting at a line).
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

    fn accept(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n').or((self.partial.len() >= MAX_LINE).then_some(MAX_LINE - 1)) {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            forward(&line);
            self.remember(&line);
        }
    }

    fn remember(&mut self, line: &[u8]) {
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

/// Writes one line to the parent's stderr; errors (closed or full stderr) are ignored, since
/// stderr is the only place they could be reported.
fn forward(line: &[u8]) {
    let _ = nix::unistd::write(io::stderr().as_fd(), line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn keeps_the_last_lines_and_the_unterminated_rest() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut relay = StderrRelay::new(r).unwrap();
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
        assert!(tail.starts_with("line "), "the tail starts at a line: {:?}", &tail[..20]);
        assert!(tail.ends_with("line 1999\nSegmentation fault"), "{tail:?}");
    }

    #[test]
    fn pump_never_blocks_on_an_open_empty_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut relay = StderrRelay::new(r).unwrap();
        relay.pump();
        assert!(!relay.at_eof());
        assert!(relay.tail().is_empty());
        drop(w);
    }
}
