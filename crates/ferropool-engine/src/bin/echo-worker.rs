//! A worker that speaks the wire protocol without Python, for the engine's own tests.
//!
//! Its `Init` payload `fail` makes it answer `InitFailed`. Each task payload is a command:
//! `echo:<text>` returns the text, `sleep:<ms>` works that long, `stubborn:<ms>` ignores SIGTERM
//! and then works that long, `linger:<ms>` ignores SIGTERM and makes the worker wait that long
//! before it exits after `Shutdown` (a process stuck at exit), `pid` returns the worker's pid, `raise:<text>` answers `Err` with
//! the text, `exit:<code>` prints a line to stderr and exits at once with that code (a crash
//! mid-task), `log:<text>` sends the text as a log record from another thread and returns it.

use std::os::fd::{FromRawFd, OwnedFd};

use ferropool_engine::connection::Connection;
use ferropool_engine::frame::{Frame, Kind};

fn main() {
    let fd: i32 = std::env::args()
        .next_back()
        .and_then(|a| a.parse().ok())
        .expect("last argument is the socket fd");
    // SAFETY: the parent passed this descriptor to us alone, and it is taken exactly once.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut conn = Connection::new(sock).expect("socket");
    let Ok(Some(init)) = conn.recv() else { return };
    if init.payload == b"fail" {
        let _ = conn.send(Frame::new(
            Kind::InitFailed,
            0,
            b"initializer failed".to_vec(),
        ));
        std::process::exit(1);
    }
    // Ready must leave before any task runs: a death before the parent reads it counts as a
    // failure to start, which requeues the tasks instead of failing the one that crashed.
    if conn.send(Frame::new(Kind::Ready, 0, Vec::new())).is_err() {
        return;
    }
    let mut linger = std::time::Duration::ZERO;
    while let Ok(Some(f)) = conn.recv() {
        match f.kind {
            Kind::Task => {
                let cmd = String::from_utf8_lossy(&f.payload).into_owned();
                let (kind, out) = if let Some(t) = cmd.strip_prefix("echo:") {
                    (Kind::Ok, t.as_bytes().to_vec())
                } else if let Some(ms) = cmd.strip_prefix("sleep:") {
                    // The task's work: keeps this worker busy.
                    std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
                    (Kind::Ok, Vec::new())
                } else if let Some(ms) = cmd.strip_prefix("stubborn:") {
                    ignore_sigterm();
                    std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
                    (Kind::Ok, Vec::new())
                } else if let Some(ms) = cmd.strip_prefix("linger:") {
                    ignore_sigterm();
                    linger = std::time::Duration::from_millis(ms.parse().unwrap_or(0));
                    (Kind::Ok, Vec::new())
                } else if let Some(t) = cmd.strip_prefix("log:") {
                    let (sender, record) = (conn.sender(), t.as_bytes().to_vec());
                    let sent = std::thread::spawn(move || {
                        sender.send_soon(Frame::new(Kind::Log, 0, record))
                    })
                    .join();
                    if !matches!(sent, Ok(Ok(()))) {
                        break;
                    }
                    (Kind::Ok, t.as_bytes().to_vec())
                } else if cmd == "pid" {
                    (Kind::Ok, std::process::id().to_string().into_bytes())
                } else if let Some(t) = cmd.strip_prefix("raise:") {
                    (Kind::Err, t.as_bytes().to_vec())
                } else if let Some(code) = cmd.strip_prefix("exit:") {
                    eprintln!("echo-worker: exiting with {code}");
                    std::process::exit(code.parse().unwrap_or(1));
                } else {
                    (Kind::Err, b"unknown command".to_vec())
                };
                if conn.answer(kind, f.id, 0, 0, &out, Vec::new()).is_err() {
                    break;
                }
            }
            Kind::Shutdown => break,
            _ => {}
        }
    }
    let _ = conn.flush();
    std::thread::sleep(linger);
}

fn ignore_sigterm() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler, so nothing can
    // run in signal context; this process has no other thread that could race on it.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}
