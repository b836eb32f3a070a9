//! Per-worker statistics behind `ProcessPool::stats`: tasks answered, busy and idle time,
//! slowest task, time spent pickling in the worker and in transport, restarts and their causes.
//!
//! The dispatcher counts in its own `SlotStats` (one per worker slot, no lock: it is the only
//! thread that sees answers and exits), at the few points where it already handles a task or a
//! worker. A caller that wants the figures sets `StatsBoard::wanted` and wakes the dispatcher,
//! which copies a snapshot onto the board at the end of its next loop turn and notifies; so the
//! cost on the task path is a few additions per answer and one relaxed load per loop turn.
//!
//! Transport time is what the parent sees beyond the worker's own run time: from the moment a
//! task could start (sent to an idle worker, or the previous answer arrived, or the worker said
//! `Ready`) to its answer's arrival, minus the run time the worker reports. Summed over a
//! worker's tasks this telescopes to "time the worker held work, minus time it ran tasks":
//! socket latency, answers held back for batching, and the worker loop's own overhead.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::frame::SERIALIZE_SHARE_FULL;
use crate::worker::Exit;

/// Restarts remembered per worker slot with their exit status (all are counted).
pub const RECENT_RESTARTS: usize = 16;

/// Why a worker process was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartCause {
    /// It died on its own (a crash, `os._exit`, the OOM killer) while ready.
    Crashed,
    /// It died before saying `Ready`.
    StartFailed,
    /// Recycled after `max_tasks_per_child` tasks.
    MaxTasks,
    /// Recycled for using more than `max_memory_per_child`.
    MaxMemory,
    /// Stopped because its running task overran its timeout.
    TimedOut,
    /// Stopped because its running task was cancelled.
    Cancelled,
}

impl RestartCause {
    /// The cause as the Python layer names it.
    pub fn name(self) -> &'static str {
        match self {
            RestartCause::Crashed => "crashed",
            RestartCause::StartFailed => "start_failed",
            RestartCause::MaxTasks => "max_tasks_per_child",
            RestartCause::MaxMemory => "max_memory_per_child",
            RestartCause::TimedOut => "task_timeout",
            RestartCause::Cancelled => "cancelled",
        }
    }
}

/// One replacement of a worker: why, and how its process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restart {
    pub cause: RestartCause,
    pub exit: Exit,
}

/// What one worker slot has done since the pool started, over all the processes that held it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// The process holding the slot now, if any.
    pub pid: Option<i32>,
    /// Tasks answered (returned or raised).
    pub tasks: u64,
    /// Of those, tasks that raised.
    pub failed: u64,
    /// Time the slot's processes were ready (from `Ready` to exit), in microseconds.
    pub alive_us: u64,
    /// Sum of the answered tasks' run times as the worker measured them, in microseconds.
    pub busy_us: u64,
    /// The longest run time of one task, in microseconds.
    pub max_task_us: u64,
    /// Part of `busy_us` the worker spent unpickling calls and pickling results.
    pub serialize_us: u64,
    /// Time the worker held work beyond its run time (see the module docs), in microseconds.
    /// Workers running several tasks at once report more run time than passes: then 0.
    pub transport_us: u64,
    /// Processes replaced, all causes.
    pub restarts: u64,
    /// The last `RECENT_RESTARTS` replacements, oldest first.
    pub recent_restarts: Vec<Restart>,
}

/// The dispatcher's counters for one worker slot.
#[derive(Default)]
pub(crate) struct SlotStats {
    totals: WorkerStats,
    recent: VecDeque<Restart>,
    /// When the current process said `Ready`.
    ready_at: Option<Instant>,
    /// Since when the current process has held work not yet accounted for.
    working_since: Option<Instant>,
    /// Run time minus the time work was held: negative parts cancel out over a batch.
    transport_signed_us: i64,
    /// Why the current process is going away, if we decided it.
    leaving: Option<RestartCause>,
}

impl SlotStats {
    /// A new process `pid` took the slot.
    pub fn spawned(&mut self, pid: i32) {
        self.totals.pid = Some(pid);
        self.ready_at = None;
        self.working_since = None;
        self.leaving = None;
    }

    /// The process said `Ready`; `holding` is whether tasks already wait at it.
    pub fn ready(&mut self, holding: bool) {
        let now = Instant::now();
        self.ready_at = Some(now);
        self.working_since = holding.then_some(now);
    }

    /// A task was sent to the process; `was_idle` is whether it held none before.
    pub fn sent(&mut self, was_idle: bool) {
        if was_idle && self.ready_at.is_some() {
            self.working_since = Some(Instant::now());
        }
    }

    /// An answer arrived: run time `run_us`, `share` of it pickling (in 255ths), whether the
    /// task raised, and whether more tasks wait at the process.
    pub fn answered(&mut self, run_us: u32, share: u8, raised: bool, more: bool) {
        let run = u64::from(run_us);
        let t = &mut self.totals;
        t.tasks += 1;
        t.failed += u64::from(raised);
        t.busy_us += run;
        t.max_task_us = t.max_task_us.max(run);
        t.serialize_us += run * u64::from(share) / u64::from(SERIALIZE_SHARE_FULL);
        let now = Instant::now();
        if let Some(since) = self.working_since {
            let held =
                i64::try_from(now.saturating_duration_since(since).as_micros()).unwrap_or(i64::MAX);
            self.transport_signed_us = self
                .transport_signed_us
                .saturating_add(held - i64::from(run_us));
        }
        self.working_since = more.then_some(now);
    }

    /// The dispatcher decided to replace the process, for `cause`; the first cause given wins.
    pub fn leaving(&mut self, cause: RestartCause) {
        self.leaving.get_or_insert(cause);
    }

    /// The process exited. If another takes its place (`replaced`), that is a restart: counted,
    /// with its cause.
    pub fn exited(&mut self, exit: Exit, was_starting: bool, replaced: bool) {
        if let Some(ready) = self.ready_at.take() {
            self.totals.alive_us += micros(ready.elapsed());
        }
        self.totals.pid = None;
        self.working_since = None;
        let cause = match self.leaving.take() {
            _ if !replaced => return,
            Some(cause) => cause,
            None if was_starting => RestartCause::StartFailed,
            None => RestartCause::Crashed,
        };
        self.totals.restarts += 1;
        if self.recent.len() == RECENT_RESTARTS {
            self.recent.pop_front();
        }
        self.recent.push_back(Restart { cause, exit });
    }

    /// The figures as of now.
    pub fn snapshot(&self) -> WorkerStats {
        let mut s = self.totals.clone();
        if let Some(ready) = self.ready_at {
            s.alive_us += micros(ready.elapsed());
        }
        s.transport_us = u64::try_from(self.transport_signed_us).unwrap_or(0);
        s.recent_restarts = self.recent.iter().copied().collect();
        s
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Where the dispatcher leaves snapshots for `ProcessPool::stats`.
#[derive(Default)]
pub(crate) struct StatsBoard {
    /// A caller waits for a snapshot; the dispatcher clears it when it publishes one.
    pub wanted: AtomicBool,
    pub board: Mutex<Board>,
    pub published: Condvar,
}

#[derive(Default)]
pub(crate) struct Board {
    /// Bumped at each snapshot, so a caller knows a new one arrived.
    pub generation: u64,
    pub workers: Vec<WorkerStats>,
    /// The dispatcher has ended: this snapshot is the last.
    pub last: bool,
}

impl StatsBoard {
    /// Replaces the snapshot and wakes the callers waiting for it.
    pub fn publish(&self, workers: Vec<WorkerStats>, last: bool) {
        let mut b = self.board.lock().expect("stats board poisoned");
        b.generation += 1;
        b.workers = workers;
        b.last |= last;
        drop(b);
        self.published.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(pid: i32, code: Option<i32>, signal: Option<i32>) -> Exit {
        Exit { pid, code, signal }
    }

    #[test]
    fn counts_answers_and_keeps_the_slowest() {
        let mut s = SlotStats::default();
        s.spawned(10);
        s.ready(false);
        s.sent(true);
        s.answered(300, 0, false, true);
        s.answered(1200, 255, true, true);
        s.answered(500, 51, false, false);
        let w = s.snapshot();
        assert_eq!(
            (w.pid, w.tasks, w.failed, w.busy_us, w.max_task_us),
            (Some(10), 3, 1, 2000, 1200)
        );
        assert_eq!(w.serialize_us, 1200 + 100);
        assert!(w.alive_us < 10_000_000);
        assert_eq!(w.restarts, 0);
    }

    #[test]
    fn transport_is_held_time_minus_run_time_over_a_batch() {
        let mut s = SlotStats::default();
        s.spawned(1);
        s.ready(false);
        s.sent(true);
        // Answers that arrive together report more run time than passed: no transport yet,
        // and the surplus is not lost but cancels against later waiting.
        s.answered(5_000_000, 0, false, true);
        assert_eq!(s.snapshot().transport_us, 0);
        std::thread::sleep(Duration::from_millis(20));
        s.answered(0, 0, false, false);
        assert_eq!(
            s.snapshot().transport_us,
            0,
            "20 ms of waiting against 5 s of reported run time"
        );
    }

    #[test]
    fn restarts_name_their_cause_and_a_closing_exit_is_none() {
        let mut s = SlotStats::default();
        s.spawned(1);
        s.ready(false);
        s.exited(exit(1, None, Some(11)), false, true);
        s.spawned(2);
        s.exited(exit(2, Some(1), None), true, true);
        s.spawned(3);
        s.ready(true);
        s.leaving(RestartCause::MaxTasks);
        s.leaving(RestartCause::TimedOut);
        s.exited(exit(3, Some(0), None), false, true);
        s.spawned(4);
        s.ready(false);
        s.exited(exit(4, Some(0), None), false, false);
        let w = s.snapshot();
        assert_eq!(w.pid, None);
        assert_eq!(w.restarts, 3);
        let causes: Vec<RestartCause> = w.recent_restarts.iter().map(|r| r.cause).collect();
        assert_eq!(
            causes,
            [
                RestartCause::Crashed,
                RestartCause::StartFailed,
                RestartCause::MaxTasks
            ]
        );
        assert_eq!(w.recent_restarts[0].exit.signal, Some(11));
    }

    #[test]
    fn only_the_last_restarts_are_kept_but_all_are_counted() {
        let mut s = SlotStats::default();
        for pid in 0..(RECENT_RESTARTS as i32 + 5) {
            s.spawned(pid);
            s.ready(false);
            s.exited(exit(pid, Some(3), None), false, true);
        }
        let w = s.snapshot();
        assert_eq!(w.restarts, RECENT_RESTARTS as u64 + 5);
        assert_eq!(w.recent_restarts.len(), RECENT_RESTARTS);
        assert_eq!(w.recent_restarts[0].exit.pid, 5);
    }
}
