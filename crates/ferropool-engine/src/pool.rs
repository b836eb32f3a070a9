//! The process pool's public face: submit opaque task payloads, receive their outcomes.
//!
//! A `ProcessPool` owns one dispatcher thread (see `dispatcher/mod.rs`) that runs the workers.
//! Callers talk to it through `Shared`: they push tasks onto `queue` and wake the dispatcher;
//! the dispatcher pushes outcomes onto `done` and wakes whoever waits in `wait_outcomes`.
//!
//! ```text
//!  submit ──► Shared.queue ──► dispatcher ──frames──► worker process
//!                                   │  ◄──frames──
//!  wait_outcomes ◄── Shared.done ◄──┘       (and log records, for wait_news)
//!  stats ◄── Shared.stats ◄── dispatcher, on request
//! ```

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::buffer::MemFile;
use crate::doorbell::Doorbell;
use crate::stats::{StatsBoard, WorkerStats};
use crate::worker::Exit;

/// Most log records waiting for `wait_news`; more are dropped and counted.
pub const MAX_PENDING_LOGS: usize = 10_000;
/// Most bytes of log records waiting for `wait_news`; more are dropped and counted.
pub const MAX_PENDING_LOG_BYTES: usize = 16 << 20;

/// How to start and run a pool's workers.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Number of worker processes kept alive.
    pub workers: usize,
    /// Program and arguments that start one worker; the number of its socket descriptor is
    /// appended as the last argument.
    pub command: Vec<OsString>,
    /// Payload of the `Init` frame each worker receives first (opaque to the engine).
    pub init: Vec<u8>,
    /// Replace a worker after it has been sent this many tasks.
    pub max_tasks_per_child: Option<u64>,
    /// Replace a worker, between tasks, once its resident memory exceeds this many bytes
    /// (checked when it answers, at most every `MEMORY_CHECK_EVERY`).
    pub max_memory_per_child: Option<u64>,
    /// Most tasks submitted and not yet finished; `submit` waits while there are this many.
    /// `None`: unbounded.
    pub max_pending: Option<usize>,
    /// Longest the dispatcher sleeps when nothing happens. `None` sleeps until an event,
    /// which tests use to prove that no wake-up is ever lost.
    pub idle_tick: Option<Duration>,
    /// How long a worker stopped with SIGTERM (its task timed out or was cancelled) may take to
    /// exit before it gets SIGKILL; also how long a task running beside others has to stop
    /// when asked before its whole worker is stopped.
    pub stop_grace: Duration,
    /// Threads that run tasks in each worker (a `HybridPool`); 1 runs tasks one at a time.
    pub threads_per_worker: usize,
}

impl PoolConfig {
    /// A configuration for `workers` workers started by `command`, with defaults elsewhere.
    pub fn new(workers: usize, command: Vec<OsString>, init: Vec<u8>) -> PoolConfig {
        PoolConfig {
            workers,
            command,
            init,
            max_tasks_per_child: None,
            max_memory_per_child: None,
            max_pending: None,
            idle_tick: Some(Duration::from_secs(1)),
            stop_grace: Duration::from_secs(1),
            threads_per_worker: 1,
        }
    }
}

/// What became of one task.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The task returned; the payload is the worker's encoding of the result.
    Returned(Vec<u8>),
    /// The task raised; the payload is the worker's encoding of the error.
    Raised(Vec<u8>),
    /// The worker running the task died before answering: how it ended, and the last bytes it
    /// wrote to stderr (a traceback, a faulthandler dump, an error from native code).
    WorkerDied {
        exit: Exit,
        stderr_tail: Vec<u8>,
        /// Why the parent stopped the worker, when it did (a corrupt stream); None when the
        /// worker died by itself.
        reason: Option<String>,
    },
    /// The task was cancelled (`ProcessPool::cancel` while it ran or waited at a worker), or
    /// the pool was closed with `abort` before it finished: it was stopped or never ran.
    Cancelled,
    /// The task ran longer than its timeout (`after`); worker `pid` was stopped and replaced.
    TimedOut { pid: i32, after: Duration },
    /// The pool cannot run tasks: a worker's initializer failed (payload from the worker) or
    /// workers could not be started (payload is the message).
    Broken(Vec<u8>),
}

/// One finished task: its id, outcome and run time in the worker (microseconds, 0 if unknown),
/// and the descriptors of the out-of-band buffers of its result, in order.
#[derive(Debug)]
pub struct Done {
    pub id: u64,
    pub outcome: Outcome,
    pub run_us: u32,
    pub fds: Vec<OwnedFd>,
}

impl Done {
    pub(crate) fn new(id: u64, outcome: Outcome) -> Done {
        Done {
            id,
            outcome,
            run_us: 0,
            fds: Vec::new(),
        }
    }
}

/// A log record a worker sent (`Kind::Log`): its payload is opaque to the engine.
#[derive(Debug, PartialEq, Eq)]
pub struct WorkerLog {
    /// The worker slot (0 to `workers - 1`) and process that sent it.
    pub worker: usize,
    pub pid: i32,
    pub payload: Vec<u8>,
}

/// What `wait_news` hands over: finished tasks, and log records sent before them.
#[derive(Debug, Default)]
pub struct News {
    pub outcomes: Vec<Done>,
    pub logs: Vec<WorkerLog>,
    /// Log records dropped since the last call because too many were waiting.
    pub dropped_logs: u64,
}

/// What a task carries to its worker: the encoded call, and its out-of-band buffers (memory
/// files, see `buffer.rs`), whose descriptors travel with it as `SCM_RIGHTS`.
#[derive(Default)]
pub struct Payload {
    pub bytes: Vec<u8>,
    pub buffers: Vec<Arc<MemFile>>,
    /// The call is a coroutine function: the worker runs it on its event loop, where it takes
    /// none of the worker's threads (see `FLAG_ASYNC`).
    pub is_async: bool,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Payload({} bytes, {} buffers)",
            self.bytes.len(),
            self.buffers.len()
        )
    }
}

/// Equal when the bytes are and the same number of buffers ride along (for tests).
impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.bytes == other.bytes && self.buffers.len() == other.buffers.len()
    }
}

impl Eq for Payload {}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Payload {
        Payload {
            bytes,
            buffers: Vec::new(),
            is_async: false,
        }
    }
}

/// Why `submit` refused a task.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// `close` was called.
    Closed,
    /// `max_pending` tasks are unfinished and the wait for room timed out; the payload is
    /// handed back for the next try.
    Full(Payload),
    /// The pool is broken; the payload says why (see `Outcome::Broken`).
    Broken(Vec<u8>),
}

pub(crate) struct Task {
    pub id: u64,
    pub payload: Payload,
    pub timeout: Option<Duration>,
}

#[derive(Default)]
pub(crate) struct Queue {
    pub tasks: VecDeque<Task>,
    pub closed: bool,
    pub broken: Option<Vec<u8>>,
    /// Some worker has room for more tasks. When none has, a new task needs no wake-up: the
    /// dispatcher looks at the queue again when a worker answers, which frees room.
    pub wants_tasks: bool,
    /// Tasks submitted and not yet finished or cancelled (counted only with `max_pending`).
    pub unfinished: usize,
    /// Tasks already at workers that callers asked to cancel, for the dispatcher to act on.
    pub cancels: Vec<u64>,
    /// A caller asked to cancel every task a worker holds but has not started
    /// (`cancel_waiting`), for the dispatcher to act on.
    pub cancel_waiting: bool,
}

#[derive(Default)]
pub(crate) struct DoneQueue {
    pub items: Vec<Done>,
    pub logs: Vec<WorkerLog>,
    pub log_bytes: usize,
    pub dropped_logs: u64,
    /// The dispatcher has exited: nothing more will arrive.
    pub finished: bool,
}

/// State shared between callers and the dispatcher thread.
pub(crate) struct Shared {
    pub queue: Mutex<Queue>,
    pub done: Mutex<DoneQueue>,
    pub done_cv: Condvar,
    /// Signalled when unfinished tasks finish, for submitters waiting under `max_pending`.
    pub room_cv: Condvar,
    pub max_pending: Option<usize>,
    /// Rung when there is news for the dispatcher (`doorbell.rs`).
    pub doorbell: Doorbell,
    /// Kill workers now instead of letting them finish (shutdown without waiting).
    pub abort: AtomicBool,
    /// Snapshots of the workers' statistics, published on request.
    pub stats: StatsBoard,
}

impl Shared {
    /// Wakes the dispatcher unless a wake-up is already on its way. Call it after the change
    /// the dispatcher is to see.
    pub fn wake(&self) {
        self.doorbell.ring();
    }

    /// Counts `n` tasks as no longer pending and wakes submitters waiting for room.
    pub fn finished(&self, n: usize) {
        if self.max_pending.is_none() || n == 0 {
            return;
        }
        let mut q = self.queue.lock().expect("queue poisoned");
        q.unfinished = q.unfinished.saturating_sub(n);
        drop(q);
        self.room_cv.notify_all();
    }

    /// Publishes log records to `wait_news`, dropping (and counting) those past
    /// `MAX_PENDING_LOGS` or `MAX_PENDING_LOG_BYTES`. Called before `publish` in a turn, so a
    /// task's records are handed over no later than its outcome.
    pub fn publish_logs(&self, logs: &mut Vec<WorkerLog>) {
        if logs.is_empty() {
            return;
        }
        let mut d = self.done.lock().expect("done queue poisoned");
        for log in logs.drain(..) {
            if d.logs.len() >= MAX_PENDING_LOGS
                || d.log_bytes + log.payload.len() > MAX_PENDING_LOG_BYTES
            {
                d.dropped_logs += 1;
            } else {
                d.log_bytes += log.payload.len();
                d.logs.push(log);
            }
        }
        drop(d);
        self.done_cv.notify_all();
    }

    /// Publishes finished tasks to `wait_outcomes`.
    pub fn publish(&self, items: &mut Vec<Done>) {
        if items.is_empty() {
            return;
        }
        self.finished(items.len());
        let mut d = self.done.lock().expect("done queue poisoned");
        d.items.append(items);
        drop(d);
        self.done_cv.notify_all();
    }
}

/// A pool of worker processes that runs opaque task payloads.
pub struct ProcessPool {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    workers: usize,
}

impl ProcessPool {
    /// Starts the dispatcher thread, which spawns `config.workers` workers straight away.
    /// Errors if the configuration is unusable or the thread cannot start; a worker that
    /// fails to spawn breaks the pool instead (every task then gets `Outcome::Broken`).
    pub fn start(config: PoolConfig) -> io::Result<ProcessPool> {
        if config.workers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a pool needs at least one worker",
            ));
        }
        if config.command.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty worker command",
            ));
        }
        let doorbell = Doorbell::new()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                wants_tasks: true,
                ..Queue::default()
            }),
            done: Mutex::new(DoneQueue::default()),
            done_cv: Condvar::new(),
            room_cv: Condvar::new(),
            max_pending: config.max_pending,
            doorbell,
            abort: AtomicBool::new(false),
            stats: StatsBoard::default(),
        });
        let workers = config.workers;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ferropool-dispatcher".into())
            .spawn(move || crate::dispatcher::run(s, config))?;
        Ok(ProcessPool {
            shared,
            thread: Mutex::new(Some(thread)),
            workers,
        })
    }

    /// Returns the number of worker processes the pool keeps.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Queues a task that may run for at most `timeout` once started (then its worker is
    /// stopped and it ends `TimedOut`). Never blocks on the workers; with `max_pending`, waits
    /// up to `wait` for room and then fails with `Full` (handing the payload back). Fails if the
    /// pool is closed or broken.
    pub fn submit_within(
        &self,
        id: u64,
        payload: Payload,
        timeout: Option<Duration>,
        wait: Duration,
    ) -> Result<(), SubmitError> {
        let deadline = Instant::now() + wait;
        let mut q = self.shared.queue.lock().expect("queue poisoned");
        loop {
            if let Some(why) = &q.broken {
                return Err(SubmitError::Broken(why.clone()));
            }
            if q.closed {
                return Err(SubmitError::Closed);
            }
            match self.shared.max_pending {
                Some(max) if q.unfinished >= max => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(SubmitError::Full(payload));
                    }
                    q = self
                        .shared
                        .room_cv
                        .wait_timeout(q, deadline - now)
                        .expect("queue poisoned")
                        .0;
                }
                _ => break,
            }
        }
        if self.shared.max_pending.is_some() {
            q.unfinished += 1;
        }
        q.tasks.push_back(Task {
            id,
            payload,
            timeout,
        });
        let wake = q.wants_tasks;
        drop(q);
        if wake {
            self.shared.wake();
        }
        Ok(())
    }

    /// `submit_within` with no timeout and no wait: `Full` at once when `max_pending` tasks
    /// are unfinished.
    pub fn submit(&self, id: u64, payload: Vec<u8>) -> Result<(), SubmitError> {
        self.submit_within(id, payload.into(), None, Duration::ZERO)
    }

    /// Cancels task `id`. If no worker has it yet it is removed and true is returned: it never
    /// runs and gets no outcome. Otherwise false is returned and the dispatcher is asked to stop
    /// it: a task waiting at a worker is skipped there, a running one has its worker stopped
    /// (SIGTERM, SIGKILL after `stop_grace`) and replaced; either way it ends `Cancelled`,
    /// unless it finished first. Does not block on the workers.
    pub fn cancel(&self, id: u64) -> bool {
        let mut q = self.shared.queue.lock().expect("queue poisoned");
        if let Some(pos) = q.tasks.iter().position(|t| t.id == id) {
            q.tasks.remove(pos);
            drop(q);
            self.shared.finished(1);
            true
        } else {
            q.cancels.push(id);
            drop(q);
            self.shared.wake();
            false
        }
    }

    /// Returns true if task `id` is still waiting in the pool's queue (no worker has it).
    pub fn is_queued(&self, id: u64) -> bool {
        self.shared
            .queue
            .lock()
            .expect("queue poisoned")
            .tasks
            .iter()
            .any(|t| t.id == id)
    }

    /// Removes every task that no worker has yet and returns their ids.
    pub fn cancel_all(&self) -> Vec<u64> {
        let mut q = self.shared.queue.lock().expect("queue poisoned");
        let ids: Vec<u64> = q.tasks.drain(..).map(|t| t.id).collect();
        drop(q);
        self.shared.finished(ids.len());
        ids
    }

    /// Cancels every task that no worker has yet, as `cancel_all` does (returning their ids),
    /// and has the dispatcher cancel, on its next turn, every task a worker holds but has not
    /// started: those are reported as `Cancelled` outcomes and skipped by their worker. Running
    /// tasks are left to finish. This is `shutdown(cancel_futures=True)`: queued work is
    /// cancelled, running work is not.
    pub fn cancel_waiting(&self) -> Vec<u64> {
        let mut q = self.shared.queue.lock().expect("queue poisoned");
        let ids: Vec<u64> = q.tasks.drain(..).map(|t| t.id).collect();
        q.cancel_waiting = true;
        drop(q);
        self.shared.finished(ids.len());
        self.shared.wake();
        ids
    }

    /// Stops accepting tasks. Queued tasks still run; then the workers exit and the dispatcher
    /// ends. With `abort`, workers are killed at once and every unfinished task is reported as
    /// `Cancelled`. Returns immediately; see `join`.
    pub fn close(&self, abort: bool) {
        let mut q = self.shared.queue.lock().expect("queue poisoned");
        q.closed = true;
        drop(q);
        if abort {
            self.shared.abort.store(true, Ordering::Release);
        }
        self.shared.room_cv.notify_all();
        self.shared.wake();
    }

    /// Waits for the dispatcher to finish after `close`. Returns false on timeout.
    pub fn join(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut d = self.shared.done.lock().expect("done queue poisoned");
        while !d.finished {
            d = match deadline {
                None => self.shared.done_cv.wait(d).expect("done queue poisoned"),
                Some(dl) => {
                    let now = Instant::now();
                    if now >= dl {
                        return false;
                    }
                    self.shared
                        .done_cv
                        .wait_timeout(d, dl - now)
                        .expect("done queue poisoned")
                        .0
                }
            };
        }
        drop(d);
        if let Some(t) = self.thread.lock().expect("thread slot poisoned").take() {
            let _ = t.join();
        }
        true
    }

    /// Returns each worker slot's statistics (see `stats.rs`). Asks the dispatcher for a fresh
    /// snapshot and waits up to `timeout` for it; past that, or once the pool has ended,
    /// returns the latest one (empty if none was ever taken).
    pub fn stats(&self, timeout: Duration) -> Vec<WorkerStats> {
        let board = &self.shared.stats;
        let deadline = Instant::now() + timeout;
        let mut b = board.board.lock().expect("stats board poisoned");
        let seen = b.generation;
        if !b.last {
            board.wanted.store(true, Ordering::Release);
            self.shared.wake();
        }
        while b.generation == seen && !b.last {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            b = board
                .published
                .wait_timeout(b, deadline - now)
                .expect("stats board poisoned")
                .0;
        }
        b.workers.clone()
    }

    /// Takes every finished task and every log record, waiting up to `timeout` (forever if
    /// `None`) for at least one of either. Records come before the outcomes of tasks that
    /// logged them. Returns `None` once the dispatcher has ended and everything was taken.
    pub fn wait_news(&self, timeout: Option<Duration>) -> Option<News> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut d = self.shared.done.lock().expect("done queue poisoned");
        loop {
            if !d.items.is_empty() || !d.logs.is_empty() || d.dropped_logs > 0 {
                d.log_bytes = 0;
                return Some(News {
                    outcomes: std::mem::take(&mut d.items),
                    logs: std::mem::take(&mut d.logs),
                    dropped_logs: std::mem::take(&mut d.dropped_logs),
                });
            }
            if d.finished {
                return None;
            }
            d = match deadline {
                None => self.shared.done_cv.wait(d).expect("done queue poisoned"),
                Some(dl) => {
                    let now = Instant::now();
                    if now >= dl {
                        return Some(News::default());
                    }
                    self.shared
                        .done_cv
                        .wait_timeout(d, dl - now)
                        .expect("done queue poisoned")
                        .0
                }
            };
        }
    }

    /// Takes every finished task, waiting up to `timeout` (forever if `None`) for news (as
    /// `wait_news`, dropping any log records). Returns `None` once the dispatcher has ended and
    /// everything was taken.
    pub fn wait_outcomes(&self, timeout: Option<Duration>) -> Option<Vec<Done>> {
        self.wait_news(timeout).map(|news| news.outcomes)
    }
}

impl Drop for ProcessPool {
    /// Closes the pool without waiting: queued work still runs in the background.
    fn drop(&mut self) {
        self.close(false);
    }
}
