//! `runqueue_wait_ns()`: how long the calling thread has been runnable but not running (waiting
//! for a CPU), from Linux's `/proc/thread-self/schedstat`.
//!
//! `Pool(strategy="auto")` reads it on the threads it measures, to tell other programs' load
//! from the function's own waiting. It is read here, with the GIL held throughout, because the
//! reader often runs beside threads that hold the GIL: Python's file reads give the GIL away
//! around each system call, and winning it back from pure-Python code takes up to a switch
//! interval (5 ms) each time: the very delay the GIL sampler measures.

use pyo3::prelude::*;

/// Nanoseconds the calling thread has spent waiting for a CPU, or None where that cannot be
/// read (not Linux, or a kernel without schedstats).
#[pyfunction]
pub fn runqueue_wait_ns() -> Option<u64> {
    // The file is one line: "<ns on CPU> <ns waiting for a CPU> <time slices>".
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}
