//! `ThreadWorkQueue`: the task queue of `ferropool.ThreadPool` and the loop its worker threads run.
//!
//! A task is a future and the call whose outcome it receives, `(future, fn, args, kwargs)`. The
//! queue is the engine's `WorkQueue`, so waiting happens outside the GIL, and nothing here relies
//! on the GIL for safety: shared state is a `Mutex` or an atomic, and a future's state changes
//! happen under the future's own lock, which keeps the class sound on free-threaded builds. A
//! worker detaches from the interpreter only when it must block; while work is queued it pops
//! and runs tasks without releasing the GIL between them.
//!
//! Each worker thread counts its tasks and their run time in counters of its own (written by
//! that thread alone, read by `stats`), so counting needs no lock and shares no cache line
//! between threads that write.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use ferropool_engine::work_queue::{Pop, WorkQueue};

use crate::future::FastFuture;

/// One submitted call: `future` receives the outcome of `func(*args, **kwargs)`.
struct Task {
    future: Py<PyAny>,
    func: Py<PyAny>,
    args: Py<PyTuple>,
    /// `None` when empty, which saves building a dict for the call.
    kwargs: Option<Py<PyDict>>,
}

impl Task {
    /// Runs the call the way `concurrent.futures.thread._WorkItem.run` does. An `Err` is not the
    /// task's exception (that goes to the future) but a failure of the future itself.
    /// `before_finish` runs once, right before the outcome is set on the future (not for a
    /// cancelled one).
    fn run(&self, py: Python<'_>, before_finish: impl FnOnce()) -> PyResult<()> {
        let future = self.future.bind(py);
        let fast = FastFuture::of(future)?;
        let running = match &fast {
            Some(fast) => fast.set_running()?,
            None => None,
        };
        let running = match running {
            Some(running) => running,
            None => future
                .call_method0(intern!(py, "set_running_or_notify_cancel"))?
                .is_truthy()?,
        };
        if !running {
            return Ok(());
        }
        // Like the standard library, a BaseException that is not an Exception (SystemExit,
        // KeyboardInterrupt) also lands on the future instead of ending the thread.
        let outcome = self
            .func
            .bind(py)
            .call(self.args.bind(py), self.kwargs.as_ref().map(|k| k.bind(py)));
        let outcome = outcome.map_err(|err| err.into_value(py).into_bound(py).into_any());
        before_finish();
        if let Some(fast) = &fast {
            if fast.finish(&outcome)? {
                return Ok(());
            }
        }
        match outcome {
            Ok(result) => future.call_method1(intern!(py, "set_result"), (result,))?,
            Err(exc) => future.call_method1(intern!(py, "set_exception"), (exc,))?,
        };
        Ok(())
    }

    /// Returns the task as the `(future, fn, args, kwargs)` tuple that `put` took apart.
    fn into_tuple(self, py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
        let kwargs = match self.kwargs {
            Some(k) => k.into_bound(py),
            None => PyDict::new(py),
        };
        PyTuple::new(
            py,
            [
                self.future.into_bound(py),
                self.func.into_bound(py),
                self.args.into_bound(py).into_any(),
                kwargs.into_any(),
            ],
        )
    }
}

/// Queue of submitted calls shared by a pool's threads; see `_core.pyi`.
#[pyclass(frozen, module = "ferropool._core")]
pub struct ThreadWorkQueue {
    queue: WorkQueue<Task>,
    max_threads: usize,
    /// Worker threads the Python side has been told to start.
    threads: AtomicUsize,
    /// The counters of each thread that has run `run_worker`, in start order.
    counters: Mutex<Vec<Arc<ThreadCounters>>>,
}

/// What one worker thread has run; written only by that thread.
#[derive(Default)]
struct ThreadCounters {
    tasks: AtomicU64,
    busy_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl ThreadCounters {
    fn add(&self, ns: u64) {
        // Only the owning thread writes, so load-then-store loses nothing and costs no lock.
        self.tasks
            .store(self.tasks.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.busy_ns.store(
            self.busy_ns.load(Ordering::Relaxed).saturating_add(ns),
            Ordering::Relaxed,
        );
        if ns > self.max_ns.load(Ordering::Relaxed) {
            self.max_ns.store(ns, Ordering::Relaxed);
        }
    }
}

impl ThreadWorkQueue {
    /// Reserves a slot for one more worker thread; false when `max_threads` are already reserved.
    fn reserve_thread(&self) -> bool {
        self.threads
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_threads).then_some(n + 1)
            })
            .is_ok()
    }

    /// Pops the next task, blocking (detached from the interpreter) only when the queue is empty.
    /// `returned`: the caller announced its return with `WorkQueue::returning`.
    fn next(&self, py: Python<'_>, timeout: Option<Duration>, returned: bool) -> Pop<Task> {
        match self.queue.try_pop_returned(returned) {
            Some(task) => Pop::Item(task),
            None if timeout == Some(Duration::ZERO) => {
                if self.queue.is_closed() {
                    Pop::Closed
                } else {
                    Pop::TimedOut
                }
            }
            None => py.detach(|| self.queue.pop_returned(timeout, returned)),
        }
    }
}

#[pymethods]
impl ThreadWorkQueue {
    #[new]
    #[pyo3(signature = (max_threads))]
    fn new(max_threads: usize) -> PyResult<Self> {
        if max_threads == 0 {
            return Err(PyValueError::new_err("max_threads must be greater than 0"));
        }
        Ok(ThreadWorkQueue {
            queue: WorkQueue::new(),
            max_threads,
            threads: AtomicUsize::new(0),
            counters: Mutex::new(Vec::new()),
        })
    }

    /// Queues the call `func(*args, **kwargs)` whose outcome goes to `future`, without blocking.
    /// Returns True when the caller must start one more worker thread: no waiting thread is free
    /// to take the task and fewer than `max_threads` have been started (this call reserves the
    /// slot). Raises `RuntimeError` once closed.
    #[pyo3(signature = (future, func, args, kwargs=None))]
    fn put(
        &self,
        future: Py<PyAny>,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        kwargs: Option<Bound<'_, PyDict>>,
    ) -> PyResult<bool> {
        let kwargs = kwargs.filter(|k| !k.is_empty()).map(Bound::unbind);
        match self.queue.push(Task {
            future,
            func,
            args,
            kwargs,
        }) {
            Ok(absorbed) => Ok(!absorbed && self.reserve_thread()),
            Err(_closed) => Err(PyRuntimeError::new_err(
                "cannot schedule new futures after shutdown",
            )),
        }
    }

    /// Removes and returns the oldest task as `(future, fn, args, kwargs)`, blocking without the
    /// GIL while the queue is empty. Returns None once the queue is closed and empty; raises
    /// `TimeoutError` after `timeout` seconds with nothing queued.
    #[pyo3(signature = (timeout=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let timeout = match timeout {
            Some(t) if t.is_nan() || t < 0.0 => {
                return Err(PyValueError::new_err(
                    "timeout must be a non-negative number",
                ))
            }
            Some(t) => Some(Duration::try_from_secs_f64(t).unwrap_or(Duration::MAX)),
            None => None,
        };
        match self.next(py, timeout, false) {
            Pop::Item(task) => Ok(Some(task.into_tuple(py)?)),
            Pop::Closed => Ok(None),
            Pop::TimedOut => Err(PyTimeoutError::new_err("no work item arrived in time")),
        }
    }

    /// Runs tasks until the queue is closed and empty: the whole body of a worker thread.
    /// Blocks (without the GIL) while the queue is empty. An error that is not the task's own
    /// (say a future in an unexpected state) is set on the future if it still can be, else
    /// reported with `sys.unraisablehook` naming the future; either way the loop goes on.
    fn run_worker(&self, py: Python<'_>) {
        let counters = Arc::new(ThreadCounters::default());
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(counters.clone());
        let mut returned = false;
        while let Pop::Item(task) = self.next(py, None, returned) {
            let started = Instant::now();
            // The worker counts as free from just before the outcome is published: a caller
            // woken by `result()` that submits again finds it, as with the standard library's
            // idle semaphore, instead of starting another thread.
            returned = false;
            let ran = task.run(py, || {
                self.queue.returning();
                returned = true;
            });
            counters.add(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
            if let Err(err) = ran {
                let future = task.future.bind(py);
                let exc = err.clone_ref(py).into_value(py);
                if future
                    .call_method1(intern!(py, "set_exception"), (exc,))
                    .is_err()
                {
                    err.write_unraisable(py, Some(future));
                }
            }
        }
    }

    /// Returns one `(tasks, busy_ns, max_task_ns)` tuple per thread that has run
    /// `run_worker`, in start order; never blocks on the workers.
    fn stats(&self) -> Vec<(u64, u64, u64)> {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters
            .iter()
            .map(|c| {
                (
                    c.tasks.load(Ordering::Relaxed),
                    c.busy_ns.load(Ordering::Relaxed),
                    c.max_ns.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Refuses further `put`s and wakes every waiting thread; queued items still run.
    fn close(&self) {
        self.queue.close()
    }

    /// Removes and returns every queued task as `(future, fn, args, kwargs)` without blocking,
    /// oldest first.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let tasks = self.queue.drain();
        let list = PyList::empty(py);
        for task in tasks {
            list.append(task.into_tuple(py)?)?;
        }
        Ok(list)
    }

    /// Number of threads waiting in `get` or `run_worker` with no item set aside for them.
    #[getter]
    fn idle(&self) -> usize {
        self.queue.idle()
    }

    /// Blocks (without the GIL) until at least `n` threads are idle or `timeout` seconds pass;
    /// returns whether they are.
    fn wait_idle(&self, py: Python<'_>, n: usize, timeout: f64) -> PyResult<bool> {
        if timeout.is_nan() || timeout < 0.0 {
            return Err(PyValueError::new_err(
                "timeout must be a non-negative number",
            ));
        }
        let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::MAX);
        Ok(py.detach(|| self.queue.wait_idle(n, timeout)))
    }

    /// Number of worker threads that `put` has asked the caller to start.
    #[getter]
    fn threads(&self) -> usize {
        self.threads.load(Ordering::Acquire)
    }

    #[getter]
    fn max_threads(&self) -> usize {
        self.max_threads
    }

    #[getter]
    fn closed(&self) -> bool {
        self.queue.is_closed()
    }

    fn __len__(&self) -> usize {
        self.queue.len()
    }
}
