//! `ferropool._core`: the one extension module, a thin binding over `ferropool-engine`.
//!
//! - `process_pool`: `ProcessPoolEngine`, the parent side of a process pool.
//! - `worker_connection`: `WorkerConnection`, the worker side of the socket.
//! - `thread_pool`: `ThreadWorkQueue`, the task queue and worker loop of `ThreadPool`.
//! - `future`: `FastFuture`, finishing futures without their Python methods.
//! - `buffer`: `SharedBuffer`, out-of-band buffers of arguments and results in shared memory.
//! - `errors`: where engine errors become Python exceptions.
//! - `prefixed_map`: `PrefixedMap`, the iterator of a serial `map` in `Pool(strategy="auto")`.
//! - `schedstat`: `runqueue_wait_ns`, a thread's time waiting for a CPU (auto's probe).
//! - `shared`: locks, events, semaphores, barriers, a queue, numbers and raw memory shared
//!   between processes (`ferropool.shared`), one file per kind as in the engine's `shared`.

use pyo3::prelude::*;

mod buffer;
mod errors;
mod future;
mod prefixed_map;
mod process_pool;
mod schedstat;
mod shared;
mod thread_pool;
mod worker_connection;

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<process_pool::ProcessPoolEngine>()?;
    process_pool::register_constants(m)?;
    m.add_class::<worker_connection::WorkerConnection>()?;
    m.add_class::<worker_connection::WorkerSender>()?;
    m.add_class::<worker_connection::LogSender>()?;
    m.add_class::<thread_pool::ThreadWorkQueue>()?;
    m.add_class::<buffer::SharedBuffer>()?;
    m.add_function(wrap_pyfunction!(buffer::drop_spare_buffers, m)?)?;
    m.add_function(wrap_pyfunction!(buffer::trim_spare_buffers, m)?)?;
    errors::register(m)?;
    prefixed_map::register(m)?;
    m.add_function(wrap_pyfunction!(schedstat::runqueue_wait_ns, m)?)?;
    shared::register(m)?;
    worker_connection::register_kinds(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
