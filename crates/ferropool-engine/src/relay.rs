//! Relay of a worker's stdout and stderr: forwarded to the parent's a whole line at a time; for
//! stderr the last lines are kept too, so that a worker's death can say what it printed last (a
//! Python traceback, the faulthandler dump of a segfault, an error from native code).
//!
//! Each stream is a pipe whose read end the dispatcher polls beside the worker's socket; `pump`
//! reads what is there without blocking. Only the dispatcher writes the parent's descriptors 1
//! and 2 on the workers' behalf, and only whole lines, so lines of different workers never
//! interleave mid-line. A line longer than `MAX_LINE` is cut into pieces of that size; an
//! unterminated last line is forwarded, with a newline, when the worker is gone.
//!
//! Writing never stalls the dispatcher, which schedules every task: the parent's stdout may be a
//! pipe nobody reads for a while (`| less`, a paused terminal, a supervisor). An `Outlet` writes
//! only what the descriptor takes without blocking (it polls for room, then writes at most
//! `PIPE_BUF` bytes, which a pipe with room takes whole), and keeps the rest for the dispatcher to
//! write when its poll says there is room. Once `MAX_PENDING` bytes wait, the relays stop reading
//! the workers' pipes, so a worker that prints waits for the reader as it would writing to the
//! parent's descriptor itself, and a reader that keeps reading, however slowly, loses nothing.
//! Only a reader that has taken nothing for `STALL` loses output: whole pieces of it are then
//! dropped and counted, so that no worker waits longer, and a line saying how much was dropped goes
//! out once the reader catches up. The parent's descriptor is never switched to non-blocking
//! mode: it is the program's, and other writers share it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes kept of the worker's last output lines.
pub const TAIL_BYTES: usize = 4096;
/// Longest piece written at once; longer lines are forwarded in pieces.
pub const MAX_LINE: usize = 64 * 1024;
/// Bytes of output waiting for a slow reader past which the relays stop reading workers' pipes.
pub const MAX_PENDING: usize = 1 << 20;
/// How long a reader may take nothing while `MAX_PENDING` bytes wait before output is dropped.
pub const STALL: Duration = Duration::from_secs(1);
/// Largest single write once the descriptor polls writable: `PIPE_BUF`, which a pipe with room
/// takes whole without blocking.
const WRITE_CHUNK: usize = 4096;
/// How long an outlet that is let go (the pool ends) waits for a slow reader to take the rest.
const FINISH_WAIT: Duration = Duration::from_secs(1);

/// Where an outlet writes.
#[derive(Debug)]
pub enum Target {
    /// The parent's file descriptor 1.
    Stdout,
    /// The parent's file descriptor 2.
    Stderr,
    /// Any other descriptor (tests).
    Fd(Arc<OwnedFd>),
}

impl Target {
    fn raw_fd(&self) -> RawFd {
        match self {
            Target::Stdout => io::stdout().as_raw_fd(),
            Target::Stderr => io::stderr().as_raw_fd(),
            Target::Fd(fd) => fd.as_raw_fd(),
        }
    }
}

/// Output on its way to one of the parent's descriptors (see the module doc).
#[derive(Debug)]
pub struct Outlet {
    target: Target,
    pending: VecDeque<u8>,
    /// When the reader last took a byte, or when output began to wait if that was later.
    progress: Instant,
    /// Bytes dropped since the last notice went out.
    dropped: u64,
}

impl Outlet {
    pub fn new(target: Target) -> Outlet {
        Outlet {
            target,
            pending: VecDeque::new(),
            progress: Instant::now(),
            dropped: 0,
        }
    }

    /// The descriptor written to, for polling. Descriptors 1 and 2 are the program's: open
    /// for as long as it runs, as far as this module can know.
    pub fn raw_fd(&self) -> RawFd {
        self.target.raw_fd()
    }

    /// Forwards `bytes` (whole lines): now, as far as the descriptor takes them without
    /// blocking; the rest later (`write_ready`), or dropped and counted if they do not fit in
    /// `MAX_PENDING` and the reader has stalled. Otherwise what waits may pass `MAX_PENDING` by
    /// what the relays read before they saw it reached (`has_room`).
    pub fn send(&mut self, mut bytes: &[u8]) {
        if self.wants_write() {
            self.write_ready(); // what waited goes first
        }
        if !self.wants_write() {
            bytes = &bytes[write_now(self.raw_fd(), bytes)..];
            self.progress = Instant::now();
        }
        if bytes.is_empty() {
            return;
        }
        if self.stalled() && self.pending.len() + bytes.len() > MAX_PENDING {
            self.dropped += bytes.len() as u64;
        } else {
            self.pending.extend(bytes);
        }
    }

    /// Whether relays may read more from workers' pipes: less than `MAX_PENDING` bytes wait, or
    /// the reader has stalled and what they read is dropped.
    pub fn has_room(&self) -> bool {
        self.pending.len() < MAX_PENDING || self.stalled()
    }

    /// When the reader, if it takes nothing before, counts as stalled; `None` unless output
    /// waits with no room for more (then the dispatcher must wake by this time).
    pub fn stalls_at(&self) -> Option<Instant> {
        (self.pending.len() >= MAX_PENDING && !self.stalled()).then(|| self.progress + STALL)
    }

    /// The reader has taken nothing for `STALL` while output waited.
    fn stalled(&self) -> bool {
        self.wants_write() && self.progress.elapsed() >= STALL
    }

    /// Whether output waits for room: poll the descriptor for `POLLOUT` and call `write_ready`.
    pub fn wants_write(&self) -> bool {
        !self.pending.is_empty() || self.dropped > 0
    }

    /// Writes what waits, as far as the descriptor takes it without blocking; once all of it is
    /// out, says how much was dropped, if anything was.
    pub fn write_ready(&mut self) {
        let fd = self.raw_fd();
        let n = write_now(fd, self.pending.make_contiguous());
        self.pending.drain(..n);
        if n > 0 {
            self.progress = Instant::now();
        }
        if self.pending.is_empty() && self.dropped > 0 {
            let notice = format!(
                "ferropool: {} bytes of worker output were dropped: the reader of this stream \
                 took nothing for {} s\n",
                self.dropped,
                STALL.as_secs()
            );
            self.dropped = 0;
            self.pending.extend(notice.as_bytes());
            let n = write_now(fd, self.pending.make_contiguous());
            self.pending.drain(..n);
        }
    }
}

/// Writes as much of `bytes` to `fd` as it takes without blocking; returns how much that was.
/// On an error other than "no room" (a closed reader), all of it counts as written: there is
/// nobody to write it to.
fn write_now(fd: RawFd, bytes: &[u8]) -> usize {
    let mut done = 0;
    while done < bytes.len() && wait_for_room(fd, Duration::ZERO) {
        let end = bytes.len().min(done + WRITE_CHUNK);
        let piece = &bytes[done..end];
        // SAFETY: `piece` is valid for reads of its length for the duration of the call.
        let n = unsafe { libc::write(fd, piece.as_ptr().cast(), piece.len()) };
        match usize::try_from(n) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(_) => match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => break,
                _ => return bytes.len(),
            },
        }
    }
    done
}

/// Waits up to `limit` (zero: not at all) until a write to `fd` would not block; returns
/// whether it would (an error condition counts: the write then fails at once).
fn wait_for_room(fd: RawFd, limit: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    ready > 0 && pfd.revents != 0
}

impl Drop for Outlet {
    /// Gives a slow reader up to `FINISH_WAIT` to take what waits; what is left then is lost.
    fn drop(&mut self) {
        let deadline = Instant::now() + FINISH_WAIT;
        while self.wants_write() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            wait_for_room(self.raw_fd(), left.max(Duration::from_millis(1)));
            self.write_ready();
        }
    }
}

/// Where a relay forwards lines: an outlet, shared by the relays of every worker of a pool.
#[derive(Clone, Debug)]
pub struct Sink(Arc<Mutex<Outlet>>);

impl Sink {
    pub fn new(target: Target) -> Sink {
        Sink(Arc::new(Mutex::new(Outlet::new(target))))
    }

    /// The outlet, to poll and write when it waits for room.
    pub fn outlet(&self) -> MutexGuard<'_, Outlet> {
        // Only the dispatcher thread uses it, and an outlet stays consistent at every step.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, bytes: &[u8]) {
        self.outlet().send(bytes);
    }

    fn has_room(&self) -> bool {
        self.outlet().has_room()
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

    /// Whether `pump` would read: the pipe is open and the sink has room (`Outlet::has_room`).
    /// Poll the pipe only then: a pipe left unread holds its writer up once full.
    pub fn wants_read(&self) -> bool {
        !self.eof && self.sink.has_room()
    }

    /// Reads what is available now while the sink has room, forwarding complete lines; never
    /// blocks.
    pub fn pump(&mut self) {
        self.read(false);
    }

    /// Reads everything available now, whether or not the sink has room, and forwards the
    /// unterminated last line too: the worker has gone, and this is the last of its output
    /// (its pipe holds at most what the kernel buffers).
    pub fn drain(&mut self) {
        self.read(true);
        self.flush_partial();
    }

    fn read(&mut self, all: bool) {
        let mut buf = [0u8; 16 * 1024];
        while !self.eof && (all || self.sink.has_room()) {
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
            self.sink.send(&line);
        }
    }

    /// Returns the last bytes the worker wrote (at most `TAIL_BYTES`, starting at a line);
    /// empty unless made with `keep_tail`.
    pub fn tail(&self) -> Vec<u8> {
        if !self.keep_tail {
            return Vec::new();
        }
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
        self.sink.send(&out);
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
        let mut relay = LineRelay::new(r, Sink::new(Target::Stderr), true).unwrap();
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
            wait_readable(r, left.as_millis() as libc::c_int);
            r.pump();
        }
    }

    /// Waits up to `ms` milliseconds until the relay's pipe is readable.
    fn wait_readable(r: &LineRelay, ms: libc::c_int) {
        let mut pfd = libc::pollfd {
            fd: r.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    /// Waits (at most 5 s) until the outlet's descriptor has room.
    fn room_within_5s(outlet: &Outlet) {
        let room = super::wait_for_room(outlet.raw_fd(), std::time::Duration::from_secs(5));
        assert!(room, "the reader made no room in 5 s");
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
        let sink = Sink::new(Target::Fd(Arc::new(sink_w)));
        let reader = std::thread::spawn(move || read_to_end(sink_r));
        let mut relays = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..2 {
            let (r, w) = pipe();
            relays.push(LineRelay::new(r, sink.clone(), false).unwrap());
            writers.push(std::fs::File::from(w));
        }
        // Each line goes out in uneven pieces, alternating between the two workers, with a
        // pump after each piece: the relay sees every line cut mid-way.
        for i in 0..200 {
            for (n, w) in writers.iter_mut().enumerate() {
                let line = format!("{}{}\n", n, "x".repeat(3000 + i));
                for piece in line.as_bytes().chunks(700) {
                    w.write_all(piece).unwrap();
                    relays[n].pump();
                    // As the dispatcher does: write what waits once the reader makes room.
                    let mut outlet = sink.outlet();
                    while outlet.wants_write() {
                        room_within_5s(&outlet);
                        outlet.write_ready();
                    }
                }
            }
        }
        write!(writers[1], "unterminated").unwrap();
        drop(writers);
        for r in &mut relays {
            pump_to_eof(r);
            assert!(r.tail().is_empty(), "no tail is kept for stdout");
        }
        drop(sink);
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
        let mut relay = LineRelay::new(r, Sink::new(Target::Fd(Arc::new(sink_w))), true).unwrap();
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

    /// Writes what waits in `outlet` whenever its reader makes room, until nothing waits (at
    /// most 10 s).
    fn write_out(outlet: &mut Outlet) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while outlet.wants_write() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "the outlet never drained");
            super::wait_for_room(outlet.raw_fd(), left);
            outlet.write_ready();
        }
    }

    #[test]
    fn a_reader_that_does_not_read_never_blocks_the_writer_and_loses_nothing_until_it_stalls() {
        let (sink_r, sink_w) = pipe();
        let mut outlet = Outlet::new(Target::Fd(Arc::new(sink_w)));
        // 2 MiB of lines into a pipe that holds 64 KiB and that nobody reads yet: returns at
        // once and keeps all of it, but asks the relays to stop reading.
        let line = format!("{}\n", "z".repeat(1023));
        for _ in 0..2048 {
            outlet.send(line.as_bytes());
        }
        assert!(outlet.wants_write());
        assert_eq!(outlet.dropped, 0);
        assert!(outlet.pending.len() >= MAX_PENDING);
        assert!(!outlet.has_room());
        let stalls_at = outlet.stalls_at().expect("a time to wake at");
        assert!(stalls_at > std::time::Instant::now() + STALL / 2);
        // The reader has now taken nothing for `STALL` (the clock is set back, not waited out):
        // what does not fit is dropped and counted, in whole pieces.
        outlet.progress = std::time::Instant::now()
            .checked_sub(STALL)
            .expect("the clock has run for longer than STALL");
        assert!(outlet.has_room());
        assert_eq!(outlet.stalls_at(), None);
        let kept = outlet.pending.len();
        for _ in 0..100 {
            outlet.send(line.as_bytes());
        }
        assert_eq!(outlet.pending.len(), kept);
        assert_eq!(outlet.dropped, 100 * 1024);
        // The reader catches up: everything kept goes out, then the notice.
        let reader = std::thread::spawn(move || read_to_end(sink_r));
        write_out(&mut outlet);
        assert!(outlet.has_room());
        drop(outlet);
        let out = reader.join().unwrap();
        let lines: Vec<&str> = out.lines().collect();
        let (notice, kept) = lines.split_last().unwrap();
        assert_eq!(kept.len(), 2048, "every line sent before the stall");
        assert!(kept.iter().all(|l| l.len() == 1023), "only whole lines");
        assert_eq!(
            *notice,
            format!(
                "ferropool: {} bytes of worker output were dropped: the reader of this stream \
                 took nothing for {} s",
                100 * 1024,
                STALL.as_secs()
            )
        );
    }

    #[test]
    fn a_relay_holds_its_writer_up_while_the_reader_is_paused_and_loses_nothing() {
        let (sink_r, sink_w) = pipe();
        let sink = Sink::new(Target::Fd(Arc::new(sink_w)));
        let (r, w) = pipe();
        let mut relay = LineRelay::new(r, sink.clone(), false).unwrap();
        // A worker printing 3 MiB of lines: more than the parent's pipe, `MAX_PENDING` and its
        // own pipe hold together.
        let lines = 3 * 1024;
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::File::from(w);
            for i in 0..lines {
                writeln!(w, "{i:05}{}", "w".repeat(1018)).unwrap();
            }
        });
        // As the dispatcher does, with nobody reading the parent's stream: pump while the relay
        // wants to read, until it no longer does.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while relay.wants_read() {
            assert!(
                std::time::Instant::now() < deadline,
                "the relay never filled"
            );
            wait_readable(&relay, 1000);
            relay.pump();
        }
        assert!(!relay.at_eof(), "the writer is held up, not done");
        assert!(!writer.is_finished());
        {
            let outlet = sink.outlet();
            assert_eq!(outlet.dropped, 0);
            assert!(outlet.pending.len() < MAX_PENDING + 16 * 1024 + 1024);
        }
        // The reader starts: the writer goes on, and every line arrives.
        let reader = std::thread::spawn(move || read_to_end(sink_r));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !relay.at_eof() {
            assert!(
                std::time::Instant::now() < deadline,
                "the relay never finished"
            );
            write_out(&mut sink.outlet());
            wait_readable(&relay, 1000);
            relay.pump();
        }
        writer.join().unwrap();
        write_out(&mut sink.outlet());
        drop(relay);
        drop(sink);
        let out = reader.join().unwrap();
        let numbers: Vec<usize> = out.lines().map(|l| l[..5].parse().unwrap()).collect();
        assert_eq!(numbers, (0..lines).collect::<Vec<_>>());
    }

    #[test]
    fn no_tail_is_kept_without_keep_tail_not_even_an_unterminated_line() {
        let (sink_r, sink_w) = pipe();
        let reader = std::thread::spawn(move || read_to_end(sink_r));
        let (r, w) = pipe();
        let mut relay = LineRelay::new(r, Sink::new(Target::Fd(Arc::new(sink_w))), false).unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"a line\nhalf a li").unwrap();
        relay.pump();
        assert!(!relay.at_eof());
        assert_eq!(relay.tail(), b"", "the tail of a relay that keeps none");
        w.write_all(b"ne\n").unwrap();
        drop(w);
        pump_to_eof(&mut relay);
        assert_eq!(relay.tail(), b"");
        drop(relay);
        assert_eq!(reader.join().unwrap(), "a line\nhalf a line\n");
    }

    #[test]
    fn pump_never_blocks_on_an_open_empty_pipe() {
        let (r, w) = pipe();
        let mut relay = LineRelay::new(r, Sink::new(Target::Stderr), true).unwrap();
        relay.pump();
        assert!(!relay.at_eof());
        assert!(relay.tail().is_empty());
        drop(w);
    }
}
