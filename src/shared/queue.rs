//! `SharedQueue`: the engine's shared-memory queue carrying pickled items, with the methods of
//! `queue.Queue` (`put`/`get` with `block` and `timeout`, raising `queue.Full`/`queue.Empty`).
//!
//! Items are pickled (protocol 5) and unpickled here, so a `put` or `get` from Python is one call
//! into Rust. The first attempt holds the GIL and makes no system call; only a full or empty
//! queue (or a busy lock) makes the call detach and wait in slices that let Ctrl-C through.
//!
//! Large buffers of an item (numpy arrays, bytearrays, anything pickling `PickleBuffer`s of at
//! least `SPILL_THRESHOLD` bytes) go out of band into the queue's spill file
//! (`ferropool_engine::shared::spill`); the ring then holds `SPILLED`, the buffers' ranges and the
//! pickle, and `get` rebuilds the item on `SharedBuffer`s mapping those ranges (no copy).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyType};

use ferropool_engine::memfd::adopt_fd;
use ferropool_engine::shared::queue::{Queue, QueueError};
use ferropool_engine::shared::spill::{Spill, Written};

use super::{adopt, block};
use crate::buffer::SharedBuffer;
use crate::errors::{creating, io_error, shared_memory_error};

/// Buffers of an item this large or larger travel out of the ring (the pools' default
/// `zero_copy_threshold`).
const SPILL_THRESHOLD: usize = 64 << 10;
/// First byte of a ring entry whose item has spilled buffers (a pickle starts with 0x80).
const SPILLED: u8 = b'S';

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
        Some(t) if t.is_nan() || t < 0.0 => Err(PyValueError::new_err(
            "'timeout' must be a non-negative number",
        )),
        Some(t) => Ok(Duration::try_from_secs_f64(t).ok()),
    }
}

/// A queue of pickled items in shared memory; see `ferropool.shared.Queue`.
#[pyclass(subclass, frozen, weakref, module = "ferropool._core")]
pub struct SharedQueue {
    queue: Queue,
    spill: Arc<Spill>,
}

/// `pickle.dumps`' `buffer_callback`: takes the buffers of at least `SPILL_THRESHOLD` bytes out of
/// band (as contiguous memoryviews, `PickleBuffer.raw()`), leaves the others in the pickle.
#[pyclass(module = "ferropool._core")]
struct OutOfBand {
    taken: Mutex<Vec<Py<PyAny>>>,
}

#[pymethods]
impl OutOfBand {
    fn __call__(&self, buffer: &Bound<'_, PyAny>) -> bool {
        let Ok(raw) = buffer.call_method0("raw") else {
            return true;
        }; // not contiguous: in band
        match raw.getattr("nbytes").and_then(|n| n.extract::<usize>()) {
            Ok(n) if n >= SPILL_THRESHOLD => {
                self.taken
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(raw.unbind());
                false
            }
            _ => true,
        }
    }
}

impl SharedQueue {
    /// Writes each buffer (a contiguous memoryview) into the spill file; on failure frees what
    /// it wrote.
    fn spill_all(&self, py: Python<'_>, buffers: &[Py<PyAny>]) -> PyResult<Ranges> {
        let mut ranges = Ranges::with_capacity(buffers.len());
        for raw in buffers {
            let written = pyo3::buffer::PyBuffer::<u8>::get(raw.bind(py)).and_then(|view| {
                // SAFETY: `raw()` gave a contiguous unsigned-byte view, alive (and its exporter
                // unresizable) while `view` is; another thread writing it meanwhile would only
                // tear the copy, as with pickling.
                let bytes = unsafe {
                    std::slice::from_raw_parts(view.buf_ptr() as *const u8, view.len_bytes())
                };
                py.detach(|| self.spill.write(bytes))
                    .map_err(|e| shared_memory_error(e, bytes.len()))
            });
            match written {
                Ok(range) => ranges.push(range),
                Err(e) => {
                    self.free_all(&ranges);
                    return Err(e);
                }
            }
        }
        Ok(ranges)
    }

    fn free_all(&self, ranges: &Ranges) {
        for w in ranges {
            self.spill.free(w);
        }
    }

    fn put_bytes(&self, py: Python<'_>, data: &[u8], timeout: Option<Duration>) -> PyResult<()> {
        let outcome = match self.queue.try_put(data) {
            Err(QueueError::TimedOut) if timeout == Some(Duration::ZERO) => {
                self.queue.put(data, timeout)
            }
            Err(QueueError::TimedOut) => {
                match block(py, timeout, |slice| match self.queue.put(data, slice) {
                    Err(QueueError::TimedOut) => None,
                    other => Some(other),
                })? {
                    Some(outcome) => outcome,
                    None => Err(QueueError::TimedOut),
                }
            }
            other => other,
        };
        outcome.map_err(|e| queue_error(py, e, true, data.len(), self.queue.capacity()))
    }
}

#[pymethods]
impl SharedQueue {
    #[new]
    #[pyo3(signature = (maxsize=0, *, capacity_bytes=DEFAULT_CAPACITY, _attach=None, _spill=None))]
    fn new(
        maxsize: i64,
        capacity_bytes: usize,
        _attach: Option<(i32, u64)>,
        _spill: Option<i32>,
    ) -> PyResult<Self> {
        let spill = match _spill {
            Some(fd) => {
                // SAFETY: `_spill` transfers ownership of a descriptor opened for this object
                // alone (documented in `_core.pyi`), as `_attach` does.
                let fd = unsafe { adopt_fd(fd) }
                    .map_err(|e| PyValueError::new_err(format!("_spill: descriptor {fd}: {e}")))?;
                Spill::open(fd).map_err(io_error)?
            }
            None if _attach.is_some() => {
                return Err(PyValueError::new_err(
                    "_attach needs _spill: a queue travels with its spill file",
                ))
            }
            None => Spill::create().map_err(creating("Queue"))?,
        };
        let queue = match _attach {
            Some(a) => adopt(a).and_then(|(fd, id)| Queue::open(fd, id).map_err(io_error))?,
            None => {
                let maxsize = u32::try_from(maxsize.max(0))
                    .map_err(|_| PyValueError::new_err("maxsize too large"))?;
                if capacity_bytes < 64 {
                    return Err(PyValueError::new_err("capacity_bytes must be at least 64"));
                }
                Queue::create(capacity_bytes, maxsize).map_err(creating("Queue"))?
            }
        };
        Ok(SharedQueue {
            queue,
            spill: Arc::new(spill),
        })
    }

    #[pyo3(signature = (item, block=true, timeout=None))]
    fn put(
        &self,
        py: Python<'_>,
        item: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let timeout = queue_timeout(block, timeout)?;
        let dumps = DUMPS.import(py, "pickle", "dumps")?;
        // Small items (the common case) are pickled once, without a buffer callback (which
        // costs ~150 ns per call); a large pickle is made again with its buffers out of band,
        // as is any item that is itself a buffer (an array).
        // SAFETY: PyObject_CheckBuffer only reads the object's type slots.
        let is_buffer = unsafe { pyo3::ffi::PyObject_CheckBuffer(item.as_ptr()) } != 0;
        if !is_buffer || item.is_instance_of::<PyBytes>() {
            let data = dumps.call1((item, 5))?.cast_into::<PyBytes>()?;
            if data.as_bytes().len() < SPILL_THRESHOLD {
                return self.put_bytes(py, data.as_bytes(), timeout);
            }
        }
        let taker = Bound::new(
            py,
            OutOfBand {
                taken: Mutex::new(Vec::new()),
            },
        )?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("buffer_callback", &taker)?;
        let data = dumps
            .call((item, 5), Some(&kwargs))?
            .cast_into::<PyBytes>()?;
        let buffers = std::mem::take(
            &mut *taker
                .borrow()
                .taken
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if buffers.is_empty() {
            return self.put_bytes(py, data.as_bytes(), timeout);
        }
        let ranges = self.spill_all(py, &buffers)?;
        let outcome = self.put_bytes(py, &spilled_entry(&ranges, data.as_bytes()), timeout);
        if outcome.is_err() {
            self.free_all(&ranges); // the item was not queued: nobody will take them
        }
        outcome
    }

    fn put_nowait(&self, py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<()> {
        self.put(py, item, false, None)
    }

    #[pyo3(signature = (block=true, timeout=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = queue_timeout(block, timeout)?;
        let mut buf = Vec::new();
        let outcome = match self.queue.try_get(&mut buf) {
            Err(QueueError::TimedOut) if timeout == Some(Duration::ZERO) => {
                self.queue.get(&mut buf, timeout)
            }
            Err(QueueError::TimedOut) => {
                let got = super::block(py, timeout, |slice| {
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
        let loads = LOADS.import(py, "pickle", "loads")?;
        if buf.first() != Some(&SPILLED) {
            return loads.call1((PyBytes::new(py, &buf),));
        }
        let (ranges, pickle) = parse_spilled(&buf).ok_or_else(|| {
            PyRuntimeError::new_err(
                "the shared queue's memory is corrupt (a spilled item's header is cut)",
            )
        })?;
        let buffers = ranges
            .into_iter()
            .map(|w| {
                Ok(SharedBuffer::from_spill(
                    self.spill.take(w).map_err(corrupt_range)?,
                ))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("buffers", PyList::new(py, buffers)?)?;
        loads.call((PyBytes::new(py, pickle),), Some(&kwargs))
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

    #[getter(_spill_fd)]
    fn spill_fd(&self) -> i32 {
        self.spill.fd().as_raw_fd()
    }
}

/// An item's buffers in the spill file.
type Ranges = Vec<Written>;

/// Bytes of one buffer in a `SPILLED` entry: offset, length and tag.
const RANGE: usize = 24;

/// A `SPILLED` ring entry: the marker, the number of buffers, their offset, length and tag as
/// three little-endian u64 each, then the pickle. `parse_spilled` reads it back.
fn spilled_entry(ranges: &Ranges, pickle: &[u8]) -> Vec<u8> {
    let mut entry = Vec::with_capacity(5 + RANGE * ranges.len() + pickle.len());
    entry.push(SPILLED);
    entry.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for w in ranges {
        entry.extend_from_slice(&w.offset.to_le_bytes());
        entry.extend_from_slice(&(w.len as u64).to_le_bytes());
        entry.extend_from_slice(&w.tag.to_le_bytes());
    }
    entry.extend_from_slice(pickle);
    entry
}

/// Splits a `SPILLED` ring entry into its buffers and the pickle (`None` if it is cut short).
fn parse_spilled(entry: &[u8]) -> Option<(Ranges, &[u8])> {
    let n = u32::from_le_bytes(entry.get(1..5)?.try_into().ok()?) as usize;
    let end = n.checked_mul(RANGE)?.checked_add(5)?;
    let table = entry.get(5..end)?;
    let word = |c: &[u8], i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            c.get(8 * i..8 * i + 8)?.try_into().ok()?,
        ))
    };
    let ranges = table
        .chunks_exact(RANGE)
        .map(|c| {
            Some(Written {
                offset: word(c, 0)?,
                len: usize::try_from(word(c, 1)?).ok()?,
                tag: word(c, 2)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((ranges, &entry[end..]))
}

/// The error of a spilled item whose range the spill file refuses.
fn corrupt_range(e: std::io::Error) -> PyErr {
    if e.kind() == std::io::ErrorKind::InvalidData {
        return PyRuntimeError::new_err(format!("the shared queue's memory is corrupt: {e}"));
    }
    io_error(e)
}
