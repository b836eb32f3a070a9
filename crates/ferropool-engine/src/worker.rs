//! A worker process as the parent sees it: how it is started, which tasks it holds, how it ended.
//!
//! Workers are clean interpreters started with fork+exec (never a bare `fork` of the possibly
//! multi-threaded parent). Each gets one end of a socket pair as an inherited descriptor whose
//! number is appended to its command line, and `PR_SET_PDEATHSIG(SIGKILL)` so that it cannot
//! outlive the parent. Its exit is observed through a pidfd, which the dispatcher polls
//! beside the socket: the end of the socket alone does not prove the process is gone.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::channel::{self, FrameReader, FrameWriter};
use crate::frame::{Frame, Header, Kind};
use crate::journal;
use crate::memfd;
use crate::pool::Payload;
use crate::relay::{LineRelay, Sink};

/// Where a worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Spawned; its `Init` is queued but it has not answered `Ready`.
    Starting,
    /// Running tasks.
    Ready,
    /// Told to exit after its queued tasks (recycling or shutdown); gets no new tasks.
    Draining,
}

/// How a worker process ended, as reported by `waitpid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// The exit status if it exited.
    pub code: Option<i32>,
    /// The signal number if a signal killed it.
    pub signal: Option<i32>,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (_, Some(sig)) => write!(f, "worker {} was killed by signal {sig}", self.pid),
            (Some(code), None) => write!(f, "worker {} exited with code {code}", self.pid),
            (None, None) => write!(f, "worker {} ended", self.pid),
        }
    }
}

/// A task sent to a worker and not yet answered.
pub struct Sent {
    pub id: u64,
    /// Kept so that the task can be re-sent elsewhere if this worker dies before starting it.
    pub payload: Payload,
    /// Longest the task may run once started.
    pub timeout: Option<Duration>,
    /// When it started, as far as the parent can tell (see `Worker::inflight`); None while it
    /// waits at the worker.
    pub started: Option<Instant>,
    /// Cancelled (or timed out) at the worker: its outcome was already reported, and whatever the
    /// worker answers for it (a result, or a `Cancel` saying it skipped or stopped the task) is
    /// dropped.
    pub cancelled: bool,
    /// Asked to be skipped if it has not begun (`shutdown(cancel_futures=True)`), not yet
    /// answered: the worker's `Cancel` answer means it was skipped and is reported `Cancelled`
    /// then; a `Start` or a result means it had begun and it runs to its own outcome.
    pub skip_asked: bool,
    /// When it was asked to stop while running beside other tasks (a `Cancel` frame was sent
    /// instead of stopping the whole worker); past the grace period the worker is stopped.
    pub stop_asked: Option<Instant>,
    /// Stream offset of the end of its `Task` frame in the writer: the worker cannot have
    /// begun it unless the writer's `sent` reached this.
    pub frame_end: u64,
}

/// A worker being stopped, because its running task timed out or was cancelled, or because it
/// did not exit after `Shutdown`: it was sent SIGTERM and gets SIGKILL at `kill_at` if it is
/// still alive.
pub struct Stop {
    /// The task it was stopped for (already reported), whose late answer is dropped.
    pub task: Option<u64>,
    pub kill_at: Instant,
    pub killed: bool,
}

/// One live worker process and the parent's bookkeeping for it.
pub struct Worker {
    pub pid: i32,
    sock: OwnedFd,
    pidfd: OwnedFd,
    pub reader: FrameReader,
    pub writer: FrameWriter,
    pub phase: Phase,
    /// Tasks sent to this worker and not answered, oldest first. A worker starts tasks in the
    /// order sent. The front one has started once the worker is ready (when it was sent to an
    /// idle ready worker, when the task before it was answered, or when the worker said
    /// `Ready`); any other has started when the worker says `Start` for it, which it does for a
    /// task begun while another is unanswered (threads of a `HybridPool` worker, coroutines).
    /// Task timeouts count from `Sent::started`.
    pub inflight: VecDeque<Sent>,
    /// Threads that run tasks in this worker (`PoolConfig::threads_per_worker`).
    pub threads: usize,
    /// Entries of `inflight` that are coroutines, that have a timeout, and that were asked to
    /// stop: counted so that the dispatcher's every turn need not scan `inflight`.
    pub coroutines: usize,
    pub timed: usize,
    pub stop_asks: usize,
    /// Set once the worker is being stopped (see `Stop`).
    pub stop: Option<Stop>,
    /// Tasks ever sent to this worker (for recycling after `max_tasks_per_child`).
    pub tasks_sent: u64,
    /// Smoothed run time of this worker's recent tasks, in microseconds; `None` before the first.
    pub task_us: Option<f64>,
    /// The parent's mapping of the file where the worker keeps the answers it holds back
    /// (`journal.rs`), read once it is gone.
    journal: Option<memfd::Map>,
    /// Why the parent is stopping it for what it sent (see `corrupt_stream`).
    pub corrupt: Option<String>,
    /// The socket reached end of stream: stop polling it, wait for the pidfd.
    pub sock_closed: bool,
    /// Writing to the socket failed: the worker is gone or going (its pidfd will say how). No
    /// more is written, but what it sent before is still read: a write fails as soon as the
    /// worker exits, while its answers wait in the socket.
    pub write_closed: bool,
    /// The worker's stderr, relayed line by line; its tail goes into crash reports.
    pub stderr: LineRelay,
    /// The worker's stdout, relayed line by line.
    pub stdout: LineRelay,
    /// When its memory was last checked against `max_memory_per_child`.
    pub memory_checked_at: Option<Instant>,
    /// `Shutdown` has been queued for it.
    pub shutdown_sent: bool,
    /// Once `Shutdown` is sent: when it will be stopped if it has not exited by itself.
    pub exit_by: Option<Instant>,
}

impl Worker {
    /// Starts `command` with the worker's socket descriptor number appended as its last argument
    /// and queues `init` as its first frame.
    pub fn spawn(
        command: &[OsString],
        init: &[u8],
        stdout: &Sink,
        stderr: &Sink,
    ) -> io::Result<Worker> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty worker command"))?;
        let (ours, theirs) = channel::pair()?;
        channel::set_nonblocking(ours.as_fd(), true)?;
        let child_fd = theirs.as_raw_fd();
        let parent_pid = std::process::id() as libc::pid_t;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .arg(child_fd.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec, so it may only make
        // async-signal-safe calls; fcntl, signal (sigaction), prctl, getppid and _exit are plain
        // system calls that touch no locks or allocator state.
        unsafe {
            cmd.pre_exec(move || {
                // Let the worker's end of the socket survive exec.
                if libc::fcntl(child_fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // Ctrl-C in a terminal reaches the whole process group, workers too; the parent
                // decides what stops. Ignored from the start (an ignored signal stays ignored
                // across exec, and Python then installs no handler for it), so that a worker
                // still starting when it comes neither dies nor prints a traceback.
                if libc::signal(libc::SIGINT, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) == -1
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect: then nobody would kill us.
                if libc::getppid() != parent_pid {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        drop(theirs);
        let stderr = LineRelay::new(
            OwnedFd::from(child.stderr.take().expect("stderr was piped")),
            stderr.clone(),
            true,
        )?;
        let stdout = LineRelay::new(
            OwnedFd::from(child.stdout.take().expect("stdout was piped")),
            stdout.clone(),
            false,
        )?;
        let pid = child.id() as i32;
        let pidfd = pidfd_open(pid)?;
        let mut w = Worker {
            pid,
            sock: ours,
            pidfd,
            reader: FrameReader::new(),
            writer: FrameWriter::new(),
            phase: Phase::Starting,
            inflight: VecDeque::new(),
            threads: 1,
            coroutines: 0,
            timed: 0,
            stop_asks: 0,
            stop: None,
            tasks_sent: 0,
            task_us: None,
            sock_closed: false,
            write_closed: false,
            corrupt: None,
            journal: None,
            stderr,
            stdout,
            memory_checked_at: None,
            shutdown_sent: false,
            exit_by: None,
        };
        let mut init = Frame::new(Kind::Init, 0, init.to_vec());
        // Without the file a worker still runs; it only cannot hand over what it held back.
        if let Ok((fd, map)) = journal::create() {
            init.fds.push(fd);
            w.journal = Some(map);
        }
        w.writer.push(init);
        Ok(w)
    }

    /// Relays what the worker has written to stdout and stderr so far, whole lines only, as far
    /// as the parent's streams have room (`relay.rs`); with `gone`, all of it, and a last
    /// unterminated line too.
    pub fn pump_output(&mut self, gone: bool) {
        for relay in [&mut self.stdout, &mut self.stderr] {
            if gone {
                relay.drain();
            } else {
                relay.pump();
            }
        }
    }

    /// The output pipes to poll: open, and relayed to a stream with room.
    pub fn output_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        [&self.stdout, &self.stderr]
            .into_iter()
            .filter(|r| r.wants_read())
            .map(LineRelay::fd)
    }

    /// The socket to the worker (non-blocking).
    pub fn sock(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Writes queued frames until done (`Ok(true)`) or the socket is full (`Ok(false)`).
    pub fn flush(&mut self) -> io::Result<bool> {
        self.writer.flush(self.sock.as_fd())
    }

    /// Reads once from the socket into the frame reader; 0 means end of stream.
    pub fn fill(&mut self) -> io::Result<usize> {
        self.reader.fill(self.sock.as_fd())
    }

    /// A descriptor that becomes readable when the process has exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Queues task `id` for this worker.
    pub fn send_task(&mut self, id: u64, payload: Payload, timeout: Option<Duration>) {
        // The frame gets lent duplicates of the buffers' descriptors (each counted as a reader of
        // its file until the worker unmaps it): ours are kept for a re-send.
        let fds = payload
            .buffers
            .iter()
            .filter_map(|b| b.lend().ok())
            .collect::<Vec<_>>();
        let flags = if payload.is_async {
            crate::frame::FLAG_ASYNC
        } else {
            0
        };
        if fds.len() == payload.buffers.len() {
            self.writer
                .push_parts_flagged(Kind::Task, id, flags, 0, &payload.bytes, fds);
        } else {
            // Out of descriptors: the worker finds the frame short of buffers and fails the task.
            self.writer
                .push_parts_flagged(Kind::Task, id, flags, 0, &payload.bytes, Vec::new());
        }
        self.coroutines += usize::from(payload.is_async);
        self.timed += usize::from(timeout.is_some());
        self.inflight.push_back(Sent {
            id,
            payload,
            timeout,
            started: None,
            cancelled: false,
            skip_asked: false,
            stop_asked: None,
            frame_end: self.writer.queued_end(),
        });
        self.tasks_sent += 1;
        self.front_started();
    }

    /// Dates the front task's start (now) if the worker is ready and it was not dated yet.
    ///
    /// Only for a worker that runs one task at a time: with several threads the oldest task
    /// need not have begun (its thread may still wait for the GIL while another runs the tasks
    /// behind it), so such a worker announces each task it begins (`Start`, see
    /// `announced_start`), and a task it dies before announcing runs again elsewhere.
    pub fn front_started(&mut self) {
        if self.phase == Phase::Starting || self.threads > 1 {
            return;
        }
        if let Some(front) = self.inflight.front_mut() {
            front.started.get_or_insert_with(Instant::now);
            if front.cancelled && front.stop_asked.is_none() {
                // Cancelled while it waited here: the worker skips it (answering `Cancel`)
                // unless it had already begun it, while the answer before it was held back.
                // Only that answer's absence tells: past `stop_grace` the worker is stopped.
                front.stop_asked = Some(Instant::now());
                self.stop_asks += 1;
            }
        }
    }

    /// The worker says it began task `id` (a `Start` frame). One cancelled while it waited
    /// here had begun before the `Cancel` arrived: it is asked to stop, and past `stop_grace`
    /// its worker is stopped.
    pub fn announced_start(&mut self, id: u64) {
        let Some(pos) = self.inflight.iter().position(|s| s.id == id) else {
            return;
        };
        let s = &mut self.inflight[pos];
        s.started.get_or_insert_with(Instant::now);
        if s.cancelled {
            self.ask_stop(pos);
        }
    }

    /// Takes task `id` off `inflight` as answered (recording its run time, `run_us`, if it ran).
    /// None if the worker holds no such task.
    pub fn finish_task(&mut self, id: u64, run_us: Option<u32>) -> Option<Sent> {
        if let Some(us) = run_us {
            let us = f64::from(us.max(1));
            self.task_us = Some(match self.task_us {
                Some(prev) => prev * 0.75 + us * 0.25,
                None => us,
            });
        }
        // The front one in the common case (answers come in order from one thread).
        let pos = self.inflight.iter().position(|s| s.id == id)?;
        let sent = self.take(pos);
        self.front_started();
        sent
    }

    /// Removes the `inflight` entry at `pos`, keeping the counts right.
    pub fn take(&mut self, pos: usize) -> Option<Sent> {
        let sent = self.inflight.remove(pos)?;
        self.coroutines -= usize::from(sent.payload.is_async);
        self.timed -= usize::from(sent.timeout.is_some());
        self.stop_asks -= usize::from(sent.stop_asked.is_some());
        Some(sent)
    }

    /// Marks the `inflight` entry at `pos` cancelled and asked to stop (now).
    pub fn ask_stop(&mut self, pos: usize) {
        let sent = &mut self.inflight[pos];
        sent.cancelled = true;
        if sent.stop_asked.is_none() {
            sent.stop_asked = Some(Instant::now());
            self.stop_asks += 1;
        }
    }

    /// Bytes written to the worker so far (compare with `Sent::frame_end`).
    pub fn writer_sent(&self) -> u64 {
        self.writer.sent()
    }

    /// Takes every `inflight` entry (the worker is going away, or the pool is breaking).
    pub fn take_all(&mut self) -> VecDeque<Sent> {
        (self.coroutines, self.timed, self.stop_asks) = (0, 0, 0);
        std::mem::take(&mut self.inflight)
    }

    /// Tasks that have started and are not cancelled: the ones running now.
    pub fn running(&self) -> usize {
        self.inflight
            .iter()
            .filter(|s| s.started.is_some() && !s.cancelled)
            .count()
    }

    /// The earliest moment a running task overruns its timeout.
    pub fn deadline(&self) -> Option<Instant> {
        if self.stop.is_some() || self.timed == 0 {
            return None;
        }
        self.inflight
            .iter()
            .filter(|s| !s.cancelled)
            .filter_map(|s| Some(s.started? + s.timeout?))
            .min()
    }

    /// Queues `Shutdown` (once): the worker exits after the tasks it holds, and is stopped if it
    /// is still alive `grace` after the last of them.
    pub fn send_shutdown(&mut self, grace: Duration) {
        if !self.shutdown_sent {
            self.shutdown_sent = true;
            self.writer.push(Frame::new(Kind::Shutdown, 0, Vec::new()));
        }
        if self.exit_by.is_none() && self.inflight.is_empty() {
            self.exit_by = Some(Instant::now() + grace);
        }
    }

    /// Sends SIGTERM, asking the worker to exit; `kill` follows if it does not.
    pub fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `sig` through the pidfd, never by pid: an application that ignores SIGCHLD or
    /// calls `waitpid(-1)` may have reaped the worker already, and its pid may then name
    /// another process. Signalling a process that is gone is not an error.
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: pidfd_send_signal reads only its integer arguments (a descriptor we own and a
        // signal number); a null siginfo asks the kernel to fill in what kill(2) would.
        let _ = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    /// Reaps the process through its pidfd (`waitid(P_PIDFD)`), blocking or not. `Ok(None)`:
    /// still running. An exit status that someone else collected first comes back as an
    /// `Exit` with neither code nor signal.
    fn wait(&mut self, block: bool) -> io::Result<Option<Exit>> {
        /// `idtype_t` for a pidfd (Linux 5.4+; the libc crate does not name it).
        const P_PIDFD: libc::idtype_t = 3;
        let flags = libc::WEXITED | if block { 0 } else { libc::WNOHANG };
        // SAFETY: siginfo_t is plain data for which all-zero bytes are a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: `info` is a valid, writable siginfo_t that outlives the call, and the id
            // is a descriptor we own.
            let r = unsafe {
                libc::waitid(
                    P_PIDFD,
                    self.pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    flags,
                )
            };
            if r == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => {
                    return Ok(Some(Exit {
                        pid: self.pid,
                        code: None,
                        signal: None,
                    }))
                }
                _ => return Err(err),
            }
        }
        // SAFETY: waitid returned 0, so `info` is either untouched (all zero: WNOHANG and still
        // running) or describes a child's exit, for which si_pid and si_status are set.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        Ok(Some(match info.si_code {
            libc::CLD_EXITED => Exit {
                pid: self.pid,
                code: Some(status),
                signal: None,
            },
            _ => Exit {
                pid: self.pid,
                code: None,
                signal: Some(status),
            },
        }))
    }

    /// Reaps the process if it has exited, without blocking.
    pub fn try_reap(&mut self) -> io::Result<Option<Exit>> {
        self.wait(false)
    }

    /// Returns the process's private resident memory in bytes: its resident set less the pages
    /// it shares with files (`/proc/<pid>/statm`: resident minus shared), i.e. what the tasks
    /// allocated. The memory files of arguments and results, which a worker maps and keeps for
    /// reuse (`buffer.rs`), are shared pages and do not count: they are the pool's, not a leak.
    pub fn private_resident_bytes(&self) -> io::Result<u64> {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.pid))?;
        let field = |i: usize| {
            statm
                .split_whitespace()
                .nth(i)
                .and_then(|f| f.parse::<u64>().ok())
        };
        let pages = field(1)
            .zip(field(2))
            .map(|(resident, shared)| resident.saturating_sub(shared))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable statm"))?;
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Ok(pages * u64::try_from(page).unwrap_or(4096))
    }

    /// The frames the worker held back when it died (`journal.rs`); call once it is gone and
    /// its socket has been read to the end.
    pub fn held_frames(&self) -> Vec<Frame> {
        self.journal
            .as_ref()
            .map(journal::held_frames)
            .unwrap_or_default()
    }

    /// Whether a frame with header `h` can come from this worker: a worker-to-parent kind,
    /// and for one about a task, a task it holds (or the one it is being stopped for, whose
    /// answer may still come).
    pub fn may_send(&self, h: &Header) -> bool {
        match h.kind {
            Kind::Hello | Kind::Ready | Kind::InitFailed | Kind::Heartbeat | Kind::Log => true,
            Kind::Ok | Kind::Err | Kind::Cancel | Kind::Start => {
                self.inflight.iter().any(|s| s.id == h.id)
                    || self.stop.as_ref().is_some_and(|s| s.task == Some(h.id))
            }
            Kind::Init | Kind::Task | Kind::Shutdown => false,
        }
    }

    /// Stops reading from the worker and kills it: what it sent cannot be a frame of the
    /// protocol (`what` says how), so nothing after it can be trusted. Its running task fails
    /// with a `WorkerDied` that carries the reason.
    pub fn corrupt_stream(&mut self, what: &dyn std::fmt::Display) {
        self.corrupt.get_or_insert_with(|| {
            format!(
                "its stream to the parent was corrupt ({what}); something in the task, such as \
                 native code writing to the wrong descriptor, wrote to the worker's socket"
            )
        });
        self.sock_closed = true;
        self.kill();
    }

    /// Sends SIGKILL (the process may already be gone; that is not an error).
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// Sends SIGKILL and waits for the exit status. SIGKILL cannot be caught or ignored, so
    /// the wait is short (a process in uninterruptible sleep ends when its I/O does).
    pub fn kill_and_reap(&mut self) -> Exit {
        self.kill();
        match self.wait(true) {
            Ok(Some(exit)) => exit,
            _ => Exit {
                pid: self.pid,
                code: None,
                signal: None,
            },
        }
    }
}

/// Opens a pidfd for `pid` (Linux 5.3+).
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: the syscall takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it; the
    // value fits in an i32 because descriptors are ints.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
