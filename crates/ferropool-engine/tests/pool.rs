//! End-to-end tests of `ProcessPool` against `echo-worker`, a protocol-speaking test worker.
//! Every wait is bounded; the dispatcher runs with no idle tick, so a lost wake-up hangs the
//! pool and fails the test instead of being papered over by a periodic poll.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferropool_engine::{Outcome, PoolConfig, ProcessPool, RestartCause, SubmitError};

const LIMIT: Duration = Duration::from_secs(20);

fn config(workers: usize) -> PoolConfig {
    let mut c = PoolConfig::new(
        workers,
        vec![OsString::from(env!("CARGO_BIN_EXE_echo-worker"))],
        b"ok".to_vec(),
    );
    c.idle_tick = None;
    c
}

/// Collects outcomes until `n` tasks are done; panics past `LIMIT`.
fn collect(pool: &ProcessPool, n: usize) -> HashMap<u64, Outcome> {
    let deadline = Instant::now() + LIMIT;
    let mut got = HashMap::new();
    while got.len() < n {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("only {} of {n} tasks finished in {LIMIT:?}", got.len()));
        for d in pool.wait_outcomes(Some(left)).expect("pool still running") {
            assert!(
                got.insert(d.id, d.outcome).is_none(),
                "task {} answered twice",
                d.id
            );
        }
    }
    got
}

fn returned(o: &Outcome) -> String {
    match o {
        Outcome::Returned(p) => String::from_utf8(p.clone()).unwrap(),
        other => panic!("expected a result, got {other:?}"),
    }
}

#[test]
fn many_submitters_lose_no_task_and_no_wakeup() {
    let pool = Arc::new(ProcessPool::start(config(2)).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..2_000u64 {
                    let id = t * 1_000_000 + i;
                    pool.submit(id, format!("echo:{id}").into_bytes()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = collect(&pool, 8_000);
    for (id, o) in &got {
        assert_eq!(returned(o), id.to_string());
    }
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
}

#[test]
fn a_dying_worker_fails_only_its_running_task_and_is_replaced() {
    let pool = ProcessPool::start(config(1)).unwrap();
    // One worker: `exit:7` runs first, the echoes are queued behind it on the same worker.
    pool.submit(1, b"exit:7".to_vec()).unwrap();
    for id in 2..40 {
        pool.submit(id, format!("echo:{id}").into_bytes()).unwrap();
    }
    let got = collect(&pool, 39);
    match &got[&1] {
        Outcome::WorkerDied {
            exit, stderr_tail, ..
        } => {
            assert_eq!((exit.code, exit.signal), (Some(7), None));
            assert_eq!(
                String::from_utf8_lossy(stderr_tail),
                "echo-worker: exiting with 7\n",
                "the worker's last stderr line comes with its death"
            );
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    for id in 2..40 {
        assert_eq!(
            returned(&got[&id]),
            id.to_string(),
            "task {id} queued behind the crash must run elsewhere"
        );
    }
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
}

#[test]
fn errors_are_answers_not_failures() {
    let pool = ProcessPool::start(config(1)).unwrap();
    pool.submit(1, b"raise:bad".to_vec()).unwrap();
    pool.submit(2, b"echo:fine".to_vec()).unwrap();
    let got = collect(&pool, 2);
    assert_eq!(got[&1], Outcome::Raised(b"bad".to_vec()));
    assert_eq!(returned(&got[&2]), "fine");
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
}

#[test]
fn max_tasks_per_child_replaces_workers_between_tasks() {
    let mut c = config(1);
    c.max_tasks_per_child = Some(2);
    let pool = ProcessPool::start(c).unwrap();
    for id in 0..6 {
        pool.submit(id, b"pid".to_vec()).unwrap();
    }
    let got = collect(&pool, 6);
    let pids: Vec<String> = (0..6).map(|id| returned(&got[&id])).collect();
    assert_eq!(pids[0], pids[1]);
    assert_ne!(pids[1], pids[2], "a new worker after two tasks");
    assert_eq!(pids[2], pids[3]);
    assert_ne!(pids[3], pids[4]);
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
}

#[test]
fn a_failing_initializer_breaks_the_pool_instead_of_respawning_forever() {
    let mut c = config(2);
    c.init = b"fail".to_vec();
    let pool = ProcessPool::start(c).unwrap();
    pool.submit(1, b"echo:x".to_vec()).unwrap();
    let got = collect(&pool, 1);
    assert_eq!(got[&1], Outcome::Broken(b"initializer failed".to_vec()));
    assert!(pool.join(Some(LIMIT)), "a broken pool winds down by itself");
    assert_eq!(
        pool.submit(2, b"echo:y".to_vec()),
        Err(SubmitError::Broken(b"initializer failed".to_vec()))
    );
}

#[test]
fn a_missing_worker_program_breaks_the_pool_with_a_reason() {
    let mut c = config(1);
    c.command = vec![OsString::from("/nonexistent/ferropool-worker")];
    let pool = ProcessPool::start(c).unwrap();
    assert!(pool.join(Some(LIMIT)));
    match pool.submit(1, Vec::new()) {
        Err(SubmitError::Broken(why)) => assert!(
            String::from_utf8_lossy(&why).contains("cannot start a worker process"),
            "{}",
            String::from_utf8_lossy(&why)
        ),
        other => panic!("expected Broken, got {other:?}"),
    }
}

#[test]
fn cancel_removes_only_tasks_no_worker_has() {
    let pool = ProcessPool::start(config(1)).unwrap();
    pool.close(false);
    assert_eq!(pool.submit(1, b"echo:x".to_vec()), Err(SubmitError::Closed));
    assert!(pool.join(Some(LIMIT)));
    assert!(!pool.cancel(1), "an unknown task is not cancelled");
}

#[test]
fn cancel_all_empties_the_queue() {
    let pool = ProcessPool::start(config(1)).unwrap();
    for id in 0..1000 {
        pool.submit(id, b"echo:x".to_vec()).unwrap();
    }
    let cancelled = pool.cancel_all();
    let ran = collect_until_closed(&pool);
    assert_eq!(
        cancelled.len() + ran,
        1000,
        "every task either ran or was cancelled, never both"
    );
}

fn collect_until_closed(pool: &ProcessPool) -> usize {
    pool.close(false);
    let deadline = Instant::now() + LIMIT;
    let mut n = 0;
    while let Some(batch) =
        pool.wait_outcomes(Some(deadline.saturating_duration_since(Instant::now())))
    {
        assert!(Instant::now() < deadline, "pool did not wind down");
        n += batch.len();
    }
    n
}

#[test]
fn workers_exit_when_the_pool_is_closed() {
    let pool = ProcessPool::start(config(2)).unwrap();
    pool.submit(1, b"pid".to_vec()).unwrap();
    let pid: i32 = returned(&collect(&pool, 1)[&1]).parse().unwrap();
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
    // Reaped: the pid no longer names a child of ours.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| !s.contains(&format!(" {} ", std::process::id())))
    );
}

#[test]
fn abort_kills_workers_and_cancels_every_unfinished_task() {
    let pool = ProcessPool::start(config(1)).unwrap();
    pool.submit(0, b"pid".to_vec()).unwrap();
    let pid: i32 = returned(&collect(&pool, 1)[&0]).parse().unwrap();
    for id in 1..50 {
        pool.submit(id, b"echo:x".to_vec()).unwrap();
    }
    pool.close(true);
    assert!(pool.join(Some(LIMIT)));
    let mut outcomes = HashMap::new();
    while let Some(batch) = pool.wait_outcomes(Some(Duration::ZERO)) {
        for d in batch {
            outcomes.insert(d.id, d.outcome);
        }
    }
    assert_eq!(
        outcomes.len(),
        49,
        "every task answered once, finished or cancelled"
    );
    assert!(outcomes
        .values()
        .all(|o| matches!(o, Outcome::Returned(_) | Outcome::Cancelled)));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the worker is gone and reaped"
    );
}

#[test]
fn max_pending_refuses_past_the_bound_until_tasks_finish_or_are_cancelled() {
    let mut c = config(1);
    c.max_pending = Some(3);
    let pool = ProcessPool::start(c).unwrap();
    for id in 0..3 {
        pool.submit(id, b"sleep:5000".to_vec()).unwrap();
    }
    match pool.submit(3, b"echo:late".to_vec()) {
        Err(SubmitError::Full(payload)) => {
            assert_eq!(payload.bytes, b"echo:late", "the payload comes back")
        }
        other => panic!("expected Full, got {other:?}"),
    }
    let cancelled = pool.cancel_all();
    assert!(
        !cancelled.is_empty(),
        "tasks behind the first are still queued"
    );
    pool.submit_within(3, b"echo:late".to_vec().into(), None, LIMIT)
        .expect("cancelling freed room");
    pool.close(true);
    assert!(pool.join(Some(LIMIT)));
}

#[test]
fn a_submitter_blocked_by_max_pending_is_released_by_close() {
    let mut c = config(1);
    c.max_pending = Some(1);
    let pool = Arc::new(ProcessPool::start(c).unwrap());
    pool.submit(0, b"sleep:5000".to_vec()).unwrap();
    let p = pool.clone();
    let blocked =
        std::thread::spawn(move || p.submit_within(1, b"echo:x".to_vec().into(), None, LIMIT));
    pool.close(true);
    assert_eq!(blocked.join().unwrap(), Err(SubmitError::Closed));
    assert!(pool.join(Some(LIMIT)));
}

/// The pid of the worker that runs the next task (the pool must have one worker).
fn worker_pid(pool: &ProcessPool, id: u64) -> String {
    pool.submit(id, b"pid".to_vec()).unwrap();
    returned(&collect(pool, 1)[&id])
}

/// Waits (bounded) until task `id` has left the shared queue for a worker.
fn wait_until_sent(pool: &ProcessPool, id: u64) {
    let deadline = Instant::now() + LIMIT;
    while pool.is_queued(id) {
        assert!(Instant::now() < deadline, "task {id} never left the queue");
        std::thread::yield_now();
    }
}

#[test]
fn a_task_past_its_timeout_ends_timed_out_and_its_worker_is_replaced() {
    let pool = ProcessPool::start(config(1)).unwrap();
    let before = worker_pid(&pool, 0);
    let started = Instant::now();
    pool.submit_within(
        1,
        b"sleep:20000".to_vec().into(),
        Some(Duration::from_millis(200)),
        Duration::ZERO,
    )
    .unwrap();
    // Sent to the same worker, queued behind the overrunning task: it must run elsewhere.
    pool.submit(2, b"echo:behind".to_vec()).unwrap();
    let got = collect(&pool, 2);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout did not stop the task"
    );
    assert_eq!(
        got[&1],
        Outcome::TimedOut {
            pid: before.parse().unwrap(),
            after: Duration::from_millis(200)
        }
    );
    assert_eq!(returned(&got[&2]), "behind");
    assert_ne!(
        worker_pid(&pool, 3),
        before,
        "the stopped worker was replaced"
    );
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
}

#[test]
fn a_worker_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let mut c = config(1);
    c.stop_grace = Duration::from_millis(300);
    let pool = ProcessPool::start(c).unwrap();
    let before = worker_pid(&pool, 0);
    pool.submit_within(
        1,
        b"stubborn:60000".to_vec().into(),
        Some(Duration::from_millis(100)),
        Duration::ZERO,
    )
    .unwrap();
    assert!(matches!(collect(&pool, 1)[&1], Outcome::TimedOut { .. }));
    assert_ne!(
        worker_pid(&pool, 2),
        before,
        "SIGKILL followed the ignored SIGTERM"
    );
    pool.close(false);
    assert!(
        pool.join(Some(LIMIT)),
        "close does not wait for the stubborn task"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{before}")).exists(),
        "the stubborn worker is gone and reaped"
    );
}

#[test]
fn cancelling_a_running_task_stops_its_worker() {
    let pool = ProcessPool::start(config(1)).unwrap();
    let before = worker_pid(&pool, 0);
    pool.submit(1, b"sleep:20000".to_vec()).unwrap();
    pool.submit(2, b"echo:behind".to_vec()).unwrap();
    wait_until_sent(&pool, 1);
    assert!(!pool.cancel(1), "a task at a worker is not simply removed");
    let got = collect(&pool, 2);
    assert_eq!(got[&1], Outcome::Cancelled);
    assert_eq!(
        returned(&got[&2]),
        "behind",
        "the task queued behind it runs elsewhere"
    );
    assert_ne!(worker_pid(&pool, 3), before);
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
}

#[test]
fn a_task_cancelled_while_queued_at_a_worker_is_skipped_there() {
    let pool = ProcessPool::start(config(1)).unwrap();
    let before = worker_pid(&pool, 0);
    // The worker's tasks are short, so it is sent several at once; had it run task 2 it
    // would have exited.
    pool.submit(1, b"sleep:300".to_vec()).unwrap();
    pool.submit(2, b"exit:3".to_vec()).unwrap();
    pool.submit(3, b"echo:after".to_vec()).unwrap();
    wait_until_sent(&pool, 2);
    assert!(!pool.cancel(2), "task 2 was already sent to the worker");
    let got = collect(&pool, 3);
    assert_eq!(got[&2], Outcome::Cancelled);
    assert_eq!(returned(&got[&1]), "");
    assert_eq!(returned(&got[&3]), "after");
    assert_eq!(
        worker_pid(&pool, 4),
        before,
        "the worker skipped the cancelled task and lives on"
    );
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
}

#[test]
fn cancel_waiting_cancels_held_and_queued_tasks_but_not_the_running_one() {
    let pool = ProcessPool::start(config(1)).unwrap();
    let before = worker_pid(&pool, 0);
    // Task 1 runs; task 2 is held by the worker behind it (had it run, the worker would have
    // exited); the rest wait in the queue or at the worker.
    pool.submit(1, b"sleep:300".to_vec()).unwrap();
    pool.submit(2, b"exit:3".to_vec()).unwrap();
    for id in 3..20 {
        pool.submit(id, b"echo:x".to_vec()).unwrap();
    }
    wait_until_sent(&pool, 2);
    let queued = pool.cancel_waiting();
    let got = collect(&pool, 19 - queued.len());
    assert_eq!(returned(&got[&1]), "", "the running task finishes");
    for id in 2..20 {
        assert!(
            queued.contains(&id) || got[&id] == Outcome::Cancelled,
            "task {id} was neither removed nor cancelled: {:?}",
            got.get(&id)
        );
    }
    assert_eq!(worker_pid(&pool, 20), before, "the worker lives on");
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
}

#[test]
fn close_does_not_wait_for_a_worker_stuck_at_exit_that_ignores_sigterm() {
    let mut c = config(1);
    c.stop_grace = Duration::from_millis(200);
    let pool = ProcessPool::start(c).unwrap();
    let pid = worker_pid(&pool, 0);
    pool.submit(1, b"linger:60000".to_vec()).unwrap();
    collect(&pool, 1);
    let started = Instant::now();
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "close waited for the stuck worker"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the stuck worker is gone and reaped"
    );
}

#[test]
fn a_short_tasks_answer_does_not_wait_for_the_long_task_behind_it() {
    let pool = ProcessPool::start(config(1)).unwrap();
    worker_pid(&pool, 0); // measured as short: the next tasks are sent together
    pool.submit(1, b"echo:quick".to_vec()).unwrap();
    pool.submit(2, b"sleep:60000".to_vec()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("the short task's answer was held behind the long task");
        if let Some(d) = pool
            .wait_outcomes(Some(left))
            .expect("pool running")
            .into_iter()
            .next()
        {
            break d;
        }
    };
    assert_eq!(
        (first.id, returned(&first.outcome)),
        (1, "quick".to_string())
    );
    pool.close(true);
    assert!(pool.join(Some(LIMIT)));
}

#[test]
fn stats_count_answers_per_worker_and_restarts_with_their_cause() {
    // One worker, so that each process starts only after the previous one's exit was handled:
    // by the time the last task is answered, every restart before it is counted.
    let mut c = config(1);
    c.max_tasks_per_child = Some(5);
    let pool = ProcessPool::start(c).unwrap();
    for id in 0..20 {
        pool.submit(id, format!("echo:{id}").into_bytes()).unwrap();
    }
    pool.submit(20, b"raise:no".to_vec()).unwrap();
    collect(&pool, 21);
    pool.submit(21, b"exit:3".to_vec()).unwrap();
    collect(&pool, 1);
    let stats = pool.stats(LIMIT);
    assert_eq!(stats.len(), 1);
    assert_eq!(stats.iter().map(|w| w.tasks).sum::<u64>(), 21, "{stats:?}");
    assert_eq!(stats.iter().map(|w| w.failed).sum::<u64>(), 1);
    let causes: Vec<(RestartCause, Option<i32>)> = stats
        .iter()
        .flat_map(|w| w.recent_restarts.iter().map(|r| (r.cause, r.exit.code)))
        .collect();
    // 21 tasks at 5 per process: four recycled, then the crash.
    assert_eq!(
        causes
            .iter()
            .filter(|c| c.0 == RestartCause::MaxTasks)
            .count(),
        4,
        "{causes:?}"
    );
    assert!(
        causes.contains(&(RestartCause::Crashed, Some(3))),
        "{causes:?}"
    );
    assert_eq!(stats.iter().map(|w| w.restarts).sum::<u64>(), 5);
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
    let last = pool.stats(LIMIT);
    assert!(
        last.iter().all(|w| w.pid.is_none()),
        "the last snapshot has no live process: {last:?}"
    );
    assert_eq!(
        last.iter().map(|w| w.restarts).sum::<u64>(),
        5,
        "a shutdown is not a restart"
    );
}

#[test]
fn log_records_arrive_before_the_outcome_of_their_task() {
    let pool = ProcessPool::start(config(1)).unwrap();
    pool.submit(1, b"log:hello".to_vec()).unwrap();
    let deadline = Instant::now() + LIMIT;
    let mut logs = Vec::new();
    loop {
        let news = pool
            .wait_news(Some(deadline.saturating_duration_since(Instant::now())))
            .expect("pool running");
        logs.extend(news.logs);
        if !news.outcomes.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no outcome in {LIMIT:?}");
    }
    assert_eq!(
        logs.len(),
        1,
        "the record came before (or with) the outcome"
    );
    assert_eq!(
        (logs[0].worker, logs[0].payload.as_slice()),
        (0, &b"hello"[..])
    );
    assert!(logs[0].pid > 0);
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
}

/// A worker can stop reading (it is exiting, or it shut its socket's reading side) while its
/// answers are still on their way: the parent's write to it fails, but what it wrote before
/// must still be read. Here the parent tries to send a second task after the worker went deaf
/// and before the worker answers the first.
#[test]
fn a_failed_write_to_a_worker_does_not_lose_what_it_sent() {
    let dir = std::env::temp_dir().join(format!(
        "ferropool-deaf-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    std::fs::create_dir(&dir).unwrap();
    for fifo in ["deaf", "answer"] {
        nix::unistd::mkfifo(&dir.join(fifo), nix::sys::stat::Mode::S_IRWXU).unwrap();
    }
    let pool = ProcessPool::start(config(1)).unwrap();
    pool.submit(1, format!("deaf:{}", dir.display()).into_bytes())
        .unwrap();
    // Wait (opening a FIFO blocks until the worker opens its end) until it went deaf.
    let mut deaf = std::fs::File::open(dir.join("deaf")).unwrap();
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(&mut deaf, &mut byte).unwrap();
    // The dispatcher writes a task in the turn that takes it from the queue, before it reads
    // again: once task 2 has left the queue, its write has failed or is about to.
    pool.submit(2, b"echo:two".to_vec()).unwrap();
    wait_until_sent(&pool, 2);
    let mut answer = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("answer"))
        .unwrap();
    std::io::Write::write_all(&mut answer, b"a").unwrap();
    let got = collect(&pool, 2);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        returned(&got[&1]),
        "heard",
        "the deaf worker's answer was lost"
    );
    // Never written to the deaf worker, it runs on its replacement.
    assert_eq!(returned(&got[&2]), "two");
    pool.close(false);
    assert!(pool.join(Some(LIMIT)));
}
