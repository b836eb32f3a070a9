//! Where the dispatcher sends queued tasks: how many more tasks each worker should hold
//! ([`Room::of`]) and which worker gets each task at the front of the queue ([`plan`]).
//!
//! Pure functions of the figures the dispatcher keeps per worker, so that the policy is tested
//! here without processes. The policy:
//!
//! - A worker holds its running task plus enough queued ones to keep each of its task threads
//!   busy for about [`PREFETCH_US`] while results travel back, judged from the run times it
//!   reports. Short tasks are thus batched hundreds per system call, while a worker running long
//!   tasks gets its next one only when it answers, so long tasks stay in the shared queue where
//!   any idle worker can take them.
//! - A worker that has not answered yet (starting, or not timed) gets [`INITIAL_PREFETCH`] per
//!   thread: starting workers take tasks before they are ready, so they count as room.
//! - Coroutine tasks wait on I/O side by side on a worker's event loop: up to
//!   [`MAX_COROUTINES_PER_WORKER`] at once, whatever their run time.
//! - `max_tasks_per_child` caps the room at the tasks the worker may still be sent.
//! - Each task goes to a worker with an idle task thread if there is one (never behind a running
//!   task while a thread elsewhere is idle), else to the one with the most room; among equals,
//!   to the one in the highest slot. The queue is served in order: a task that finds no room
//!   stops the tasks behind it too.

/// Queued work each worker should hold, in microseconds of its measured task time.
const PREFETCH_US: f64 = 2000.0;
/// Tasks sent to a worker per thread before its first run time is known.
const INITIAL_PREFETCH: usize = 2;
/// Most tasks queued at one worker's thread, however short they are.
const MAX_PREFETCH: usize = 1024;
/// Most coroutine tasks at one worker at once: they wait on I/O concurrently on its event loop.
const MAX_COROUTINES_PER_WORKER: usize = 1024;

/// What the policy needs to know about one live worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Whether it takes new tasks: false once it drains (recycling, shutdown) or its socket
    /// closed. A starting worker does take tasks.
    pub accepting: bool,
    /// Smoothed run time of its recent tasks in microseconds; `None` before the first.
    pub task_us: Option<f64>,
    /// Threads that run its plain (non-coroutine) tasks.
    pub threads: usize,
    /// Plain tasks sent to it and not answered.
    pub tasks: usize,
    /// Coroutine tasks sent to it and not answered.
    pub coroutines: usize,
    /// Tasks ever sent to it.
    pub tasks_sent: u64,
}

/// How many more plain and coroutine tasks one worker should be sent now, and how many of its
/// task threads are idle. An empty slot has none of either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Room {
    pub tasks: usize,
    pub coroutines: usize,
    pub idle_threads: usize,
}

impl Room {
    /// The room of a worker under `load`, in a pool with `max_tasks_per_child`.
    pub(crate) fn of(load: &Load, max_tasks_per_child: Option<u64>) -> Room {
        // Plain tasks run one per thread.
        let idle_threads = load.threads.saturating_sub(load.tasks);
        if !load.accepting {
            return Room {
                tasks: 0,
                coroutines: 0,
                idle_threads,
            };
        }
        let per_thread = match load.task_us {
            None => INITIAL_PREFETCH,
            // The running task plus about PREFETCH_US of queued ones: none for long tasks, whose
            // next task is sent when they answer (a round trip is ~0.1 ms), so no task waits
            // behind a long one while another worker is idle.
            Some(us) => ((PREFETCH_US / us) as usize).min(MAX_PREFETCH) + 1,
        };
        let mut tasks = (per_thread * load.threads).saturating_sub(load.tasks);
        let mut coroutines = MAX_COROUTINES_PER_WORKER.saturating_sub(load.coroutines);
        if let Some(max) = max_tasks_per_child {
            let left = max.saturating_sub(load.tasks_sent) as usize;
            (tasks, coroutines) = (tasks.min(left), coroutines.min(left));
        }
        Room {
            tasks,
            coroutines,
            idle_threads,
        }
    }

    fn of_kind(&self, coroutine: bool) -> usize {
        if coroutine {
            self.coroutines
        } else {
            self.tasks
        }
    }
}

/// Chooses a worker (an index into `rooms`) for each task of `queue`, front first (`true` for a
/// coroutine task), and takes the room each uses from `rooms`. Stops at the first task that no
/// worker has room for; returns the chosen workers, one per task taken from the front.
pub(crate) fn plan(rooms: &mut [Room], queue: impl IntoIterator<Item = bool>) -> Vec<usize> {
    let mut chosen = Vec::new();
    for coroutine in queue {
        let Some(slot) = (0..rooms.len())
            .filter(|&i| rooms[i].of_kind(coroutine) > 0)
            .max_by_key(|&i| (rooms[i].idle_threads > 0, rooms[i].of_kind(coroutine)))
        else {
            break;
        };
        let room = &mut rooms[slot];
        if coroutine {
            room.coroutines -= 1;
        } else {
            room.tasks -= 1;
            room.idle_threads = room.idle_threads.saturating_sub(1);
        }
        chosen.push(slot);
    }
    chosen
}

/// Whether any worker has room for a task of either kind.
pub(crate) fn has_room(rooms: &[Room]) -> bool {
    rooms.iter().any(|r| r.tasks > 0 || r.coroutines > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: bool = false;
    const COROUTINE: bool = true;

    /// A ready worker with one thread, nothing sent, and task time `task_us`.
    fn ready(task_us: f64) -> Load {
        Load {
            accepting: true,
            task_us: Some(task_us),
            threads: 1,
            tasks: 0,
            coroutines: 0,
            tasks_sent: 0,
        }
    }

    fn rooms(loads: &[Load], max_tasks_per_child: Option<u64>) -> Vec<Room> {
        loads
            .iter()
            .map(|l| Room::of(l, max_tasks_per_child))
            .collect()
    }

    #[test]
    fn short_tasks_are_prefetched_for_about_two_milliseconds_per_thread() {
        assert_eq!(Room::of(&ready(100.0), None).tasks, 21);
        let busy = Load {
            threads: 4,
            tasks: 3,
            ..ready(100.0)
        };
        assert_eq!(
            Room::of(&busy, None),
            Room {
                tasks: 21 * 4 - 3,
                coroutines: MAX_COROUTINES_PER_WORKER,
                idle_threads: 1
            }
        );
        assert_eq!(
            Room::of(&ready(0.001), None).tasks,
            MAX_PREFETCH + 1,
            "capped however short the tasks"
        );
    }

    #[test]
    fn a_worker_running_a_long_task_gets_no_more_until_it_answers() {
        let running = Load {
            tasks: 1,
            ..ready(1e6)
        };
        let mut r = rooms(&[running], None);
        assert_eq!(r[0].tasks, 0);
        assert!(plan(&mut r, [PLAIN]).is_empty());
        assert!(has_room(&r), "coroutines still fit beside it");
    }

    #[test]
    fn an_idle_thread_is_preferred_to_queueing_behind_a_running_task() {
        // Worker 0 runs a short task and has much room; worker 1 is idle but its long tasks
        // leave it little. The task goes to the idle thread, the next one to the most room.
        let busy = Load {
            tasks: 1,
            ..ready(10.0)
        };
        let idle = ready(1000.0);
        let mut r = rooms(&[busy, idle], None);
        assert!(r[0].tasks > r[1].tasks);
        assert_eq!(plan(&mut r, [PLAIN, PLAIN, PLAIN]), [1, 0, 0]);
        assert_eq!(r[1].idle_threads, 0);
    }

    #[test]
    fn ties_go_to_the_highest_slot_and_tasks_spread_over_idle_workers() {
        let mut r = rooms(&[ready(100.0), ready(100.0), ready(100.0)], None);
        assert_eq!(
            plan(&mut r, [PLAIN; 3]),
            [2, 1, 0],
            "one per idle thread first"
        );
        assert_eq!(
            plan(&mut r, [PLAIN; 3]),
            [2, 1, 0],
            "then by most room, ties to the highest slot"
        );
    }

    #[test]
    fn starting_workers_count_as_room() {
        let starting = Load {
            task_us: None,
            threads: 2,
            ..ready(0.0)
        };
        let mut r = rooms(&[starting], None);
        assert_eq!(r[0].tasks, INITIAL_PREFETCH * 2);
        assert!(has_room(&r));
        assert_eq!(plan(&mut r, [PLAIN; 10]), [0; INITIAL_PREFETCH * 2]);
        assert!(
            !r.iter().any(|r| r.tasks > 0),
            "no room left for plain tasks"
        );
    }

    #[test]
    fn no_worker_with_room_takes_nothing() {
        let draining = Load {
            accepting: false,
            ..ready(100.0)
        };
        let mut r = rooms(&[draining, draining], None);
        assert_eq!(
            r[0],
            Room {
                tasks: 0,
                coroutines: 0,
                idle_threads: 1
            }
        );
        assert!(!has_room(&r));
        assert!(plan(&mut r, [PLAIN, COROUTINE]).is_empty());
        let mut empty_slots = vec![Room::default(); 2];
        assert!(plan(&mut empty_slots, [PLAIN]).is_empty());
        assert!(!has_room(&empty_slots));
    }

    #[test]
    fn max_tasks_per_child_caps_the_room_of_both_kinds() {
        let nearly_done = Load {
            tasks_sent: 9,
            ..ready(1.0)
        };
        let mut r = rooms(&[nearly_done], Some(10));
        assert_eq!((r[0].tasks, r[0].coroutines), (1, 1));
        assert_eq!(plan(&mut r, [PLAIN, PLAIN]), [0]);
        let spent = Load {
            tasks_sent: 12,
            ..ready(1.0)
        };
        assert!(!has_room(&rooms(&[spent], Some(10))));
    }

    #[test]
    fn coroutines_use_their_own_room_and_no_idle_thread() {
        let full = Load {
            tasks: 1,
            ..ready(1e6)
        };
        let mut r = rooms(&[full, ready(1e6)], None);
        assert_eq!(r[0].coroutines, MAX_COROUTINES_PER_WORKER);
        // Worker 1 has an idle thread: it is preferred for the coroutine too, which leaves
        // its thread idle for the plain task behind it.
        assert_eq!(plan(&mut r, [COROUTINE, PLAIN]), [1, 1]);
        assert_eq!(r[1].coroutines, MAX_COROUTINES_PER_WORKER - 1);
        let busy = Load {
            coroutines: MAX_COROUTINES_PER_WORKER,
            ..ready(1e6)
        };
        assert_eq!(Room::of(&busy, None).coroutines, 0);
    }

    #[test]
    fn the_queue_is_served_in_order() {
        // No room for plain tasks, room for coroutines: the coroutine behind a plain task waits.
        let full = Load {
            tasks: 1,
            ..ready(1e6)
        };
        let mut r = rooms(&[full], None);
        assert!(plan(&mut r, [PLAIN, COROUTINE]).is_empty());
        assert_eq!(plan(&mut r, [COROUTINE, PLAIN]), [0]);
    }
}
