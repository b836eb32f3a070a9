//! `SharedQueue`: the engine's shared-memory queue carrying pickled items, with the methods of
//! `queue.Queue` (`put`/`get` with `block` and `timeout`, raising `queue.Full`/`queue.Empty`).
//!
//! Items are pickled (protocol 5) and unpickled here, so a `put` or `get` from Python is one call
//! into Rust. The first attempt holds the GIL and makes no system call; only a full or empty
//! queue (or a busy lock) makes the call detach and wait in slices that let Ctrl-C through.

use std::os::fd::AsRawFd;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyType};

use ferropool_engine::shared::queue::{Queue, QueueError};

use crate::errors::io_error;
use crate::shared::{adopt, block};

/// Default ring size: pages are touched only as the ring fills, so an idle queue costs little.
const DEFAULT_CAPACITY: usize = 4 << 20;

static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FULL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static EMPTY: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Turns a refused put or get into `queue.Full`/`queue.Empty`, `ValueError` or `RuntimeError`.
fn queue_error(py: Python<'_>, e: QueueError, put: bool, item_len: usize, capacity: u64) -> PyErr {
    let cached = if put { &FULL } else { &EMPTY };
    match e {
        QueueError::TimedOut => match cached.import(py, "queue", if put { "Full" } else { "Empty" }) {
            Ok(t) => PyErr::from_type(t.clone(), ()),
            Err(err) => err,
        },
        QueueError::TooLarge => PyValueError::new_err(format!(
            "the item pickles to {item_len} bytes, more than this Queue can ever hold ({} bytes; raise capacity_bytes)",
            capacity.saturating_sub(4)
        )),
        QueueError::Corrupt => PyRuntimeError::new_err("the shared queue's memory is corrupt (overwritten by another process?)"),
    }
}

/// Returns the timeout of `queue.Queue.put/get(block, timeout)`: zero when not blocking,
/// `None` (forever) for `timeout=None`; a negative timeout is a `ValueError`, as in `queue`.
fn queue_timeout(block: bool, timeout: Option<f64>) -> PyResult<Option<Duration>> {
    if !block {
        return Ok(Some(Duration::ZERO));
    }
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => Err(PyValueError::new_err("'timeout' must be a non-negative number")),
        Some(t) => Ok(Duration::try_from_secs_f64(t).ok()),
    }
}

/// A queue of pickled items in shared memory; see `ferropool.shared.Queue`.
#[pyclass(subclass, frozen, weakref, module = "ferropool._core")]
pub struct SharedQueue {
    queue: Queue,
}

impl SharedQueue {
    fn put_bytes(&self, py: Python<'_>, data: &[u8], timeout: Option<Duration>) -> PyResult<()> {
        let outcome = match self.queue.try_put(data) {
            Err(QueueError::TimedOut) if timeout == Some(Duration::ZERO) => self.queue.put(data, timeout),
            Err(QueueError::TimedOut) => match block(py, timeout, |slice| match self.queue.put(data, slice) {
                Err(QueueError::TimedOut) => None,
                other => Some(other),
            })? {
                Some(outcome) => outcome,
                None => Err(QueueError::TimedOut),
            },
            other => other,
        };
        outcome.map_err(|e| queue_error(py, e, true, data.len(), self.queue.capacity()))
    }
}

#[pymethods]
impl SharedQueue {
    #[new]
    #[pyo3(signature = (maxsize=0, *, capacity_bytes=DEFAULT_CAPACITY, _attach=None))]
    fn new(maxsize: i64, capacity_bytes: usize, _attach: Option<(i32, u64)>) -> PyResult<Self> {
        let queue = match _attach {
            Some(a) => adopt(a).and_then(|(fd, id)| Queue::open(fd, id).map_err(io_error))?,
            None => {
                let maxsize = u32::try_from(maxsize.max(0)).map_err(|_| PyValueError::new_err("maxsize too large"))?;
                if capacity_bytes < 64 {
                    return Err(PyValueError::new_err("capacity_bytes must be at least 64"));
                }
                Queue::create(capacity_bytes, maxsize).map_err(io_error)?
            }
        };
        Ok(SharedQueue { queue })
    }

    #[pyo3(signature = (item, block=true, timeout=None))]
    fn put(&self, py: Python<'_>, item: &Bound<'_, PyAny>, block: bool, timeout: Option<f64>) -> PyResult<()> {
        let timeout = queue_timeout(block, timeout)?;
        let data = DUMPS.import(py, "pickle", "dumps")?.call1((item, 5))?;
        let data = data.cast_into::<PyBytes>()?;
        self.put_bytes(py, data.as_bytes(), timeout)
    }

    fn put_nowait(&self, py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<()> {
        self.put(py, item, false, None)
    }

    #[pyo3(signature = (block=true, timeout=None))]
    fn get<'py>(&self, py: Python<'py>, block: bool, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let timeout = queue_timeout(block, timeout)?;
        let mut buf = Vec::new();
        let outcome = match self.queue.try_get(&mut buf) {
            Err(QueueError::TimedOut) if timeout == Some(Duration::ZERO) => self.queue.get(&mut buf, timeout),
            Err(QueueError::TimedOut) => {
                let got = crate::shared::block(py, timeout, |slice| {
                    let mut buf = Vec::new();
                    match self.queue.get(&mut buf, slice) {
                        Err(QueueError::TimedOut) => None,
                        other => Some(other.map(|()| buf)),
                    }
                })?;
                match got {
                    Some(Ok(got)) => {
                        buf = got;
                        Ok(())
                    }
                    Some(Err(e)) => Err(e),
                    None => Err(QueueError::TimedOut),
                }
            }
            other => other,
        };
        outcome.map_err(|e| queue_error(py, e, false, 0, self.queue.capacity()))?;
        LOADS.import(py, "pickle", "loads")?.call1((PyBytes::new(py, &buf),))
    }

    fn get_nowait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.get(py, false, None)
    }

    fn qsize(&self) -> usize {
        self.queue.len()
    }

    fn empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn full(&self) -> bool {
        self.queue.is_full()
    }

    #[getter]
    fn maxsize(&self) -> u32 {
        self.queue.maxsize()
    }

    #[getter]
    fn capacity_bytes(&self) -> u64 {
        self.queue.capacity()
    }

    #[getter(_fd)]
    fn fd(&self) -> i32 {
        self.queue.segment().fd().as_raw_fd()
    }

    #[getter(_id)]
    fn id(&self) -> u64 {
        self.queue.segment().id()
    }
}
