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
