//! Out-of-band buffers as Python sees them: `SharedBuffer`, a received buffer mapped from its
//! memory file, and the conversions between Python buffers and the engine's memory files.
//!
//! A `SharedBuffer` exposes its mapping through the buffer protocol, writable, so that
//! `pickle.loads(data, buffers=...)` rebuilds numpy arrays (and memoryviews) directly on it; every
//! view keeps it alive, and the mapping goes when the last one does.

use std::ffi::c_int;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyList;

use ferropool_engine::buffer::{self as engine_buffer, BufferCache, Mapping, MemFile};
use ferropool_engine::shared::spill::SpillRange;

use crate::errors;

/// Memory files of arguments still held by tasks (shared by every pool of this process).
static CACHE: BufferCache = BufferCache::new();

/// A buffer received from another process, mapped from its memory file; see `_core.pyi`.
#[pyclass(frozen, module = "ferropool._core")]
pub struct SharedBuffer {
    map: Received,
}

/// Where a received buffer's bytes are mapped from.
enum Received {
    /// A task's argument or result: its own memory file.
    File(Mapping),
    /// A queue item's: a range of the queue's spill file.
    Spill(SpillRange),
}

impl Received {
    fn as_ptr(&self) -> *mut u8 {
        match self {
            Received::File(m) => m.as_ptr(),
            Received::Spill(r) => r.as_ptr(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Received::File(m) => m.len(),
            Received::Spill(r) => r.len(),
        }
    }
}

impl SharedBuffer {
    pub(crate) fn from_spill(range: SpillRange) -> SharedBuffer {
        SharedBuffer {
            map: Received::Spill(range),
        }
    }
}

#[pymethods]
impl SharedBuffer {
    fn __len__(&self) -> usize {
        self.map.len()
    }

    /// # Safety
    /// Called by CPython with a valid `view` to fill, as the buffer protocol requires.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let map = &slf.get().map;
        // SAFETY: `view` is valid (our caller's contract); the memory is `len` bytes mapped
        // read-write for as long as the exporter lives, and FillInfo stores a new reference to
        // it in `view.obj`, so the mapping outlives every view.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                map.as_ptr().cast(),
                map.len() as ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::take(slf.py())
                .unwrap_or_else(|| PyBufferError::new_err("cannot export the shared buffer")));
        }
        Ok(())
    }

    /// # Safety
    /// Called by CPython when a view is released; nothing to undo (FillInfo holds the reference).
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    fn __repr__(&self) -> String {
        format!("<SharedBuffer {} bytes>", self.map.len())
    }
}

/// Maps each received descriptor into a `SharedBuffer` (`shared`: writes reach the file).
pub(crate) fn map_all<'py>(
    py: Python<'py>,
    fds: Vec<OwnedFd>,
    shared: bool,
) -> PyResult<Bound<'py, PyList>> {
    let buffers = fds
        .iter()
        .map(|fd| {
            Ok(SharedBuffer {
                map: Received::File(Mapping::new(fd.as_fd(), shared).map_err(errors::io_error)?),
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, buffers)
}

/// Writes each Python buffer (contiguous bytes, e.g. `PickleBuffer.raw()`) into a memory file.
/// `cached` reuses the file of an identical buffer still held by a task (arguments only).
pub(crate) fn write_all(
    py: Python<'_>,
    buffers: &Bound<'_, PyAny>,
    cached: bool,
) -> PyResult<Vec<Arc<MemFile>>> {
    let mut files = Vec::new();
    for obj in buffers.try_iter()? {
        let buf: PyBuffer<u8> = PyBuffer::get(&obj?)?;
        if !buf.is_c_contiguous() {
            return Err(PyBufferError::new_err(
                "out-of-band buffers must be C-contiguous",
            ));
        }
        // SAFETY: the buffer is C-contiguous bytes and `buf` keeps its exporter alive (and
        // unresizable) until dropped below; concurrent writes by another thread would only
        // tear the copy, as they would with any pickling.
        let data =
            unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
        let file = py.detach(|| {
            if cached {
                CACHE.get_or_write(data)
            } else {
                MemFile::write(data).map(Arc::new)
            }
        });
        files.push(file.map_err(|e| errors::shared_memory_error(e, data.len()))?);
        drop(buf);
    }
    Ok(files)
}

/// Writes a result's (or any answer's) buffers into memory files and lends one descriptor of
/// each to the frame that carries them (none without buffers).
pub(crate) fn lend_all(
    py: Python<'_>,
    buffers: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<OwnedFd>> {
    let Some(buffers) = buffers else {
        return Ok(Vec::new());
    };
    write_all(py, buffers, false)?
        .iter()
        .map(|f| f.lend())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(errors::io_error)
}

/// Closes this process's spare memory files (kept for reuse; see `_core.pyi`).
#[pyfunction]
pub(crate) fn drop_spare_buffers(py: Python<'_>) -> usize {
    py.detach(engine_buffer::drop_spares)
}

/// Closes this process's spare memory files and kept mappings that have been idle longer than
/// their age bound (see `_core.pyi`); for a worker's idle wait.
#[pyfunction]
pub(crate) fn trim_spare_buffers(py: Python<'_>) -> usize {
    py.detach(engine_buffer::trim_idle)
}
