//! `ProcessPoolEngine`: the parent side of a process pool, as the Python `ProcessPool` uses it.

use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use ferropool_engine::{Outcome, Payload, PoolConfig, ProcessPool, SubmitError, WorkerStats};

use crate::buffer;
use crate::errors;
use crate::future::finish_task_future;
use crate::shared;

/// Outcome codes passed to `deliver`'s `settle` callback; `register_constants` exports them to
/// Python as `OUTCOME_<NAME>`, so both sides read the same numbers.
const RETURNED: u8 = 0;
const RAISED: u8 = 1;
const WORKER_DIED: u8 = 2;
const BROKEN: u8 = 3;
const CANCELLED: u8 = 4;
const TIMED_OUT: u8 = 5;

/// Tasks whose serialisation is timed: ids that are multiples of this. Here the unpickling of
/// their results; `ProcessPool.submit` times the pickling of their calls (exported as
/// `SERIALIZE_SAMPLE_EVERY`).
const SERIALIZE_SAMPLE_EVERY: u64 = 64;

/// Exports the outcome codes and the sampling rate above to `ferropool._core`.
pub(crate) fn register_constants(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for (name, code) in [
        ("OUTCOME_RETURNED", RETURNED),
        ("OUTCOME_RAISED", RAISED),
        ("OUTCOME_WORKER_DIED", WORKER_DIED),
        ("OUTCOME_BROKEN", BROKEN),
        ("OUTCOME_CANCELLED", CANCELLED),
        ("OUTCOME_TIMED_OUT", TIMED_OUT),
    ] {
        m.add(name, code)?;
    }
    m.add("SERIALIZE_SAMPLE_EVERY", SERIALIZE_SAMPLE_EVERY)
}

/// How long a submit blocked by `max_pending` waits between checks for signals.
const SUBMIT_WAIT_SLICE: Duration = Duration::from_millis(50);

/// Runs opaque task payloads on worker processes; see `_core.pyi`.
#[pyclass(frozen, module = "ferropool._core")]
pub struct ProcessPoolEngine {
    pool: ProcessPool,
    /// Nanoseconds spent unpickling the results of sampled tasks (ids that are multiples of
    /// `SERIALIZE_SAMPLE_EVERY`).
    sampled_loads_ns: AtomicU64,
}

#[pymethods]
impl ProcessPoolEngine {
    #[new]
    #[pyo3(signature = (workers, command, init, *, max_tasks_per_child=None, max_memory_per_child=None, max_pending=None, threads_per_worker=1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        workers: usize,
        command: Vec<OsString>,
        init: Vec<u8>,
        max_tasks_per_child: Option<u64>,
        max_memory_per_child: Option<u64>,
        max_pending: Option<usize>,
        threads_per_worker: usize,
    ) -> PyResult<Self> {
        let config = PoolConfig {
            max_tasks_per_child,
            max_memory_per_child,
            max_pending,
            threads_per_worker,
            ..PoolConfig::new(workers, command, init)
        };
        Ok(ProcessPoolEngine {
            pool: ProcessPool::start(config).map_err(errors::io_error)?,
            sampled_loads_ns: AtomicU64::new(0),
        })
    }

    #[getter]
    fn workers(&self) -> usize {
        self.pool.workers()
    }

    #[pyo3(signature = (id, payload, timeout=None, buffers=None, is_async=false))]
    fn submit(
        &self,
        py: Python<'_>,
        id: u64,
        payload: &[u8],
        timeout: Option<f64>,
        buffers: Option<&Bound<'_, PyAny>>,
        is_async: bool,
    ) -> PyResult<()> {
        let timeout = timeout
            .map(|t| {
                Duration::try_from_secs_f64(t).map_err(|_| {
                    pyo3::exceptions::PyValueError::new_err(format!(
                        "task timeout must be a positive number of seconds, not {t}"
                    ))
                })
            })
            .transpose()?;
        let buffers = match buffers {
            Some(b) => buffer::write_all(py, b, true)?,
            None => Vec::new(),
        };
        let payload = Payload {
            bytes: payload.to_vec(),
            buffers,
            is_async,
        };
        let mut payload = match self
            .pool
            .submit_within(id, payload, timeout, Duration::ZERO)
        {
            Ok(()) => return Ok(()),
            Err(SubmitError::Full(p)) => p,
            Err(e) => return Err(errors::submit_error(py, e)),
        };
        // max_pending tasks are unfinished: wait for room without the GIL, in slices, so that
        // Ctrl-C (a signal handled by Python) still interrupts a blocked submit.
        loop {
            match py.detach(|| {
                self.pool
                    .submit_within(id, payload, timeout, SUBMIT_WAIT_SLICE)
            }) {
                Ok(()) => return Ok(()),
                Err(SubmitError::Full(p)) => {
                    payload = p;
                    py.check_signals()?;
                }
                Err(e) => return Err(errors::submit_error(py, e)),
            }
        }
    }

    fn cancel(&self, id: u64) -> bool {
        self.pool.cancel(id)
    }

    fn is_queued(&self, id: u64) -> bool {
        self.pool.is_queued(id)
    }

    fn cancel_all(&self) -> Vec<u64> {
        self.pool.cancel_all()
    }

    fn cancel_waiting(&self) -> Vec<u64> {
        self.pool.cancel_waiting()
    }

    #[pyo3(signature = (*, abort=false))]
    fn close(&self, abort: bool) {
        self.pool.close(abort)
    }

    /// Waits up to `timeout` seconds (None: no limit) for the pool to end; returns whether it
    /// did. Waits without the GIL in slices ([`shared::block`]), so that Ctrl-C interrupts it
    /// with `KeyboardInterrupt` rather than waiting for the running tasks.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let ended = shared::block(py, timeout.and_then(shared::seconds), |slice| {
            self.pool.join(slice).then_some(())
        })?;
        Ok(ended.is_some())
    }

    /// Returns one dict per worker slot (see `_core.pyi`), asking the dispatcher for a fresh
    /// snapshot and waiting up to `timeout` seconds (without the GIL) for it.
    #[pyo3(signature = (timeout=1.0))]
    fn stats<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyList>> {
        let timeout = Duration::try_from_secs_f64(timeout).map_err(|_| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "timeout must be a non-negative number of seconds, not {timeout}"
            ))
        })?;
        let workers = py.detach(|| self.pool.stats(timeout));
        let list = PyList::empty(py);
        for (slot, w) in workers.iter().enumerate() {
            list.append(worker_stats_dict(py, slot, w)?)?;
        }
        Ok(list)
    }

    /// Nanoseconds spent unpickling results of the sampled tasks (ids divisible by
    /// `SERIALIZE_SAMPLE_EVERY`).
    #[getter]
    fn sampled_loads_ns(&self) -> u64 {
        self.sampled_loads_ns.load(Ordering::Relaxed)
    }

    /// Waits for the next batch of outcomes (without the GIL) and delivers it: each task's
    /// future is popped from `futures` by id; a returned value is unpickled with `loads` and set
    /// on the future; every other outcome, or a `loads` failure, goes to
    /// `settle(future, code, detail, error)`. Log records that workers sent come first, to
    /// `logs(records, dropped)` as `[(worker, pid, payload), ...]` and the number dropped
    /// because too many were waiting. Returns False once the pool has ended.
    #[pyo3(signature = (futures, loads, settle, logs=None))]
    fn deliver(
        &self,
        py: Python<'_>,
        futures: &Bound<'_, PyDict>,
        loads: &Bound<'_, PyAny>,
        settle: &Bound<'_, PyAny>,
        logs: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let Some(news) = py.detach(|| self.pool.wait_news(None)) else {
            return Ok(false);
        };
        if let Some(logs) = logs.filter(|_| !news.logs.is_empty() || news.dropped_logs > 0) {
            let records = PyList::empty(py);
            for r in news.logs {
                records.append((r.worker, r.pid, PyBytes::new(py, &r.payload)))?;
            }
            // A failing handler must not stop results from being delivered.
            if let Err(e) = logs.call1((records, news.dropped_logs)) {
                e.write_unraisable(py, Some(logs));
            }
        }
        for d in news.outcomes {
            // Taking the future out of `futures` is what entitles us to finish it; a future
            // that `cancel()` took first is cancelled, and its outcome is dropped here.
            let Some(future) = futures.get_item(d.id)? else {
                continue;
            };
            if futures.del_item(d.id).is_err() {
                continue;
            }
            let Outcome::Returned(payload) = d.outcome else {
                let detail = outcome_detail(py, d.outcome)?;
                settle.call1((future, detail.0, detail.1, py.None()))?;
                continue;
            };
            let loaded = if d.fds.is_empty() && d.id % SERIALIZE_SAMPLE_EVERY == 0 {
                let started = Instant::now();
                let loaded = loads.call1((PyBytes::new(py, &payload),));
                self.sampled_loads_ns.fetch_add(
                    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                loaded
            } else if d.fds.is_empty() {
                loads.call1((PyBytes::new(py, &payload),))
            } else {
                buffer::map_all(py, d.fds, true).and_then(|buffers| {
                    let kwargs = PyDict::new(py);
                    kwargs.set_item(intern!(py, "buffers"), buffers)?;
                    loads.call((PyBytes::new(py, &payload),), Some(&kwargs))
                })
            };
            let value = match loaded {
                Ok(v) => v,
                Err(e) => {
                    settle.call1((
                        future,
                        RETURNED,
                        PyBytes::new(py, &payload),
                        e.into_value(py),
                    ))?;
                    continue;
                }
            };
            if finish_task_future(&future, &value)? == Some(true) {
                continue;
            }
            // Someone waits on it or it has callbacks: the real method notifies them. A future
            // cancelled meanwhile refuses with InvalidStateError, which is not an error here.
            if let Err(e) = future.call_method1(intern!(py, "set_result"), (value,)) {
                settle.call1((future, RETURNED, py.None(), e.into_value(py)))?;
            }
        }
        Ok(true)
    }
}

/// Returns one worker slot's statistics as the dict `_stats.py` reads.
fn worker_stats_dict<'py>(
    py: Python<'py>,
    slot: usize,
    w: &WorkerStats,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("worker", slot)?;
    d.set_item("pid", w.pid)?;
    d.set_item("tasks", w.tasks)?;
    d.set_item("failed", w.failed)?;
    d.set_item("alive_us", w.alive_us)?;
    d.set_item("busy_us", w.busy_us)?;
    d.set_item("max_task_us", w.max_task_us)?;
    d.set_item("serialize_us", w.serialize_us)?;
    d.set_item("transport_us", w.transport_us)?;
    d.set_item("restarts", w.restarts)?;
    let recent = PyList::empty(py);
    for r in &w.recent_restarts {
        let rd = PyDict::new(py);
        rd.set_item("cause", r.cause.name())?;
        rd.set_item("pid", r.exit.pid)?;
        rd.set_item("exitcode", r.exit.code)?;
        rd.set_item("signal", r.exit.signal)?;
        recent.append(rd)?;
    }
    d.set_item("recent_restarts", recent)?;
    Ok(d)
}

/// Returns an outcome as `(code, detail)`: the payload as bytes,
/// `(pid, exit_code, signal, stderr_tail, reason)` for a dead worker (`reason`: why the parent
/// stopped it, or None), `(pid, seconds)` for a timeout.
fn outcome_detail(py: Python<'_>, outcome: Outcome) -> PyResult<(u8, Bound<'_, PyAny>)> {
    Ok(match outcome {
        Outcome::Returned(p) => (RETURNED, PyBytes::new(py, &p).into_any()),
        Outcome::Raised(p) => (RAISED, PyBytes::new(py, &p).into_any()),
        Outcome::WorkerDied {
            exit: e,
            stderr_tail,
            reason,
        } => (
            WORKER_DIED,
            PyTuple::new(
                py,
                [
                    e.pid.into_pyobject(py)?.into_any(),
                    e.code.into_pyobject(py)?.into_any(),
                    e.signal.into_pyobject(py)?.into_any(),
                    PyBytes::new(py, &stderr_tail).into_any(),
                    reason.into_pyobject(py)?.into_any(),
                ],
            )?
            .into_any(),
        ),
        Outcome::Broken(p) => (BROKEN, PyBytes::new(py, &p).into_any()),
        Outcome::Cancelled => (CANCELLED, py.None().into_bound(py)),
        Outcome::TimedOut { pid, after } => (
            TIMED_OUT,
            (pid, after.as_secs_f64()).into_pyobject(py)?.into_any(),
        ),
    })
}
