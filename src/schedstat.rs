//! `runqueue_wait_ns(native_id=None)`: how long a thread of this process has been runnable but
//! not running (waiting for a CPU), from Linux's `/proc/.../schedstat`.
//!
//! `Pool(strategy="auto")` reads it for the threads it measures, to tell other programs' load
//! from the function's own waiting. It is read here, with the GIL held throughout, because the
//! reader is often a watcher thread looking at threads that hold the GIL: Python's file reads
//! give the GIL away around each system call, and winning it back from pure-Python code takes up
//! to a switch interval (5 ms) each time, which delayed auto's early decision by 20-40 ms.

use pyo3::prelude::*;

/// Nanoseconds the thread `native_id` of this process (None: the calling thread) has spent
/// waiting for a CPU, or None where that cannot be read (not Linux, no schedstats, thread gone).
#[pyfunction]
#[pyo3(signature = (native_id=None))]
pub fn runqueue_wait_ns(native_id: Option<u64>) -> Option<u64> {
    let path = match native_id {
        None => "/proc/thread-self/schedstat".to_owned(),
        Some(id) => format!("/proc/self/task/{id}/schedstat"),
    };
    // The file is one line: "<ns on CPU> <ns waiting for a CPU> <time slices>".
    let text = std::fs::read_to_string(path).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}
