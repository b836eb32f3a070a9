//! The engine of ferropool: worker processes, their wire format and transport, scheduling and
//! supervision, and the task queue behind the thread pool. It has no Python dependency; the
//! binding crate turns it into `ferropool._core`.
//!
//! - `frame`: the wire format (header layout, kinds).
//! - `memfd`: anonymous memory files and their mappings (every shared-memory system call).
//! - `buffer`: out-of-band buffers of arguments and results, lent in memory files.
//! - `channel`: buffered frame transport over unix sockets, with descriptor passing.
//! - `connection`: the worker's end of its socket (cancelled tasks skipped, answers batched).
//! - `flush_schedule`: when a worker's held answers leave, and when its flusher must be woken.
//! - `worker`: one worker process as the parent sees it.
//! - `pool`: the process pool's API (`ProcessPool`) and the state it shares with the dispatcher.
//! - `dispatcher`: the thread that schedules tasks onto workers and supervises them.
//! - `doorbell`: how callers wake the dispatcher (a pending flag in front of an eventfd).
//! - `relay`: relay of each worker's stdout and stderr a whole line at a time, keeping the last
//!   lines of stderr for crash reports.
//! - `stats`: per-worker statistics, counted by the dispatcher and published on request.
//! - `sync`: atomics that switch to loom's in the model-checking build (`cfg(loom)`).
//! - `work_queue`: the closable MPMC queue with blocking, timed pops behind the thread pool.
//! - `shared`: locks, events, semaphores, barriers, a queue and numbers in shared memory
//!   (`memfd_create` segments), usable from every thread of every process that maps them.

pub mod buffer;
pub mod channel;
pub mod connection;
mod dispatcher;
mod doorbell;
mod flush_schedule;
pub mod frame;
pub mod journal;
pub mod memfd;
pub mod pool;
pub mod relay;
pub mod shared;
pub mod stats;
mod sync;
pub mod work_queue;
pub mod worker;

pub use pool::{Done, News, Outcome, Payload, PoolConfig, ProcessPool, SubmitError, WorkerLog};
pub use stats::{Restart, RestartCause, WorkerStats};
pub use worker::Exit;
