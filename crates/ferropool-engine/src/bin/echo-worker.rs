//! A worker that speaks the wire protocol without Python, for the engine's own tests.
//!
//! Its `Init` payload `fail` makes it answer `InitFailed`. Each task payload is a command:
//! `echo:<text>` returns the text, `sleep:<ms>` works that long, `stubborn:<ms>` ignores SIGTERM
//! and then works that long, `linger:<ms>` ignores SIGTERM and makes the worker wait that long
//! before it exits after `Shutdown` (a process stuck at exit), `pid` returns the worker's pid, `raise:<text>` answers `Err` with
//! the text, `exit:<code>` prints a line to stderr and exits at once with that code (a crash
//! mid-task), `log:<text>` sends the text as a log record from another thread and returns it.
//! `deaf:<dir>` shuts down the reading side of its socket (so the parent's next write fails,
//! while what the worker writes still arrives), writes a byte to the FIFO `<dir>/deaf`, waits
//! for a byte from the FIFO `<dir>/answer`, returns `heard`, and exits once it has read what
//! was queued before.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

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
                } else if let Some(dir) = cmd.strip_prefix("deaf:") {
                    go_deaf(&conn, std::path::Path::new(dir));
                    (Kind::Ok, b"heard".to_vec())
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

/// Shuts down the reading side of the worker's socket, then tells the test (FIFO `deaf`) and
/// waits for its go-ahead (FIFO `answer`). Opening a FIFO blocks until the other end opens it,
/// so both waits are on the test's own steps.
fn go_deaf(conn: &Connection, dir: &std::path::Path) {
    // SAFETY: shutdown(2) on a descriptor this process owns (borrowed from `conn`, which
    // outlives the call); it touches no memory of ours.
    unsafe {
        libc::shutdown(conn.as_fd().as_raw_fd(), libc::SHUT_RD);
    }
    let mut deaf = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("deaf"))
        .expect("FIFO deaf");
    deaf.write_all(b"d").expect("FIFO deaf");
    let mut answer = std::fs::File::open(dir.join("answer")).expect("FIFO answer");
    let mut byte = [0u8; 1];
    answer.read_exact(&mut byte).expect("FIFO answer");
}
