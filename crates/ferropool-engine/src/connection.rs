//! The worker's end of its socket: blocking reads that skip cancelled tasks, and answers that
//! are batched but never held back for long.
//!
//! Batching: writing each answer costs a system call, which dominates when tasks take a
//! microsecond. So `answer` holds an answer back while another task is already buffered, and
//! it leaves with the next ones; not the answer of a task that ran 20 µs or more, nor one of
//! 16 KiB or more, whose write costs little beside it (and a `map` chunk's answer is often what
//! the parent waits for before it sends more work). But the next task may be long: an answer
//! held while it runs would wait for all of it (a 1 µs task queued before a one-hour task would
//! answer after an hour and, with a timeout, be blamed for it). So a flusher thread writes out
//! any answer that has been held for `MAX_HOLD`, whatever the main thread is doing — running
//! Python code or stuck in native code. The writer is shared with it under a mutex; the flusher
//! is woken once per batch, when the first answer is held.
//!
//! Log records (`Kind::Log`) may come from any thread of the worker, through a `Sender`: they
//! are held like answers, so a burst of them costs one system call, and leave within
//! `MAX_HOLD`. Past `MAX_HELD_BYTES` the sending thread writes them itself, blocking while the
//! socket is full: a worker that logs faster than the parent reads is slowed down instead of
//! growing its memory.
//!
//! Cancellation: a `Cancel` frame for a task still buffered here removes that task and answers
//! `Cancel` for it in its place, so `recv` never hands out a task the parent has cancelled, as
//! far as the parent's frames have arrived. A `Cancel` for a task already handed out is passed
//! on by `recv`: a worker running tasks concurrently may still stop it (a coroutine) or skip it.
//!
//! Threads: `recv` belongs to one thread; a `Sender` (see `sender`) lets other threads of a
//! worker that runs tasks concurrently send answers through the same writer. Before starting a task it has not read the socket
//! for `CANCEL_CHECK_AGE`, the worker reads what has arrived, so a cancel sent while the
//! previous task ran is seen.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::channel::{set_nonblocking, FrameReader, FrameWriter};
use crate::flush_schedule::{FlushSchedule, Step};
use crate::frame::{Frame, Kind};
use crate::journal::{self, Journal};

pub use crate::flush_schedule::MAX_HOLD;
/// Most bytes of answers held back; past this they are written at once.
const MAX_HELD_BYTES: usize = journal::CAPACITY;
/// Answers of tasks that ran this long (microseconds) or more are never held back.
const HOLD_BELOW_US: u32 = 20;
/// Answers this large or larger are never held back.
const HOLD_BELOW_BYTES: usize = 16 * 1024;
/// How often a worker waiting for its next task gives spare memory back.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How stale the worker's view of its socket may be when it starts a task.
const CANCEL_CHECK_AGE: Duration = Duration::from_millis(1);

/// A blocking frame connection, as a worker uses it (see the module docs).
pub struct Connection {
    sock: Arc<OwnedFd>,
    pub reader: FrameReader,
    out: Arc<Outbox>,
    /// Frames read and decoded but not yet handed out.
    ahead: VecDeque<Frame>,
    last_read: Instant,
}

/// The writing half, shared with the flusher thread.
struct Outbox {
    state: Mutex<OutState>,
    /// Signalled when an answer is first held, and when the connection is dropped.
    wake: Condvar,
}

struct OutState {
    writer: FrameWriter,
    /// When what is held must leave, and whether the flusher sleeps (`flush_schedule.rs`).
    schedule: FlushSchedule,
    flusher_started: bool,
    closed: bool,
    /// The copy of what is held back that the parent reads if this process dies (`journal.rs`;
    /// None until `Init` brings its file, or if it could not be mapped).
    journal: Option<Journal>,
}

impl Connection {
    /// Wraps a connected socket; it is switched to blocking mode.
    pub fn new(sock: OwnedFd) -> io::Result<Connection> {
        set_nonblocking(sock.as_fd(), false)?;
        let out = Arc::new(Outbox {
            state: Mutex::new(OutState {
                writer: FrameWriter::default(),
                schedule: FlushSchedule::new(Instant::now()),
                flusher_started: false,
                closed: false,
                journal: None,
            }),
            wake: Condvar::new(),
        });
        Ok(Connection {
            sock: Arc::new(sock),
            reader: FrameReader::new(),
            out,
            ahead: VecDeque::new(),
            last_read: Instant::now(),
        })
    }

    /// Queues one frame and writes everything queued, blocking as needed.
    pub fn send(&mut self, frame: Frame) -> io::Result<()> {
        let mut st = self.out.lock();
        st.writer.push(frame);
        write_all(&mut st, &self.sock)
    }

    /// Queues a task's answer, with the descriptors of its out-of-band buffers; `aux` is its
    /// run time in microseconds and `flags` the share of it spent pickling, in 255ths. It is
    /// written now unless another task is already buffered (its answer will likely follow soon);
    /// then it is held, for at most `MAX_HOLD`.
    pub fn answer(
        &mut self,
        kind: Kind,
        id: u64,
        flags: u8,
        aux: u32,
        payload: &[u8],
        fds: Vec<OwnedFd>,
    ) -> io::Result<()> {
        // Descriptors die with the process, so an answer carrying some is never held back. Nor
        // is a long task's or a large answer: its write costs little beside the task, and its
        // task (a `map` chunk) is often what the parent waits for before sending more work.
        let more = self.has_frame()
            && fds.is_empty()
            && aux < HOLD_BELOW_US
            && payload.len() < HOLD_BELOW_BYTES;
        let mut st = self.out.lock();
        st.writer
            .push_parts_flagged(kind, id, flags, aux, payload, fds);
        if more && st.writer.pending() < MAX_HELD_BYTES {
            hold(&self.out, &self.sock, st);
            Ok(())
        } else {
            write_all(&mut st, &self.sock)
        }
    }

    /// Returns a handle through which other threads send frames on this connection.
    pub fn sender(&self) -> Sender {
        Sender {
            out: self.out.clone(),
            sock: self.sock.clone(),
        }
    }

    /// Writes every queued frame now, blocking as needed.
    pub fn flush(&mut self) -> io::Result<()> {
        write_all(&mut self.out.lock(), &self.sock)
    }

    /// Returns true if a frame is buffered, so `recv` will not block.
    pub fn has_frame(&self) -> bool {
        !self.ahead.is_empty() || self.reader.has_frame()
    }

    /// Returns the next frame if one is buffered, without blocking (see `recv`).
    pub fn try_recv(&mut self) -> io::Result<Option<Frame>> {
        self.decode()?;
        if self.ahead.front().is_some_and(|f| f.kind == Kind::Task)
            && self.last_read.elapsed() >= CANCEL_CHECK_AGE
        {
            loop {
                match self.reader.fill_nonblocking(self.sock.as_fd()) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            self.last_read = Instant::now();
            self.decode()?;
        }
        Ok(self.ahead.pop_front())
    }

    /// Returns the next frame, blocking until one arrives; `None` at end of stream.
    /// Everything queued is written before blocking, so the peer never waits on us. While it
    /// waits, every `IDLE_TICK` it gives spare memory files back (`buffer::trim_idle`).
    pub fn recv(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(f) = self.try_recv()? {
                return Ok(Some(f));
            }
            if self.reader.at_eof() {
                return Ok(None);
            }
            self.flush()?;
            if !self.wait_readable(IDLE_TICK)? {
                crate::buffer::trim_idle();
                continue;
            }
            self.reader.fill(self.sock.as_fd())?;
            self.last_read = Instant::now();
        }
    }

    /// Waits up to `limit` for the socket to become readable; false if it did not.
    fn wait_readable(&self, limit: Duration) -> io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(limit).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(true), // let the read find out
            Err(e) => Err(e.into()),
        }
    }

    /// Moves every complete frame from the reader to `ahead`, carrying out `Cancel` frames and
    /// taking the held-answers file that comes with `Init`.
    fn decode(&mut self) -> io::Result<()> {
        while let Some(mut f) = self.reader.next_frame()? {
            if f.kind == Kind::Init {
                if let Some(fd) = f.fds.pop() {
                    // Without it answers are still batched, only not kept for the parent.
                    self.out.lock().journal = Journal::adopt(fd).ok();
                }
                f.fds.clear();
            }
            if f.kind != Kind::Cancel {
                self.ahead.push_back(f);
                continue;
            }
            if let Some(pos) = self
                .ahead
                .iter()
                .position(|t| t.kind == Kind::Task && t.id == f.id)
            {
                self.ahead.remove(pos);
                let mut st = self.out.lock();
                st.writer.push(Frame::new(Kind::Cancel, f.id, Vec::new()));
                hold(&self.out, &self.sock, st);
            } else {
                // Already handed out: the worker decides (a sequential one ignores it: it has
                // answered the task, or the parent stops the whole worker).
                self.ahead.push_back(f);
            }
        }
        Ok(())
    }
}

/// Sends frames on a worker's connection from any thread: answers of tasks that run
/// concurrently, and log records (see the module docs).
#[derive(Clone)]
pub struct Sender {
    sock: Arc<OwnedFd>,
    out: Arc<Outbox>,
}

impl Sender {
    /// Queues `frame` to leave within `MAX_HOLD`, with the next answer or by the flusher. When
    /// more than `MAX_HELD_BYTES` are queued, or the connection was dropped, writes everything
    /// now instead, blocking while the socket is full. Errors when the parent has gone.
    pub fn send_soon(&self, frame: Frame) -> io::Result<()> {
        let mut st = self.out.lock();
        st.writer.push(frame);
        if st.closed || st.writer.pending() >= MAX_HELD_BYTES {
            return write_all(&mut st, &self.sock);
        }
        hold(&self.out, &self.sock, st);
        Ok(())
    }

    /// Queues a frame with descriptors; `hold_it` leaves it for the flusher (written within
    /// `MAX_HOLD`, with whatever else is queued by then), otherwise it is written now.
    pub fn send(
        &self,
        kind: Kind,
        id: u64,
        aux: u32,
        payload: &[u8],
        fds: Vec<OwnedFd>,
        hold_it: bool,
    ) -> io::Result<()> {
        let mut st = self.out.lock();
        // Descriptors die with the process, so a frame carrying some is never held back.
        let hold_it = hold_it && fds.is_empty();
        st.writer.push_parts_with_fds(kind, id, aux, payload, fds);
        if hold_it && !st.closed && st.writer.pending() < MAX_HELD_BYTES {
            hold(&self.out, &self.sock, st);
            Ok(())
        } else {
            write_all(&mut st, &self.sock)
        }
    }

    /// Writes everything queued now.
    pub fn flush(&self) -> io::Result<()> {
        write_all(&mut self.out.lock(), &self.sock)
    }
}

/// Leaves what is queued for the flusher to write within `MAX_HOLD`, starting the flusher on
/// first use.
fn hold(out: &Arc<Outbox>, sock: &Arc<OwnedFd>, mut st: MutexGuard<'_, OutState>) {
    let OutState {
        writer, journal, ..
    } = &mut *st;
    if journal
        .as_mut()
        .is_some_and(|j| !j.mirror(writer.unwritten()))
    {
        // Too much to keep a copy of: write it now rather than hold what could be lost.
        let _ = write_all(&mut st, sock);
        return;
    }
    let wake = st.schedule.hold(Instant::now());
    if !st.flusher_started {
        let (flusher_out, flusher_sock) = (out.clone(), sock.clone());
        let spawned = std::thread::Builder::new()
            .name("ferropool-flusher".into())
            .spawn(move || flusher_out.run_flusher(&flusher_sock));
        if spawned.is_err() {
            // No thread, no holding back.
            let _ = write_all(&mut st, sock);
            return;
        }
        st.flusher_started = true;
    } else if wake {
        drop(st);
        out.wake.notify_one();
    }
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutState> {
        // A panic while holding this lock leaves a consistent writer (it only appends or
        // writes); carry on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The flusher thread: writes out answers held for `MAX_HOLD` until the connection drops.
    fn run_flusher(&self, sock: &OwnedFd) {
        let mut st = self.lock();
        while !st.closed {
            st = match st.schedule.next(Instant::now()) {
                Step::Write => {
                    // An error means the parent is gone; the main thread finds out itself.
                    let _ = write_all(&mut st, sock);
                    continue;
                }
                Step::Wait(d) => {
                    self.wake
                        .wait_timeout(st, d)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                Step::Sleep => {
                    // Quiet: sleep until `hold` wakes us. `next` marked us idle under the lock
                    // that `wait` releases, so no hold can slip in between.
                    let mut st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                    st.schedule.woken(Instant::now());
                    st
                }
            };
        }
    }
}

/// Writes everything queued (blocking) and clears the hold. Once the bytes are in the socket
/// they outlive this process, so the parent's copy of them is emptied.
fn write_all(st: &mut OutState, sock: &OwnedFd) -> io::Result<()> {
    st.schedule.written();
    st.writer.flush(sock.as_fd())?;
    if st.writer.pending() == 0 {
        if let Some(journal) = st.journal.as_mut() {
            journal.clear();
        }
    }
    Ok(())
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.out.lock().closed = true;
        self.out.wake.notify_all();
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::pair;

    fn read_frame_within(
        reader: &mut FrameReader,
        sock: &OwnedFd,
        limit: Duration,
    ) -> Option<Frame> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(f) = reader.next_frame().unwrap() {
                return Some(f);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut pfd = [nix::poll::PollFd::new(
                sock.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            if nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)).unwrap() == 0 {
                return None;
            }
            assert!(reader.fill(sock.as_fd()).unwrap() > 0, "worker side closed");
        }
    }

    #[test]
    fn a_held_answer_leaves_while_the_next_task_runs() {
        let (parent, child) = pair().unwrap();
        let mut w = FrameWriter::new();
        w.push(Frame::new(Kind::Task, 1, b"short".to_vec()));
        w.push(Frame::new(Kind::Task, 2, b"long".to_vec()));
        w.flush(parent.as_fd()).unwrap();
        let mut conn = Connection::new(child).unwrap();
        assert_eq!(conn.recv().unwrap().unwrap().id, 1);
        conn.answer(Kind::Ok, 1, 0, 0, b"done", Vec::new()).unwrap();
        assert_eq!(conn.recv().unwrap().unwrap().id, 2);
        // Task 2 "runs" from here on: nothing on this side touches the connection again.
        let mut reader = FrameReader::new();
        let answer = read_frame_within(&mut reader, &parent, Duration::from_secs(5))
            .expect("the held answer was never written");
        assert_eq!(
            (answer.kind, answer.id, answer.payload.as_slice()),
            (Kind::Ok, 1, &b"done"[..])
        );
        drop(conn);
    }

    #[test]
    fn a_long_tasks_answer_and_a_large_answer_are_written_at_once() {
        let (parent, child) = pair().unwrap();
        let mut w = FrameWriter::new();
        for id in 1..=4 {
            w.push(Frame::new(Kind::Task, id, b"task".to_vec()));
        }
        w.flush(parent.as_fd()).unwrap();
        let mut conn = Connection::new(child).unwrap();
        let large = vec![7u8; HOLD_BELOW_BYTES];
        // Each with another task buffered behind it, which alone would hold the answer back.
        for (id, run_us, payload) in [(1, HOLD_BELOW_US, &b"r"[..]), (2, 0, &large[..])] {
            assert_eq!(conn.recv().unwrap().unwrap().id, id);
            conn.answer(Kind::Ok, id, 0, run_us, payload, Vec::new())
                .unwrap();
            assert_eq!(conn.out.lock().writer.pending(), 0, "answer {id} was held");
        }
        let mut reader = FrameReader::new();
        for id in 1..=2 {
            let f = read_frame_within(&mut reader, &parent, Duration::from_secs(5)).unwrap();
            assert_eq!((f.kind, f.id), (Kind::Ok, id));
        }
        drop(conn);
    }

    #[test]
    fn a_log_record_from_another_thread_leaves_while_the_main_thread_is_busy() {
        let (parent, child) = pair().unwrap();
        let conn = Connection::new(child).unwrap();
        let sender = conn.sender();
        std::thread::spawn(move || {
            sender
                .send_soon(Frame::new(Kind::Log, 0, b"record".to_vec()))
                .unwrap()
        })
        .join()
        .unwrap();
        // The main thread never touches the connection: the flusher must write the record.
        let mut reader = FrameReader::new();
        let f = read_frame_within(&mut reader, &parent, Duration::from_secs(5))
            .expect("the held record was never written");
        assert_eq!((f.kind, f.payload.as_slice()), (Kind::Log, &b"record"[..]));
        drop(conn);
    }

    #[test]
    fn answers_carry_their_flags() {
        let (parent, child) = pair().unwrap();
        let mut conn = Connection::new(child).unwrap();
        conn.answer(Kind::Ok, 4, 17, 99, b"r", Vec::new()).unwrap();
        let mut reader = FrameReader::new();
        let f = read_frame_within(&mut reader, &parent, Duration::from_secs(5)).unwrap();
        assert_eq!((f.kind, f.id, f.flags, f.aux), (Kind::Ok, 4, 17, 99));
    }

    #[test]
    fn a_cancelled_task_is_skipped_and_answered_with_cancel() {
        let (parent, child) = pair().unwrap();
        let mut w = FrameWriter::new();
        for id in 1..=3 {
            w.push(Frame::new(Kind::Task, id, Vec::new()));
        }
        w.push(Frame::new(Kind::Cancel, 2, Vec::new()));
        w.push(Frame::new(Kind::Cancel, 9, Vec::new())); // unknown: ignored
        w.flush(parent.as_fd()).unwrap();
        drop(w);
        let mut conn = Connection::new(child).unwrap();
        assert_eq!(conn.recv().unwrap().unwrap().id, 1);
        assert_eq!(conn.recv().unwrap().unwrap().id, 3);
        conn.flush().unwrap();
        let mut reader = FrameReader::new();
        let ack = read_frame_within(&mut reader, &parent, Duration::from_secs(5))
            .expect("no answer for the skipped task");
        assert_eq!((ack.kind, ack.id), (Kind::Cancel, 2));
    }
}
