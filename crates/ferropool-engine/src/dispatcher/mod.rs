//! The dispatcher thread: one `poll(2)` loop that feeds tasks to workers, collects their
//! answers and replaces workers that exit.
//!
//! Each turn of the loop: move queued tasks to workers with room (`assign`), write what is
//! buffered, publish finished tasks, then sleep in `poll` on the wake eventfd, every worker's
//! socket and every worker's pidfd. The dispatcher is the only owner of the workers, so all
//! bookkeeping here is single-threaded; only `Shared` is touched by other threads.
//!
//! Scheduling: a worker runs its tasks in the order sent, so the front of its `inflight` list is
//! the task it is running. How many tasks each worker holds and which worker gets each queued
//! task is decided by `placement`, a pure function of the figures kept here; `assign` applies it.
//!
//! Failures: when a worker's pidfd fires, its socket is drained first (answers it sent before
//! dying still count), then its running task fails with `Outcome::WorkerDied`, the tasks queued
//! behind it go back to the front of the shared queue, and a new worker takes its slot.
//!
//! Stopping a task: a running task that overruns its timeout, or that a caller cancels, is
//! reported at once (`TimedOut` / `Cancelled`) and its worker is stopped: SIGTERM now, SIGKILL
//! after `stop_grace`, so a worker that ignores SIGTERM cannot hold anything up. Its exit then
//! takes the failure path above, except that no task is blamed: everything still queued at it
//! goes back to the shared queue. A task cancelled while queued at a worker is reported at once
//! and the worker is sent `Cancel`; it skips the task (answering `Cancel`) if it has not begun
//! it, and any answer for it is dropped. `cancel_waiting` (`shutdown(cancel_futures=True)`)
//! only asks for the skip and reports a task `Cancelled` when the worker answers that it
//! skipped it: a task on a worker thread may have begun with its `Start` still on the way.
//!
//! Statistics (`stats.rs`) are counted here, at the points above, in `SlotStats` that only this
//! thread touches, and copied to `Shared::stats` when a caller asks. Log records workers send
//! are passed on with the finished tasks, before them.

use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::frame::{Frame, Kind};
use crate::pool::{Done, Outcome, PoolConfig, Shared, Task, WorkerLog};
use crate::relay::{Sink, Target};
use crate::stats::{RestartCause, SlotStats};
use crate::worker::{Phase, Stop, Worker};

mod placement;

use placement::{Load, Room};

/// Least time between two reads of one worker's memory use (each costs a /proc read).
const MEMORY_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(10);
/// How long a worker may take to exit after `Shutdown` (interpreter teardown, atexit handlers)
/// before it is stopped: a thread stuck in native code must not hang the pool's shutdown.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Workers in a row that may die before becoming ready before the pool is declared broken.
const MAX_STARTUP_FAILURES: u32 = 3;

struct Dispatcher {
    shared: Arc<Shared>,
    config: PoolConfig,
    slots: Vec<Option<Worker>>,
    /// Finished tasks not yet published.
    done: Vec<Done>,
    startup_failures: u32,
    /// Shutdown frames have been sent; no more respawning.
    stopping: bool,
    /// Statistics of each worker slot.
    stats: Vec<SlotStats>,
    /// Log records received and not yet published.
    logs: Vec<WorkerLog>,
    /// Where the workers' output goes: the parent's stdout and stderr (`relay.rs`).
    stdout: Sink,
    stderr: Sink,
}

/// Runs the dispatcher until the pool is closed and every worker has exited.
pub(crate) fn run(shared: Arc<Shared>, config: PoolConfig) {
    let slots = (0..config.workers).map(|_| None).collect();
    let stats = (0..config.workers).map(|_| SlotStats::default()).collect();
    let mut d = Dispatcher {
        shared,
        config,
        slots,
        done: Vec::new(),
        startup_failures: 0,
        stopping: false,
        stats,
        logs: Vec::new(),
        stdout: Sink::new(Target::Stdout),
        stderr: Sink::new(Target::Stderr),
    };
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for slot in 0..d.slots.len() {
            d.respawn(slot);
        }
        d.event_loop();
    }));
    if let Err(panic) = ran {
        d.fail_after_panic(panic.as_ref());
    }
    d.shared.publish_logs(&mut d.logs);
    d.publish_stats(true);
    let shared = d.shared.clone();
    drop(d);
    shared.done.lock().expect("done queue poisoned").finished = true;
    shared.done_cv.notify_all();
}

impl Dispatcher {
    fn event_loop(&mut self) {
        loop {
            if self.shared.abort.load(Ordering::Acquire) {
                self.abort_all();
                return;
            }
            self.handle_cancels();
            self.assign();
            self.begin_stop_if_done();
            // After those two, so that the deadlines they set (tasks sent, Shutdown sent) count.
            let next_timer = self.check_timers();
            self.flush_all();
            self.shared.publish_logs(&mut self.logs);
            self.shared.publish(&mut self.done);
            if self.shared.stats.wanted.load(Ordering::Relaxed)
                && self.shared.stats.wanted.swap(false, Ordering::AcqRel)
            {
                self.publish_stats(false);
            }
            if self.stopping && self.slots.iter().all(Option::is_none) {
                return;
            }
            crate::buffer::trim_idle(); // spare memory back after an idle tick, not at the next send
            self.wait_and_handle(next_timer);
        }
    }

    /// Acts on `ProcessPool::cancel` for tasks that are already at workers.
    fn handle_cancels(&mut self) {
        let (ids, waiting) = {
            let mut q = self.shared.queue.lock().expect("queue poisoned");
            (
                std::mem::take(&mut q.cancels),
                std::mem::take(&mut q.cancel_waiting),
            )
        };
        if waiting {
            self.cancel_waiting();
        }
        for id in ids {
            let Some((slot, pos)) = self.slots.iter().enumerate().find_map(|(slot, w)| {
                let pos = w
                    .as_ref()?
                    .inflight
                    .iter()
                    .position(|s| s.id == id && !s.cancelled)?;
                Some((slot, pos))
            }) else {
                // Back in the queue: the worker that held it died after the caller looked, and
                // it was requeued. Otherwise it finished (or was cancelled) before we got here.
                let mut q = self.shared.queue.lock().expect("queue poisoned");
                if let Some(at) = q.tasks.iter().position(|t| t.id == id) {
                    q.tasks.remove(at);
                    drop(q);
                    self.done.push(Done::new(id, Outcome::Cancelled));
                }
                continue;
            };
            let w = self.slots[slot].as_mut().expect("found above");
            if w.inflight[pos].started.is_some() && w.stop.is_none() {
                self.stop_task(slot, id, false);
                continue;
            }
            // Waiting behind another task (or for the worker to start): skip it there.
            w.inflight[pos].cancelled = true;
            w.writer.push(Frame::new(Kind::Cancel, id, Vec::new()));
            self.done.push(Done::new(id, Outcome::Cancelled));
        }
    }

    /// Asks every worker to skip each task it holds and has not started, as far as the parent
    /// knows (see `ProcessPool::cancel_waiting`). Not reported here: a task running on a worker
    /// thread may have begun with its `Start` still on the way, so the worker's answer decides
    /// (`Cancel`: skipped, reported `Cancelled`; otherwise it runs to its own outcome).
    fn cancel_waiting(&mut self) {
        for w in self.slots.iter_mut().flatten() {
            for s in w.inflight.iter_mut() {
                if s.started.is_none() && !s.cancelled && !s.skip_asked {
                    s.skip_asked = true;
                    let mut frame = Frame::new(Kind::Cancel, s.id, Vec::new());
                    frame.flags = crate::frame::FLAG_SKIP_ONLY;
                    w.writer.push(frame);
                }
            }
        }
    }

    /// Stops running task `id` of worker `slot`, which overran its timeout or was cancelled,
    /// and reports it so at once. A plain task alone on its worker is stopped with the worker
    /// (the way that stops any code); a coroutine, or a task running beside others (threads,
    /// coroutines), is asked to stop (a coroutine does; a thread cannot), and its worker is
    /// stopped only if it is still there `stop_grace` later.
    fn stop_task(&mut self, slot: usize, id: u64, timed_out: bool) {
        let grace = self.config.stop_grace;
        let w = self.slots[slot]
            .as_mut()
            .expect("stopping a task of a live worker");
        let Some(pos) = w.inflight.iter().position(|s| s.id == id) else {
            return;
        };
        let sent = &w.inflight[pos];
        let outcome = if timed_out {
            Outcome::TimedOut {
                pid: w.pid,
                after: sent.timeout.unwrap_or_default(),
            }
        } else {
            Outcome::Cancelled
        };
        self.done.push(Done::new(id, outcome));
        // A coroutine stops when cancelled, so asking is enough; a thread's task alone on its
        // worker is stopped with the worker at once.
        if w.running() <= 1 && !sent.payload.is_async {
            self.stats[slot].leaving(if timed_out {
                RestartCause::TimedOut
            } else {
                RestartCause::Cancelled
            });
            w.take(pos);
            w.phase = Phase::Draining;
            w.stop = Some(Stop {
                task: Some(id),
                kill_at: Instant::now() + grace,
                killed: false,
            });
            w.terminate();
        } else {
            w.ask_stop(pos);
            w.writer.push(Frame::new(Kind::Cancel, id, Vec::new()));
        }
    }

    /// Stops the tasks that overran their timeout and SIGKILLs stopped workers whose grace has
    /// run out. Returns the next moment this needs doing again.
    fn check_timers(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut earliest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for slot in 0..self.slots.len() {
            let Some(w) = self.slots[slot].as_mut() else {
                continue;
            };
            if let Some(stop) = &mut w.stop {
                if !stop.killed && now >= stop.kill_at {
                    stop.killed = true;
                    w.kill();
                } else if !stop.killed {
                    earliest(stop.kill_at);
                }
                continue;
            }
            if let Some(exit_by) = w.exit_by {
                if now >= exit_by {
                    w.stop = Some(Stop {
                        task: None,
                        kill_at: now + self.config.stop_grace,
                        killed: false,
                    });
                    w.terminate();
                    earliest(now + self.config.stop_grace);
                } else {
                    earliest(exit_by);
                }
                continue;
            }
            // A task asked to stop beside others that is still there after the grace period:
            // stop the whole worker (the tasks running beside it are re-run elsewhere).
            let grace = self.config.stop_grace;
            if let Some(asked) = (w.stop_asks > 0)
                .then(|| w.inflight.iter().filter_map(|s| s.stop_asked).min())
                .flatten()
            {
                if now >= asked + grace {
                    // Stopped for a task that timed out or was cancelled beside others.
                    self.stats[slot].leaving(RestartCause::TimedOut);
                    w.phase = Phase::Draining;
                    w.stop = Some(Stop {
                        task: None,
                        kill_at: now + grace,
                        killed: false,
                    });
                    w.terminate();
                    earliest(now + grace);
                    continue;
                }
                earliest(asked + grace);
            }
            if let Some(deadline) = w.deadline() {
                if now >= deadline {
                    let overdue: Vec<u64> = w
                        .inflight
                        .iter()
                        .filter(|s| {
                            !s.cancelled
                                && s.started.zip(s.timeout).is_some_and(|(t, d)| now >= t + d)
                        })
                        .map(|s| s.id)
                        .collect();
                    for id in overdue {
                        self.stop_task(slot, id, true);
                    }
                    earliest(now + grace);
                    if let Some(next_deadline) =
                        self.slots[slot].as_ref().and_then(Worker::deadline)
                    {
                        earliest(next_deadline);
                    }
                } else {
                    earliest(deadline);
                }
            }
        }
        next
    }

    /// Moves queued tasks to workers that have room, as `placement::plan` chooses.
    ///
    /// Also records under the queue's lock whether room is left (`Queue::wants_tasks`), which
    /// decides whether `submit` must wake us. Both happen under one lock, so a task pushed after
    /// we saw no room is picked up when a worker answers, and one pushed while room is left
    /// wakes us.
    fn assign(&mut self) {
        let max_tasks = self.config.max_tasks_per_child;
        let mut rooms: Vec<Room> = self
            .slots
            .iter()
            .map(|w| {
                w.as_ref()
                    .map_or(Room::default(), |w| Room::of(&load(w), max_tasks))
            })
            .collect();
        let mut q = self.shared.queue.lock().expect("queue poisoned");
        let chosen = placement::plan(&mut rooms, q.tasks.iter().map(|t| t.payload.is_async));
        let taken: Vec<(usize, Task)> = chosen
            .into_iter()
            .map(|slot| {
                (
                    slot,
                    q.tasks.pop_front().expect("planned for a queued task"),
                )
            })
            .collect();
        q.wants_tasks = placement::has_room(&rooms);
        drop(q);
        for (slot, task) in taken {
            let w = self.slots[slot]
                .as_mut()
                .expect("room only for live workers");
            let was_idle = w.inflight.is_empty();
            w.send_task(task.id, task.payload, task.timeout);
            self.stats[slot].sent(was_idle);
        }
    }

    /// Once the pool is closed and no work is left anywhere, asks every worker to exit.
    fn begin_stop_if_done(&mut self) {
        let q = self.shared.queue.lock().expect("queue poisoned");
        let closed = q.closed || q.broken.is_some();
        let queued = !q.tasks.is_empty();
        drop(q);
        if !closed || queued || self.slots.iter().flatten().any(|w| !w.inflight.is_empty()) {
            return;
        }
        self.stopping = true;
        for w in self.slots.iter_mut().flatten() {
            w.phase = Phase::Draining;
            w.send_shutdown(EXIT_GRACE);
        }
    }

    fn flush_all(&mut self) {
        for w in self.slots.iter_mut().flatten() {
            if w.writer.pending() > 0 && !w.sock_closed && !w.write_closed {
                // A write error means the worker is gone; its pidfd will tell us how. Reading
                // goes on: the answers it wrote before it died are still in the socket.
                if w.flush().is_err() {
                    w.write_closed = true;
                }
            }
        }
    }

    /// Sleeps until a worker or a caller has news, or until `next_timer`.
    fn wait_and_handle(&mut self, next_timer: Option<Instant>) {
        let mut fds = vec![PollFd::new(self.shared.doorbell.fd(), PollFlags::POLLIN)];
        let mut owners = Vec::new();
        for (slot, w) in self.slots.iter().enumerate() {
            let Some(w) = w else { continue };
            if !w.sock_closed {
                let mut ev = PollFlags::POLLIN;
                if w.writer.pending() > 0 && !w.write_closed {
                    ev |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(w.sock(), ev));
                owners.push((slot, false));
            }
            fds.push(PollFd::new(w.pidfd(), PollFlags::POLLIN));
            owners.push((slot, true));
            for fd in w.output_fds() {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                owners.push((slot, false));
            }
        }
        // The parent's stdout and stderr, where output waits for room (`relay.rs`): polled last,
        // after every worker's descriptors. A stream whose reader takes nothing starts dropping
        // output at a time of its own.
        let mut outlets: Vec<&Sink> = Vec::new();
        let mut outlet_fds = Vec::new();
        let mut stalls_at = None;
        for sink in [&self.stdout, &self.stderr] {
            let outlet = sink.outlet();
            if outlet.wants_write() {
                outlets.push(sink);
                outlet_fds.push(outlet.raw_fd());
            }
            stalls_at = stalls_at.into_iter().chain(outlet.stalls_at()).min();
        }
        for &raw in &outlet_fds {
            // SAFETY: the outlet's descriptor (the program's 1 or 2) stays open while we poll.
            let fd = unsafe { BorrowedFd::borrow_raw(raw) };
            fds.push(PollFd::new(fd, PollFlags::POLLOUT));
        }
        let next_timer = next_timer.into_iter().chain(stalls_at).min();
        let until_timer = next_timer.map(|t| {
            // Rounded up: waking a millisecond early would only spin.
            let left = t.saturating_duration_since(Instant::now());
            left + Duration::from_micros(999)
        });
        let timeout = match (self.config.idle_tick, until_timer) {
            (None, None) => PollTimeout::NONE,
            (a, b) => PollTimeout::try_from(a.into_iter().chain(b).min().expect("one is set"))
                .unwrap_or(PollTimeout::MAX),
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return,
            Err(e) => panic!("poll failed: {e}"),
        }
        let outlets_ready: Vec<bool> = fds[fds.len() - outlets.len()..]
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        for (sink, ready) in outlets.iter().zip(outlets_ready) {
            if ready {
                sink.outlet().write_ready();
            }
        }
        let ready: Vec<(usize, bool, PollFlags)> = fds[1..]
            .iter()
            .zip(&owners)
            .filter_map(|(p, &(slot, is_pid))| {
                p.revents()
                    .filter(|r| !r.is_empty())
                    .map(|r| (slot, is_pid, r))
            })
            .collect();
        if fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            // Before the next `assign` looks at the queue (`doorbell.rs` says why).
            self.shared.doorbell.answer();
        }
        drop(fds);
        for (slot, _, _) in ready.iter().filter(|r| !r.1) {
            self.read_from(*slot);
        }
        for (slot, _, _) in ready.iter().filter(|r| r.1) {
            self.on_exit(*slot);
        }
    }

    /// Reads what worker `slot` sent (frames, stdout and stderr) and handles each frame.
    /// Returns true once the socket has nothing more to read now (empty, closed or gone).
    fn read_from(&mut self, slot: usize) -> bool {
        let Some(w) = self.slots[slot].as_mut() else {
            return true;
        };
        w.pump_output(false);
        if w.sock_closed {
            return true;
        }
        let mut emptied = false;
        // Bounded so that one chatty worker cannot starve the others.
        for _ in 0..16 {
            match w.fill() {
                Ok(0) => {
                    w.sock_closed = true;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    emptied = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    w.corrupt_stream(&e);
                    break;
                }
                Err(_) => {
                    w.sock_closed = true;
                    break;
                }
            }
        }
        loop {
            let w = self.slots[slot].as_mut().expect("still here");
            match w.reader.next_frame() {
                Ok(Some(frame)) => self.on_frame(slot, frame),
                Ok(None) => break,
                Err(e) => {
                    // A corrupt stream cannot be resynchronised: replace the worker.
                    w.corrupt_stream(&e);
                    break;
                }
            }
        }
        // Judge the next frame by its header, before waiting for the payload it announces:
        // stray bytes read as a header rarely name a task this worker holds.
        let w = self.slots[slot].as_mut().expect("still here");
        if let Some(h) = w.reader.pending_header().filter(|h| !w.may_send(h)) {
            w.corrupt_stream(&format!(
                "a {:?} frame about task {}, which it does not hold",
                h.kind, h.id
            ));
        }
        emptied || self.slots[slot].as_ref().is_none_or(|w| w.sock_closed)
    }

    fn on_frame(&mut self, slot: usize, frame: Frame) {
        let max_tasks = self.config.max_tasks_per_child;
        let max_memory = self.config.max_memory_per_child;
        let w = self.slots[slot].as_mut().expect("frame from a live worker");
        match frame.kind {
            Kind::Hello | Kind::Heartbeat => {}
            Kind::Ready => {
                if w.phase == Phase::Starting {
                    self.stats[slot].ready(!w.inflight.is_empty());
                    w.phase = Phase::Ready;
                    w.front_started();
                }
                self.startup_failures = 0;
            }
            Kind::InitFailed => self.break_pool(frame.payload),
            Kind::Start => w.announced_start(frame.id),
            Kind::Cancel => {
                // The worker skipped (or stopped) a task cancelled there, reported already, or
                // skipped one it was asked to skip if it had not begun, reported now.
                let Some(s) = w.inflight.iter().find(|s| s.id == frame.id) else {
                    return;
                };
                let (cancelled, skip_asked) = (s.cancelled, s.skip_asked);
                if cancelled || skip_asked {
                    w.finish_task(frame.id, None);
                }
                if skip_asked && !cancelled {
                    self.done.push(Done::new(frame.id, Outcome::Cancelled));
                }
            }
            Kind::Ok | Kind::Err => {
                if w.stop.as_ref().is_some_and(|s| s.task == Some(frame.id)) {
                    return; // finished just as it was stopped; reported already
                }
                let Some(sent) = w.finish_task(frame.id, Some(frame.aux)) else {
                    // An answer for a task it does not hold means a broken worker; let the
                    // exit path clean up.
                    w.corrupt_stream(&format!(
                        "an answer for task {}, which it does not hold",
                        frame.id
                    ));
                    return;
                };
                self.stats[slot].answered(
                    frame.aux,
                    frame.flags,
                    frame.kind == Kind::Err,
                    !w.inflight.is_empty(),
                );
                if !sent.cancelled {
                    let outcome = if frame.kind == Kind::Ok {
                        Outcome::Returned(frame.payload)
                    } else {
                        Outcome::Raised(frame.payload)
                    };
                    self.done.push(Done {
                        id: frame.id,
                        outcome,
                        run_us: frame.aux,
                        fds: frame.fds,
                    });
                }
                let recycle = if max_tasks.is_some_and(|m| w.tasks_sent >= m) {
                    Some(RestartCause::MaxTasks)
                } else {
                    over_memory(w, max_memory).then_some(RestartCause::MaxMemory)
                };
                if let Some(cause) = recycle.filter(|_| w.phase != Phase::Draining) {
                    self.stats[slot].leaving(cause);
                    // No new tasks; those it holds still run, then it gets Shutdown and its exit
                    // starts a replacement. No task fails.
                    w.phase = Phase::Draining;
                }
                if w.phase == Phase::Draining && w.inflight.is_empty() && w.stop.is_none() {
                    w.send_shutdown(EXIT_GRACE);
                }
            }
            Kind::Log => {
                let pid = w.pid;
                self.logs.push(WorkerLog {
                    worker: slot,
                    pid,
                    payload: frame.payload,
                });
            }
            Kind::Init | Kind::Task | Kind::Shutdown => {
                // Parent-bound kinds only; a worker sending them is broken.
                w.corrupt_stream(&format!(
                    "a {:?} frame, which only the parent sends",
                    frame.kind
                ));
            }
        }
    }

    /// Handles the exit of worker `slot`: drains its socket, fails its running task, requeues
    /// the rest and starts a replacement.
    fn on_exit(&mut self, slot: usize) {
        // The process is gone, so everything it wrote is already in the socket buffer: read
        // until the buffer is empty, not until end of stream, which a process it started (a
        // fork that inherited the socket) could hold off for as long as it lives.
        while !self.read_from(slot) {}
        if let Some(w) = self.slots[slot].as_mut() {
            w.sock_closed = true;
        }
        // Then what it held back to send in one batch: answers of tasks that finished before
        // the one that killed it. One that reached the socket too was taken above, and its task
        // is no longer one the worker holds. Not after a corrupt stream: the garbage came from
        // the task running before those answers were queued, which must be the one blamed.
        let held = self.slots[slot]
            .as_ref()
            .filter(|w| w.corrupt.is_none())
            .map(Worker::held_frames)
            .unwrap_or_default();
        for frame in held {
            if self.slots[slot]
                .as_ref()
                .is_some_and(|w| w.may_send(&frame.header()))
            {
                self.on_frame(slot, frame);
            }
        }
        let Some(mut w) = self.slots[slot].take() else {
            return;
        };
        w.pump_output(true);
        let stderr_tail = w.stderr.tail();
        let exit = match w.try_reap() {
            Ok(Some(exit)) => exit,
            // The pidfd fired, so the process is gone or going; never leave it behind.
            _ => w.kill_and_reap(),
        };
        let was_starting = w.phase == Phase::Starting;
        let reason = w.corrupt.take();
        // Ended by the SIGTERM or SIGKILL it was stopped with. A worker being stopped that ended
        // otherwise (its own exit code, another signal, a SIGKILL before ours was sent) was
        // ended by a task first: that task is blamed as usual, not run again elsewhere.
        let was_stopped = w.stop.as_ref().is_some_and(|stop| {
            exit.signal
                .is_some_and(|s| s == libc::SIGTERM || (s == libc::SIGKILL && stop.killed))
        });
        let sent = w.writer_sent();
        let orphans = w.take_all();
        drop(w);
        if was_starting {
            // No task had begun: workers flush Ready before running any task, and the socket
            // was drained above, so a worker still Starting died before its first task.
            self.startup_failures += 1;
        }
        let mut requeue = Vec::new();
        for s in orphans {
            if s.cancelled {
                continue; // reported when cancelled
            }
            if s.skip_asked && s.started.is_none() {
                // Asked to skip it and never seen to begin: cancelled, not run elsewhere.
                self.done.push(Done::new(s.id, Outcome::Cancelled));
                continue;
            }
            // A task whose frame did not wholly leave (a write failed as the worker went)
            // never reached it, whatever the order of answers suggested.
            if s.started.is_some() && !was_stopped && s.frame_end <= sent {
                // It was running when the worker died: the likely culprit.
                self.done.push(Done::new(
                    s.id,
                    Outcome::WorkerDied {
                        exit,
                        stderr_tail: stderr_tail.clone(),
                        reason: reason.clone(),
                    },
                ));
            } else {
                // Never started (or running beside a task we stopped the worker for): run it
                // elsewhere.
                requeue.push(s);
            }
        }
        if !requeue.is_empty() {
            let mut q = self.shared.queue.lock().expect("queue poisoned");
            for s in requeue.into_iter().rev() {
                q.tasks.push_front(Task {
                    id: s.id,
                    payload: s.payload,
                    timeout: s.timeout,
                });
            }
        }
        // A closed pool with nothing queued needs no new worker: the tasks left are held by
        // the others (and a worker dying with tasks it never started requeues them, so it is
        // replaced). `terminate_workers` relies on this: a replacement would escape its signal.
        let idle_closed = {
            let q = self.shared.queue.lock().expect("queue poisoned");
            q.closed && q.tasks.is_empty()
        };
        let replace = !self.stopping && !idle_closed;
        let replaced = replace && self.startup_failures < MAX_STARTUP_FAILURES;
        self.stats[slot].exited(exit, was_starting, replaced);
        if self.startup_failures >= MAX_STARTUP_FAILURES {
            self.break_pool(format!("worker processes fail to start: {exit}").into_bytes());
            return;
        }
        if replace {
            self.respawn(slot);
        }
    }

    fn respawn(&mut self, slot: usize) {
        match Worker::spawn(
            &self.config.command,
            &self.config.init,
            &self.stdout,
            &self.stderr,
        ) {
            Ok(mut w) => {
                w.threads = self.config.threads_per_worker.max(1);
                self.stats[slot].spawned(w.pid);
                self.slots[slot] = Some(w);
            }
            Err(e) => {
                self.startup_failures += 1;
                self.break_pool(
                    format!(
                        "cannot start a worker process ({:?}): {e}",
                        self.config.command.first()
                    )
                    .into_bytes(),
                );
            }
        }
    }

    /// Marks the pool broken: every queued and running task fails with `why`, and workers exit.
    fn break_pool(&mut self, why: Vec<u8>) {
        let mut q = self.shared.queue.lock().expect("queue poisoned");
        if q.broken.is_none() {
            q.broken = Some(why.clone());
        }
        let queued: Vec<Task> = q.tasks.drain(..).collect();
        drop(q);
        for t in queued {
            self.done
                .push(Done::new(t.id, Outcome::Broken(why.clone())));
        }
        for w in self.slots.iter_mut().flatten() {
            for s in w.take_all().into_iter().filter(|s| !s.cancelled) {
                self.done
                    .push(Done::new(s.id, Outcome::Broken(why.clone())));
            }
            w.phase = Phase::Draining;
            w.send_shutdown(EXIT_GRACE);
        }
        self.stopping = true;
    }

    /// Ends the pool after this thread panicked, so that nobody waits for ever: every worker
    /// is killed, every unfinished task fails with `Outcome::Broken` saying so (tasks already
    /// finished are delivered as they are), and `submit` refuses new ones. The panic may have
    /// left the shared locks poisoned: they are cleared, since a half-done update can at worst
    /// lose a task between the queue and a worker, and the caller's side fails any task the
    /// engine never answered once it has ended (`_process._collect`).
    fn fail_after_panic(&mut self, panic: &(dyn std::any::Any + Send)) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        let why = format!("the pool's dispatcher thread failed ({what}); the pool is broken")
            .into_bytes();
        self.shared.queue.clear_poison();
        self.shared.done.clear_poison();
        let mut queued = Vec::new();
        {
            let mut q = self.shared.queue.lock().expect("poison cleared");
            q.broken.get_or_insert_with(|| why.clone());
            queued.extend(q.tasks.drain(..).map(|t| t.id));
        }
        queued.extend(self.kill_all());
        for id in queued {
            self.done.push(Done::new(id, Outcome::Broken(why.clone())));
        }
        self.shared.publish(&mut self.done);
        self.shared.room_cv.notify_all();
    }

    /// Copies every slot's statistics to `Shared::stats`; `last` when the dispatcher ends.
    fn publish_stats(&self, last: bool) {
        self.shared
            .stats
            .publish(self.stats.iter().map(SlotStats::snapshot).collect(), last);
    }

    /// Kills and reaps every worker now; returns the tasks they held that were not cancelled
    /// (reported already), for the caller to end.
    fn kill_all(&mut self) -> Vec<u64> {
        let mut held = Vec::new();
        for slot in 0..self.slots.len() {
            let Some(mut w) = self.slots[slot].take() else {
                continue;
            };
            let exit = w.kill_and_reap();
            self.stats[slot].exited(exit, false, false);
            w.pump_output(true);
            held.extend(
                w.take_all()
                    .into_iter()
                    .filter(|s| !s.cancelled)
                    .map(|s| s.id),
            );
        }
        held
    }

    /// Kills every worker now; every unfinished task, running or queued, ends `Cancelled`.
    fn abort_all(&mut self) {
        for id in self.kill_all() {
            self.done.push(Done::new(id, Outcome::Cancelled));
        }
        let queued: Vec<Task> = self
            .shared
            .queue
            .lock()
            .expect("queue poisoned")
            .tasks
            .drain(..)
            .collect();
        for t in queued {
            self.done.push(Done::new(t.id, Outcome::Cancelled));
        }
        self.shared.publish(&mut self.done);
    }
}

/// The figures of worker `w` that `placement` decides on.
fn load(w: &Worker) -> Load {
    Load {
        accepting: w.phase != Phase::Draining && !w.sock_closed && !w.write_closed,
        task_us: w.task_us,
        threads: w.threads,
        tasks: w.inflight.len() - w.coroutines,
        coroutines: w.coroutines,
        tasks_sent: w.tasks_sent,
    }
}

/// Whether worker `w` should be recycled for its memory use; reads it at most every
/// `MEMORY_CHECK_EVERY`.
fn over_memory(w: &mut Worker, limit: Option<u64>) -> bool {
    let Some(limit) = limit else { return false };
    let now = std::time::Instant::now();
    if w.memory_checked_at
        .is_some_and(|t| now - t < MEMORY_CHECK_EVERY)
    {
        return false;
    }
    w.memory_checked_at = Some(now);
    w.private_resident_bytes().is_ok_and(|rss| rss > limit)
}
