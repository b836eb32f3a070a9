//! The one place where engine errors become Python exceptions.

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use ferropool_engine::SubmitError;

pyo3::create_exception!(
    _core,
    EngineBrokenError,
    PyRuntimeError,
    "Raised by the engine when a pool can no longer run tasks; args[0] is the reason as bytes."
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("EngineBrokenError", m.py().get_type::<EngineBrokenError>())?;
    Ok(())
}

/// Turns a refused submit into `RuntimeError` (closed) or `EngineBrokenError` (broken).
pub(crate) fn submit_error(py: Python<'_>, e: SubmitError) -> PyErr {
    match e {
        SubmitError::Closed => {
            PyRuntimeError::new_err("cannot schedule new futures after shutdown")
        }
        SubmitError::Full(_) => {
            PyRuntimeError::new_err("the pool has max_pending unfinished tasks")
        }
        SubmitError::Broken(why) => EngineBrokenError::new_err((PyBytes::new(py, &why).unbind(),)),
    }
}

/// Turns an I/O error into `OSError` with its errno, or `ValueError` for invalid arguments.
pub(crate) fn io_error(e: std::io::Error) -> PyErr {
    if e.kind() == std::io::ErrorKind::InvalidInput && e.raw_os_error().is_none() {
        return PyValueError::new_err(e.to_string());
    }
    PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string()))
}

/// Turns the failure to put a buffer of `len` bytes into a memory file (no memory, a file size
/// limit, no descriptor left: what a full disk is to shared memory) into `OSError` with its
/// errno and a message that says which buffer failed and why.
pub(crate) fn shared_memory_error(e: std::io::Error, len: usize) -> PyErr {
    let size = if len >= 1 << 20 {
        format!("{:.1} MiB", len as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.1} KiB", len as f64 / 1024.0)
    };
    os_error_saying(
        e,
        &format!("could not put a buffer of {size} into shared memory"),
    )
}

/// For `map_err` where a shared object (`ferropool.shared`) makes its memory: the error as
/// `OSError` with its errno and a message that names the object, for the same reasons as
/// [`shared_memory_error`].
pub(crate) fn creating(what: &'static str) -> impl Fn(std::io::Error) -> PyErr {
    move |e| os_error_saying(e, &format!("could not make the shared memory of a {what}"))
}

/// `OSError` with `e`'s errno and the message "`what`: `e`"; [`io_error`] when `e` has no errno.
fn os_error_saying(e: std::io::Error, what: &str) -> PyErr {
    match e.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, format!("{what}: {e}"))),
        None => io_error(e),
    }
}
