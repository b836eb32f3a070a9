//! `WorkerConnection`: the worker's end of the socket, as `ferropool._worker` uses it; a thin
//! wrapper over the engine's `connection::Connection`, which skips cancelled tasks and batches
//! answers (never holding one back for more than a millisecond).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use ferropool_engine::connection::{Connection, Sender};
use ferropool_engine::frame::{Frame, Kind};

use crate::buffer;
use crate::errors;

/// The worker's end of its socket to the parent; see `_core.pyi`.
#[pyclass(module = "ferropool._core")]
pub struct WorkerConnection {
    conn: Connection,
}

#[pymethods]
impl WorkerConnection {
    /// Takes ownership of the inherited socket descriptor `fd`.
    #[new]
    fn new(fd: RawFd) -> PyResult<Self> {
        // SAFETY: the parent started this process with `fd` open and meant for us alone; the
        // Python side passes it exactly once and never uses the number again.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(WorkerConnection {
            conn: Connection::new(sock).map_err(errors::io_error)?,
        })
    }

    /// Returns the next frame as `(kind, id, payload, buffers, flags)` (`buffers` is None, or
    /// the task's out-of-band buffers mapped copy-on-write), or None when the parent has gone.
    /// Blocks without holding the GIL; writes queued answers first. Tasks the parent has
    /// cancelled before they began are skipped.
    #[allow(clippy::type_complexity)]
    fn recv<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<Option<(u8, u64, Bound<'py, PyBytes>, Option<Bound<'py, PyList>>, u8)>> {
        let frame = match self.conn.try_recv().map_err(errors::io_error)? {
            Some(f) => Some(f),
            None => {
                let conn = &mut self.conn;
                py.detach(|| conn.recv()).map_err(errors::io_error)?
            }
        };
        let Some(f) = frame else { return Ok(None) };
        let buffers = if f.fds.is_empty() {
            None
        } else {
            Some(buffer::map_all(py, f.fds, false)?)
        };
        Ok(Some((
            f.kind as u8,
            f.id,
            PyBytes::new(py, &f.payload),
            buffers,
            f.flags,
        )))
    }

    /// Returns a sender that other threads use to answer tasks they run (see `WorkerSender`).
    fn sender(&self) -> WorkerSender {
        WorkerSender {
            sender: self.conn.sender(),
        }
    }

    /// Sends a frame to the parent. A task's answer (`Ok`/`Err`) is held back while more tasks
    /// are buffered, for at most a millisecond; other frames are written at once. `aux` is the
    /// task's run time in microseconds and `flags` the share of it spent pickling, in 255ths;
    /// `buffers`, the answer's out-of-band buffers (contiguous bytes), each written to a memory
    /// file that travels with it.
    #[pyo3(signature = (kind, id, payload, aux=0, buffers=None, flags=0))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        py: Python<'_>,
        kind: u8,
        id: u64,
        payload: &[u8],
        aux: u32,
        buffers: Option<&Bound<'_, PyAny>>,
        flags: u8,
    ) -> PyResult<()> {
        let kind = Kind::from_u8(kind).ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!("unknown frame kind {kind}"))
        })?;
        let fds = buffer::lend_all(py, buffers)?;
        let conn = &mut self.conn;
        let result = match kind {
            // Held (no system call) when more tasks are buffered: not worth releasing the GIL.
            Kind::Ok | Kind::Err if conn.has_frame() => {
                conn.answer(kind, id, flags, aux, payload, fds)
            }
            Kind::Ok | Kind::Err => py.detach(|| conn.answer(kind, id, flags, aux, payload, fds)),
            _ => py.detach(|| {
                conn.send(Frame {
                    kind,
                    id,
                    flags,
                    aux,
                    payload: payload.to_vec(),
                    fds: Vec::new(),
                })
            }),
        };
        result.map_err(errors::io_error)
    }

    /// Writes every queued frame now.
    fn flush(&mut self, py: Python<'_>) -> PyResult<()> {
        let conn = &mut self.conn;
        py.detach(|| conn.flush()).map_err(errors::io_error)
    }

    /// Returns a `LogSender` for this connection, usable from any thread.
    fn log_sender(&self) -> LogSender {
        LogSender {
            sender: self.conn.sender(),
        }
    }
}

/// Sends log records to the parent from any thread of the worker; see `_core.pyi`.
#[pyclass(frozen, module = "ferropool._core")]
pub struct LogSender {
    sender: Sender,
}

#[pymethods]
impl LogSender {
    /// Queues a `Log` frame with `payload`; it leaves within a millisecond. Blocks (without the
    /// GIL) only while 256 KiB are already queued and the socket is full. Raises `OSError` once
    /// the parent has gone.
    fn send(&self, py: Python<'_>, payload: &[u8]) -> PyResult<()> {
        let frame = Frame::new(Kind::Log, 0, payload.to_vec());
        py.detach(|| self.sender.send_soon(frame))
            .map_err(errors::io_error)
    }
}

/// Sends frames on the worker's connection from any thread; see `_core.pyi`.
#[pyclass(frozen, module = "ferropool._core")]
pub struct WorkerSender {
    sender: Sender,
}

#[pymethods]
impl WorkerSender {
    /// Sends a frame (with its out-of-band buffers); `hold` lets it wait up to 1 ms for company.
    #[pyo3(signature = (kind, id, payload, aux=0, buffers=None, hold=false))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        kind: u8,
        id: u64,
        payload: &[u8],
        aux: u32,
        buffers: Option<&Bound<'_, PyAny>>,
        hold: bool,
    ) -> PyResult<()> {
        let kind = Kind::from_u8(kind).ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!("unknown frame kind {kind}"))
        })?;
        let fds = buffer::lend_all(py, buffers)?;
        let sender = &self.sender;
        if hold && fds.is_empty() {
            // Held: usually no system call, so keep the GIL. Releasing it here would hand it to
            // another task thread right after a `Start`, before the announced task's function
            // runs; if that thread then ends the process, a task that had not begun is blamed.
            return sender
                .send(kind, id, aux, payload, fds, hold)
                .map_err(errors::io_error);
        }
        py.detach(|| sender.send(kind, id, aux, payload, fds, hold))
            .map_err(errors::io_error)
    }
}

/// Exposes the frame kinds the Python worker needs, so their numbers live in one place.
pub(crate) fn register_kinds(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for k in [
        Kind::Hello,
        Kind::Init,
        Kind::Ready,
        Kind::InitFailed,
        Kind::Task,
        Kind::Ok,
        Kind::Err,
        Kind::Cancel,
        Kind::Shutdown,
        Kind::Heartbeat,
        Kind::Log,
        Kind::Start,
    ] {
        m.add(format!("KIND_{}", format!("{k:?}").to_uppercase()), k as u8)?;
    }
    m.add("FLAG_ASYNC", ferropool_engine::frame::FLAG_ASYNC)?;
    m.add("FLAG_SKIP_ONLY", ferropool_engine::frame::FLAG_SKIP_ONLY)?;
    Ok(())
}
