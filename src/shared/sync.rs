//! `SharedLock`, `SharedRLock`, `SharedEvent`, `SharedSemaphore`, `SharedBarrier`: the engine's
//! shared-memory primitives with the methods of their `threading` counterparts. The public
//! classes are their subclasses in `ferropool.shared`, which add pickling.
//!
//! Every call first tries without releasing the GIL (an uncontended acquire is one CAS); only a
//! call that must wait detaches, in slices that let Ctrl-C through (`shared::block`).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use ferropool_engine::shared::barrier::{Arrival, ArriveError, Barrier, Broken};
use ferropool_engine::shared::event::Event;
use ferropool_engine::shared::lock::{Acquired, Lock};
use ferropool_engine::shared::rlock::RLock;
use ferropool_engine::shared::semaphore::Semaphore;
use ferropool_engine::shared::TimedOut;

use super::{adopt, block, lock_timeout, wait_timeout, warn_owner_died};
use crate::errors::{creating, io_error};

/// Records how a lock was acquired; warns (once per take-over) when from a dead owner. If the
/// warning is turned into an error, releases the lock again with `release` and raises it.
fn note_acquired(
    py: Python<'_>,
    flag: &AtomicBool,
    what: &str,
    acquired: Acquired,
    release: impl FnOnce(),
) -> PyResult<bool> {
    match acquired {
        Acquired::Clean => flag.store(false, Ordering::Relaxed),
        Acquired::OwnerDied(pid) => {
            flag.store(true, Ordering::Relaxed);
            if let Err(e) = warn_owner_died(py, what, pid) {
                release();
                return Err(e);
            }
        }
    }
    Ok(true)
}

/// A lock in shared memory; see `ferropool.shared.Lock`.
#[pyclass(subclass, frozen, weakref, module = "ferropool._core")]
pub struct SharedLock {
    lock: Lock,
    owner_died: AtomicBool,
}

#[pymethods]
impl SharedLock {
    #[new]
    #[pyo3(signature = (*, _attach=None))]
    fn new(_attach: Option<(i32, u64)>) -> PyResult<Self> {
        let lock = match _attach {
            Some(a) => adopt(a).and_then(|(fd, id)| Lock::open(fd, id).map_err(io_error))?,
            None => Lock::create().map_err(creating("Lock"))?,
        };
        Ok(SharedLock {
            lock,
            owner_died: AtomicBool::new(false),
        })
    }

    #[pyo3(signature = (blocking=true, timeout=-1.0))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: f64) -> PyResult<bool> {
        if self.lock.try_acquire_fast() {
            self.owner_died.store(false, Ordering::Relaxed);
            return Ok(true);
        }
        let timeout = lock_timeout(py, blocking, timeout)?;
        let acquired = if timeout == Some(Duration::ZERO) {
            self.lock.acquire(timeout).ok()
        } else {
            block(py, timeout, |slice| self.lock.acquire(slice).ok())?
        };
        match acquired {
            None => Ok(false),
            Some(a) => note_acquired(py, &self.owner_died, "Lock", a, || {
                let _ = self.lock.release();
            }),
        }
    }

    fn release(&self) -> PyResult<()> {
        self.lock
            .release()
            .map_err(|_| PyRuntimeError::new_err("release unlocked lock"))
    }

    fn locked(&self) -> bool {
        self.lock.is_locked()
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, -1.0)
    }

    // Three positional parameters, not `*args`: `with` passes exactly three, and a varargs
    // signature costs a tuple per call.
    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.release()
    }

    #[getter]
    fn owner_died(&self) -> bool {
        self.owner_died.load(Ordering::Relaxed)
    }

    #[getter(_fd)]
    fn fd(&self) -> i32 {
        self.lock.segment().fd().as_raw_fd()
    }

    #[getter(_id)]
    fn id(&self) -> u64 {
        self.lock.segment().id()
    }
}

/// A recursive lock in shared memory; see `ferropool.shared.RLock`.
#[pyclass(subclass, frozen, weakref, module = "ferropool._core")]
pub struct SharedRLock {
    lock: RLock,
    owner_died: AtomicBool,
}

#[pymethods]
impl SharedRLock {
    #[new]
    #[pyo3(signature = (*, _attach=None))]
    fn new(_attach: Option<(i32, u64)>) -> PyResult<Self> {
        let lock = match _attach {
            Some(a) => adopt(a).and_then(|(fd, id)| RLock::open(fd, id).map_err(io_error))?,
            None => RLock::create().map_err(creating("RLock"))?,
        };
        Ok(SharedRLock {
            lock,
            owner_died: AtomicBool::new(false),
        })
    }

    #[pyo3(signature = (blocking=true, timeout=-1.0))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: f64) -> PyResult<bool> {
        let timeout = lock_timeout(py, blocking, timeout)?;
        let acquired = match self.lock.acquire(Some(Duration::ZERO)) {
            Ok(a) => Some(a),
            Err(TimedOut) if timeout == Some(Duration::ZERO) => None,
            // The thread's identity is read inside the engine, so the detached closure runs on
            // this thread: `detach` never moves work to another thread.
            Err(TimedOut) => block(py, timeout, |slice| self.lock.acquire(slice).ok())?,
        };
        match acquired {
            None => Ok(false),
            Some(a) => note_acquired(py, &self.owner_died, "RLock", a, || {
                let _ = self.lock.release();
            }),
        }
    }

    fn release(&self) -> PyResult<()> {
        self.lock
            .release()
            .map_err(|_| PyRuntimeError::new_err("cannot release un-acquired lock"))
    }

    fn _is_owned(&self) -> bool {
        self.lock.is_owned()
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, -1.0)
    }

    // Three positional parameters, not `*args`: `with` passes exactly three, and a varargs
    // signature costs a tuple per call.
    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.release()
    }

    #[getter]
    fn owner_died(&self) -> bool {
        self.owner_died.load(Ordering::Relaxed)
    }

    #[getter(_fd)]
    fn fd(&self) -> i32 {
        self.lock.segment().fd().as_raw_fd()
    }

    #[getter(_id)]
    fn id(&self) -> u64 {
        self.lock.segment().id()
    }
}

/// An event flag in shared memory; see `ferropool.shared.Event`.
#[pyclass(subclass, frozen, weakref, module = "ferropool._core")]
pub struct SharedEvent {
    event: Event,
}

#[pymethods]
impl SharedEvent {
    #[new]
    #[pyo3(signature = (*, _attach=None))]
    fn new(_attach: Option<(i32, u64)>) -> PyResult<Self> {
        let event = match _attach {
            Some(a) => adopt(a).and_then(|(fd, id)| Event::open(fd, id).map_err(io_error))?,
            None => Event::create().map_err(creating("Event"))?,
        };
        Ok(SharedEvent { event })
    }

    fn is_set(&self) -> bool {
        self.event.is_set()
    }

    fn set(&self) {
        self.event.set()
    }

    fn clear(&self) {
        self.event.clear()
    }

    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        if self.event.is_set() {
            return Ok(true);
        }
        let timeout = wait_timeout(timeout)?;
        Ok(block(py, timeout, |slice| self.event.wait(slice).then_some(()))?.is_some())
    }

    #[getter(_fd)]
    fn fd(&self) -> i32 {
        self.event.segment().fd().as_raw_fd()
    }

    #[getter(_id)]
    fn id(&self) -> u64 {
        self.event.segment().id()
    }
}

/// A counting semaphore in shared memory; see `ferropool.shared.Semaphore`.
#[pyclass(subclass, frozen, weakref, module = "ferropool._core")]
pub struct SharedSemaphore {
    sem: Semaphore,
    bounded: bool,
}

#[pymethods]
impl SharedSemaphore {
    #[new]
    #[pyo3(signature = (value=1, *, bounded=false, _attach=None))]
    fn new(value: i64, bounded: bool, _attach: Option<(i32, u64)>) -> PyResult<Self> {
        let sem = match _attach {
            Some(a) => adopt(a).and_then(|(fd, id)| Semaphore::open(fd, id).map_err(io_error))?,
            None => {
                if value < 0 {
                    return Err(PyValueError::new_err(
                        "semaphore initial value must be >= 0",
                    ));
                }
                let value = u32::try_from(value)
                    .map_err(|_| PyValueError::new_err("semaphore initial value too large"))?;
                Semaphore::create(value, bounded).map_err(creating("Semaphore"))?
            }
        };
        Ok(SharedSemaphore { sem, bounded })
    }

    #[pyo3(signature = (blocking=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: Option<f64>) -> PyResult<bool> {
        if !blocking && timeout.is_some() {
            return Err(PyValueError::new_err(
                "can't specify timeout for non-blocking acquire",
            ));
        }
        if self.sem.try_acquire() {
            return Ok(true);
        }
        if !blocking {
            return Ok(false);
        }
        let timeout = wait_timeout(timeout)?;
        Ok(block(py, timeout, |slice| self.sem.acquire(slice).ok())?.is_some())
    }

    #[pyo3(signature = (n=1))]
    fn release(&self, n: i64) -> PyResult<()> {
        if n < 1 {
            return Err(PyValueError::new_err("n must be one or more"));
        }
        let n = u32::try_from(n).map_err(|_| PyValueError::new_err("n too large"))?;
        self.sem
            .release(n)
            .map_err(|_| PyValueError::new_err("Semaphore released too many times"))
    }

    fn get_value(&self) -> u32 {
        self.sem.value()
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, None)
    }

    // Three positional parameters, not `*args`: `with` passes exactly three, and a varargs
    // signature costs a tuple per call.
    fn __exit__(
        &self,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.release(1)
    }

    #[getter]
    fn _bounded(&self) -> bool {
        self.bounded
    }

    #[getter(_fd)]
    fn fd(&self) -> i32 {
        self.sem.segment().fd().as_raw_fd()
    }

    #[getter(_id)]
    fn id(&self) -> u64 {
        self.sem.segment().id()
    }
}

static BROKEN_BARRIER_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn broken_barrier(py: Python<'_>) -> PyErr {
    match BROKEN_BARRIER_ERROR.import(py, "threading", "BrokenBarrierError") {
        Ok(t) => PyErr::from_type(t.clone(), ()),
        Err(e) => e,
    }
}

/// A barrier in shared memory; see `ferropool.shared.Barrier`.
#[pyclass(subclass, frozen, weakref, module = "ferropool._core")]
pub struct SharedBarrier {
    barrier: Barrier,
    action: Option<Py<PyAny>>,
    timeout: Option<f64>,
}

impl SharedBarrier {
    /// The remaining steps of `wait` once arrived; an error leaves the barrier broken.
    fn finish(&self, py: Python<'_>, arrival: Arrival, deadline: Option<Instant>) -> PyResult<u32> {
        match arrival {
            Arrival::Last(index) => {
                if let Some(action) = &self.action {
                    action.call0(py)?;
                }
                self.barrier.pass();
                Ok(index)
            }
            Arrival::Wait { index, generation } => {
                let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let passed = block(py, timeout, |slice| {
                    match self.barrier.wait_pass(generation, slice) {
                        Ok(()) => Some(true),
                        Err(Ok(Broken)) => Some(false),
                        Err(Err(TimedOut)) => None,
                    }
                })?;
                match passed {
                    Some(true) => Ok(index),
                    _ => Err(broken_barrier(py)),
                }
            }
        }
    }
}

#[pymethods]
impl SharedBarrier {
    #[new]
    #[pyo3(signature = (parties, action=None, timeout=None, *, _attach=None))]
    fn new(
        parties: i64,
        action: Option<Py<PyAny>>,
        timeout: Option<f64>,
        _attach: Option<(i32, u64)>,
    ) -> PyResult<Self> {
        let barrier = match _attach {
            Some(a) => adopt(a).and_then(|(fd, id)| Barrier::open(fd, id).map_err(io_error))?,
            None => {
                let parties = u32::try_from(parties)
                    .ok()
                    .filter(|&p| p >= 1)
                    .ok_or_else(|| PyValueError::new_err("parties must be >= 1"))?;
                Barrier::create(parties).map_err(creating("Barrier"))?
            }
        };
        Ok(SharedBarrier {
            barrier,
            action,
            timeout,
        })
    }

    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u32> {
        let timeout = wait_timeout(timeout.or(self.timeout))?;
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let arrival = match self.barrier.arrive(Some(Duration::ZERO)) {
            Ok(a) => Ok(a),
            Err(ArriveError::Broken) => return Err(broken_barrier(py)),
            Err(ArriveError::TimedOut) => {
                match block(py, timeout, |slice| match self.barrier.arrive(slice) {
                    Ok(a) => Some(Ok(a)),
                    Err(ArriveError::Broken) => Some(Err(())),
                    Err(ArriveError::TimedOut) => None,
                }) {
                    Ok(Some(Ok(a))) => Ok(a),
                    Ok(Some(Err(()))) => return Err(broken_barrier(py)),
                    Ok(None) => Err(broken_barrier(py)),
                    Err(e) => Err(e),
                }
            }
        };
        // As in threading: a timeout, a failed action or an interrupt breaks the barrier for all.
        match arrival.and_then(|a| self.finish(py, a, deadline)) {
            Ok(index) => Ok(index),
            Err(e) => {
                self.barrier.abort();
                Err(e)
            }
        }
    }

    fn reset(&self) {
        self.barrier.reset()
    }

    fn abort(&self) {
        self.barrier.abort()
    }

    #[getter]
    fn parties(&self) -> u32 {
        self.barrier.parties()
    }

    #[getter]
    fn n_waiting(&self) -> u32 {
        self.barrier.n_waiting()
    }

    #[getter]
    fn broken(&self) -> bool {
        self.barrier.is_broken()
    }

    #[getter]
    fn _action(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.action.as_ref().map(|a| a.clone_ref(py))
    }

    #[getter]
    fn _timeout(&self) -> Option<f64> {
        self.timeout
    }

    #[getter(_fd)]
    fn fd(&self) -> i32 {
        self.barrier.segment().fd().as_raw_fd()
    }

    #[getter(_id)]
    fn id(&self) -> u64 {
        self.barrier.segment().id()
    }
}
