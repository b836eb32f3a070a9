//! `FastFuture`: finishing a `concurrent.futures.Future` from Rust without its Python methods.
//!
//! `set_result` and friends cost several interpreted frames per task (`with self._condition`,
//! `notify_all`, `_invoke_callbacks`). In the common case nobody waits on the future and it has
//! no callbacks, so all they do is change three attributes under the future's lock. `FastFuture`
//! does exactly that, holding that same lock; in any other state (a waiter, a callback,
//! cancelled, unexpected) it changes nothing and the caller uses the real method. The private
//! attributes relied on (`_condition._lock`, `_state`, `_result`, `_exception`, `_waiters`,
//! `_condition._waiters`, `_done_callbacks`) are the same in CPython 3.9 through 3.13. Holding
//! the future's own lock, not the GIL, is what makes this sound, so it stays on for
//! free-threaded builds; `finish_task_future`'s lock-free protocol does not (see there).
//!
//! It applies to exact `concurrent.futures.Future` objects. `ferropool.TaskFuture` has a
//! cheaper protocol of its own (see `python/ferropool/_future.py` and `finish_task_future`).

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The states and classes the fast path needs, looked up once.
struct FutureProtocol {
    class: Py<PyType>,
    pending: Py<PyAny>,
    running: Py<PyAny>,
    finished: Py<PyAny>,
}

static FUTURE_PROTOCOL: PyOnceLock<FutureProtocol> = PyOnceLock::new();
static TASK_FUTURE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Finishes a `ferropool.TaskFuture` with `result` by its lock-free protocol (documented in
/// `python/ferropool/_future.py`): if no condition exists, sets `_result` then `_state`, then
/// wakes whoever created a condition meanwhile (`_wake_after_fast_finish`). Returns
/// `Ok(None)` if `future` is not a `TaskFuture`, `Ok(Some(false))` if its condition exists or
/// the interpreter is free-threaded (use `set_result`), `Ok(Some(true))` once finished.
pub(crate) fn finish_task_future(
    future: &Bound<'_, PyAny>,
    result: &Bound<'_, PyAny>,
) -> PyResult<Option<bool>> {
    let py = future.py();
    let task_future = TASK_FUTURE.get_or_try_init(py, || -> PyResult<_> {
        Ok(py
            .import("ferropool._future")?
            .getattr("TaskFuture")?
            .cast_into::<PyType>()?
            .unbind())
    })?;
    if !future.get_type().is(task_future.bind(py)) {
        return Ok(None);
    }
    // The protocol is store `_state`, then load `_lazy_condition`, against the waiter's store
    // of the condition, then load of `_state`: each side must see the other's store, which the
    // GIL guarantees by running one side at a time. Without it the two stores go through
    // different locks (the future's attributes and its `__dict__`) and the loads take none, and
    // nothing documented orders a store before a later load of another location, so a wake-up
    // could be lost. The free-threaded build therefore finishes every `TaskFuture` with
    // `set_result`, under its condition.
    if cfg!(Py_GIL_DISABLED) {
        return Ok(Some(false));
    }
    let protocol = protocol(py)?;
    let dict = future.getattr(intern!(py, "__dict__"))?;
    let cond = intern!(py, "_lazy_condition");
    if dict.contains(cond)? {
        return Ok(Some(false));
    }
    future.setattr(intern!(py, "_result"), result)?;
    future.setattr(intern!(py, "_state"), protocol.finished.bind(py))?;
    if dict.contains(cond)? {
        future.call_method0(intern!(py, "_wake_after_fast_finish"))?;
    }
    Ok(Some(true))
}

fn protocol(py: Python<'_>) -> PyResult<&FutureProtocol> {
    FUTURE_PROTOCOL.get_or_try_init(py, || -> PyResult<_> {
        let base = py.import("concurrent.futures._base")?;
        Ok(FutureProtocol {
            class: base.getattr("Future")?.cast_into::<PyType>()?.unbind(),
            pending: base.getattr("PENDING")?.unbind(),
            running: base.getattr("RUNNING")?.unbind(),
            finished: base.getattr("FINISHED")?.unbind(),
        })
    })
}

pub(crate) struct FastFuture<'a, 'py> {
    future: &'a Bound<'py, PyAny>,
    protocol: &'a FutureProtocol,
}

impl<'a, 'py> FastFuture<'a, 'py> {
    /// Returns the fast path for `future` if it is exactly a `concurrent.futures.Future`.
    pub(crate) fn of(future: &'a Bound<'py, PyAny>) -> PyResult<Option<Self>> {
        let protocol = protocol(future.py())?;
        Ok(future
            .get_type()
            .is(protocol.class.bind(future.py()))
            .then_some(FastFuture { future, protocol }))
    }

    /// Runs `step` with the future's lock held. A Python error inside `step` is returned after
    /// the lock is released.
    fn locked<T>(&self, step: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<T>) -> PyResult<T> {
        let py = self.future.py();
        let condition = self.future.getattr(intern!(py, "_condition"))?;
        let lock = condition.getattr(intern!(py, "_lock"))?;
        lock.call_method0(intern!(py, "acquire"))?;
        let result = step(&condition);
        lock.call_method0(intern!(py, "release"))?;
        result
    }

    /// Does `set_running_or_notify_cancel` for a pending future: returns `Some(true)` once it is
    /// running, `None` (nothing changed) for any other state.
    pub(crate) fn set_running(&self) -> PyResult<Option<bool>> {
        let py = self.future.py();
        self.locked(|_| {
            if !self
                .future
                .getattr(intern!(py, "_state"))?
                .is(self.protocol.pending.bind(py))
            {
                return Ok(None);
            }
            self.future
                .setattr(intern!(py, "_state"), self.protocol.running.bind(py))?;
            Ok(Some(true))
        })
    }

    /// Does `set_result` / `set_exception` for a pending or running future that nobody waits on
    /// and that has no callbacks: returns true once finished, false (nothing changed) otherwise.
    pub(crate) fn finish(
        &self,
        outcome: &Result<Bound<'py, PyAny>, Bound<'py, PyAny>>,
    ) -> PyResult<bool> {
        let py = self.future.py();
        self.locked(|condition| {
            let f = self.future;
            let state = f.getattr(intern!(py, "_state"))?;
            if !(state.is(self.protocol.running.bind(py))
                || state.is(self.protocol.pending.bind(py)))
                || f.getattr(intern!(py, "_waiters"))?.is_truthy()?
                || f.getattr(intern!(py, "_done_callbacks"))?.is_truthy()?
                || condition.getattr(intern!(py, "_waiters"))?.is_truthy()?
            {
                return Ok(false);
            }
            match outcome {
                Ok(result) => f.setattr(intern!(py, "_result"), result)?,
                Err(exc) => f.setattr(intern!(py, "_exception"), exc)?,
            }
            f.setattr(intern!(py, "_state"), self.protocol.finished.bind(py))?;
            Ok(true)
        })
    }
}
