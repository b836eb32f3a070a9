//! `WorkerConnection`: the worker's end of the socket, as `ferropool._worker` uses it.
//!
//! Results are batched: `send` only queues a frame while more tasks are already buffered and
//! the oldest unsent result is younger than `MAX_RESULT_DELAY`, so a burst of tiny tasks costs
//! one write while a slow task's result leaves at once.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use ferropool_engine::channel::Connection;
use ferropool_engine::frame::Kind;

use crate::errors;

const MAX_RESULT_DELAY: Duration = Duration::from_millis(1);
const MAX_BUFFERED: usize = 256 * 1024;

/// The worker's end of its socket to the parent; see `_core.pyi`.
#[pyclass(module = "ferropool._core")]
pub struct WorkerConnection {
    conn: Connection,
    oldest_unsent: Option<Instant>,
}

#[pymethods]
impl WorkerConnection {
    /// Takes ownership of the inherited socket descriptor `fd`.
    #[new]
    fn new(fd: RawFd) -> PyResult<Self> {
        // SAFETY: the parent started this process with `fd` open and meant for us alone; the
        // Python side passes it exactly once and never uses the number again.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(WorkerConnection { conn: Connection::new(sock).map_err(errors::io_error)?, oldest_unsent: None })
    }

    /// Returns the next frame as `(kind, id, payload)`, or None when the parent has gone.
    /// Blocks without holding the GIL; flushes queued results first.
    fn recv<'py>(&mut self, py: Python<'py>) -> PyResult<Option<(u8, u64, Bound<'py, PyBytes>)>> {
        let frame = match self.conn.reader.next_frame().map_err(errors::io_error)? {
            Some(f) => Some(f),
            None => {
                self.oldest_unsent = None;
                let conn = &mut self.conn;
                py.detach(|| conn.recv()).map_err(errors::io_error)?
            }
        };
        Ok(frame.map(|f| (f.kind as u8, f.id, PyBytes::new(py, &f.payload))))
    }

    /// Queues a frame to the parent; writes it now unless more tasks are waiting and the
    /// batch is still young and small. `aux` is the task's run time in microseconds.
    #[pyo3(signature = (kind, id, payload, aux=0))]
    fn send(&mut self, py: Python<'_>, kind: u8, id: u64, payload: &[u8], aux: u32) -> PyResult<()> {
        let kind = Kind::from_u8(kind).ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("unknown frame kind {kind}")))?;
        self.conn.writer.push_parts(kind, id, aux, payload);
        let now = Instant::now();
        let oldest = *self.oldest_unsent.get_or_insert(now);
        if !self.conn.reader.has_frame() || now - oldest >= MAX_RESULT_DELAY || self.conn.writer.pending() >= MAX_BUFFERED {
            self.oldest_unsent = None;
            let conn = &mut self.conn;
            py.detach(|| conn.flush()).map_err(errors::io_error)?;
        }
        Ok(())
    }

    /// Writes every queued frame now.
    fn flush(&mut self, py: Python<'_>) -> PyResult<()> {
        self.oldest_unsent = None;
        let conn = &mut self.conn;
        py.detach(|| conn.flush()).map_err(errors::io_error)
    }
}

/// Exposes the frame kinds the Python worker needs, so their numbers live in one place.
pub(crate) fn register_kinds(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for k in [Kind::Hello, Kind::Init, Kind::Ready, Kind::InitFailed, Kind::Task, Kind::Ok, Kind::Err, Kind::Cancel, Kind::Shutdown, Kind::Heartbeat] {
        m.add(format!("KIND_{}", format!("{k:?}").to_uppercase()), k as u8)?;
    }
    Ok(())
}
