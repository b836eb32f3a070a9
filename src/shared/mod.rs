//! What every shared-memory class of `ferropool._core` needs: interruptible waiting, timeout
//! arguments, adopting a descriptor handed over by `ferropool.shared`, and `OwnerDiedWarning`.
//!
//! The classes themselves are in `sync` (locks, event, semaphore, barrier), `queue` and `value`
//! (numbers and the raw memory behind `shared.Array`).
//! Each holds its engine object, so its segment is unmapped and its descriptor closed when the
//! Python object is freed.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeWarning, PyValueError};
use pyo3::prelude::*;

use ferropool_engine::memfd;

mod queue;
mod sync;
mod value;

pyo3::create_exception!(
    _core,
    OwnerDiedWarning,
    PyRuntimeWarning,
    "Warned by an acquire that took over a shared lock from a process that died holding it: the \
     data the lock protects may be half-updated. The acquire succeeded; check and repair the data."
);

/// How long a blocked call sleeps without the GIL before it checks for signals (Ctrl-C).
pub(crate) const SIGNAL_SLICE: Duration = Duration::from_millis(50);

/// Adds the shared-memory classes and `OwnerDiedWarning` to `ferropool._core`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<sync::SharedLock>()?;
    m.add_class::<sync::SharedRLock>()?;
    m.add_class::<sync::SharedEvent>()?;
    m.add_class::<sync::SharedSemaphore>()?;
    m.add_class::<sync::SharedBarrier>()?;
    m.add_class::<queue::SharedQueue>()?;
    m.add_class::<value::SharedValue>()?;
    m.add_class::<value::SharedMemory>()?;
    m.add("OwnerDiedWarning", m.py().get_type::<OwnerDiedWarning>())
}

/// Calls `attempt(slice)` without the GIL, in slices of at most `SIGNAL_SLICE`, until it returns
/// `Some` or `timeout` (`None`: forever) passes; between slices runs Python's signal handlers,
/// so Ctrl-C interrupts the wait with `KeyboardInterrupt`. Returns `None` on timeout, after one
/// last attempt with a zero slice.
pub(crate) fn block<T: Send>(
    py: Python<'_>,
    timeout: Option<Duration>,
    attempt: impl Fn(Option<Duration>) -> Option<T> + Sync,
) -> PyResult<Option<T>> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let slice = match deadline {
            None => SIGNAL_SLICE,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(SIGNAL_SLICE),
        };
        if let Some(out) = py.detach(|| attempt(Some(slice))) {
            return Ok(Some(out));
        }
        py.check_signals()?;
        if slice.is_zero() {
            return Ok(None);
        }
    }
}

/// Converts seconds to a `Duration`; a value too large is the same as no limit (`None`).
pub(crate) fn seconds(t: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(t.max(0.0)).ok()
}

/// The timeout of `threading.Lock.acquire(blocking, timeout)`: zero when not blocking, `None`
/// for `-1`; other negatives and a timeout without blocking are `ValueError`s, as in threading
/// (whose message for a negative timeout changed in Python 3.13).
pub(crate) fn lock_timeout(
    py: Python<'_>,
    blocking: bool,
    timeout: f64,
) -> PyResult<Option<Duration>> {
    if !blocking {
        if timeout != -1.0 {
            return Err(PyValueError::new_err(
                "can't specify a timeout for a non-blocking call",
            ));
        }
        return Ok(Some(Duration::ZERO));
    }
    if timeout == -1.0 {
        return Ok(None);
    }
    if timeout.is_nan() || timeout < 0.0 {
        return Err(PyValueError::new_err(if py.version_info() >= (3, 13) {
            "timeout value must be a non-negative number"
        } else {
            "timeout value must be positive"
        }));
    }
    Ok(seconds(timeout))
}

/// A `timeout=None` argument as in `Event.wait` or `Semaphore.acquire`: `None` waits forever,
/// a negative number does not wait.
pub(crate) fn wait_timeout(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() => Err(PyValueError::new_err("timeout must be a number")),
        Some(t) => Ok(seconds(t)),
    }
}

/// Takes ownership of the descriptor in `_attach=(fd, id)`, which `ferropool.shared` opened for
/// this object alone.
pub(crate) fn adopt(attach: (i32, u64)) -> PyResult<(OwnedFd, u64)> {
    let (fd, id) = attach;
    // SAFETY: `_attach` transfers ownership of a descriptor that the caller opened for this
    // object alone and will not close or use again (documented in `_core.pyi`).
    let fd = unsafe { memfd::adopt_fd(fd) }
        .map_err(|e| PyValueError::new_err(format!("_attach: descriptor {fd}: {e}")))?;
    Ok((fd, id))
}

/// Warns `OwnerDiedWarning` for a lock taken over from dead process `pid`.
pub(crate) fn warn_owner_died(py: Python<'_>, what: &str, pid: u32) -> PyResult<()> {
    let msg = format!("{what} was taken over from process {pid}, which died holding it; the data it protects may be inconsistent");
    let msg = CString::new(msg).unwrap_or_default();
    PyErr::warn(py, &py.get_type::<OwnerDiedWarning>(), &msg, 2)
}
