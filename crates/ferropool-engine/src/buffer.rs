//! Out-of-band buffers: the large byte ranges of a task's arguments and results, each carried in
//! an anonymous memory file (`memfd_create`) whose descriptor rides along with its frame
//! (`SCM_RIGHTS`). See `docs/shared-memory.md`, "Buffers".
//!
//! A memory file is one header page followed by the buffer's bytes. The header holds how many
//! mappings of the file receivers still have (`readers`): the sender adds one each time it lends
//! the descriptor to a frame ([`MemFile::lend`]), a receiver's [`Mapping`] takes it back when
//! it unmaps; and the buffer's length, which may be less than the file holds. A file only ever
//! grows: it is sealed against shrinking, so that no holder of a descriptor (a task can reach one
//! through `/proc`) can truncate it under another process's mapping, which would kill that
//! process with `SIGBUS`; a receiver refuses a file without that seal, and a length in the
//! header larger than the file. The receiver closes the descriptor at once, so the memory lives exactly as long as
//! the sender's file and the receivers' mappings do. Nothing has a name in any filesystem: a crash
//! or a killed process leaves nothing behind.
//!
//! Writing into a *fresh* memory file is slow (the kernel allocates and clears it 4 KiB page by
//! page, about 2-2.6 GB/s here; a large one is filled by two threads when a CPU is free, see
//! [`fill_fresh`]), so a sender does not close a file it is done with: the file goes to
//! this process's spare list ([`Spares`]) and the next buffer is copied into it with `memcpy`
//! through the sender's own mapping, once no receiver maps it any more (`readers == 0`). A
//! receiver that crashes never gives its count back; its file is then never reused and leaves
//! the list by age. Likewise a receiver keeps its mappings after their buffer is dropped, for
//! the file's next buffer: mapping 16 MiB anew costs about as much as copying it. Shared ones
//! (the parent's, of results) always; private ones (a worker's, of arguments) only if no page
//! of them was written ([`Map::shows_only_its_file`]). The lists are bounded (entries, bytes,
//! age), see [`Kept`]; an idle process trims them by age with [`trim_idle`]. They, and the
//! buffer cache, belong to one process: a child forked from it starts with empty ones (see
//! [`ForkLocal`]), so it never writes into a file its parent still maps.
//!
//! Arguments may go to several workers from one memory file: `BufferCache` finds the file
//! already written for the same memory (same address and length) while a task still holds it,
//! and reuses it if its bytes are still equal (so a buffer changed in between is written anew).
//! Workers therefore map arguments private: their writes are copy-on-write and stay in that
//! worker. A result has one receiver, so the parent maps it shared: writing to it copies nothing.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::memfd::{self, Map, Share};
use crate::shared::ident;

/// Byte offset in the header page of the buffer's length (a little-endian `u64`).
const LEN_AT: usize = 8;

/// Size of the header page in front of a buffer's bytes (the system page size, so that the
/// bytes can be mapped on their own).
pub fn header_len() -> usize {
    memfd::page_size()
}

/// A memory file holding one buffer, as its sender holds it. Dropping it gives the file to the
/// process's spare list for reuse.
pub struct MemFile {
    /// Always `Some` until drop hands it to the spare list.
    file: Option<Backing>,
    len: usize,
    /// The spare list it came from and goes back to.
    home: &'static Spares,
}

/// A memory file and the sender's shared mapping of all of it (header and bytes).
pub struct Backing {
    fd: OwnedFd,
    view: Map,
    /// Length of the buffer now in the file.
    len: usize,
    /// Bytes the file holds after the header (at least `len`; the file never shrinks).
    cap: usize,
    /// Bytes after the header whose pages `view` maps already (a `memcpy` there takes no faults).
    populated: usize,
}

impl MemFile {
    /// Writes `data` into a memory file: a spare one when a free one exists, else a new one.
    pub fn write(data: &[u8]) -> io::Result<MemFile> {
        MemFile::write_in(&SPARES, data)
    }

    /// As `write`, with the spare list `home` rather than the process's.
    pub fn write_in(home: &'static Spares, data: &[u8]) -> io::Result<MemFile> {
        let backing = match home.take_free(data.len()) {
            Some(spare) => spare.refill(data)?,
            None => Backing::new(data)?,
        };
        Ok(MemFile {
            file: Some(backing),
            len: data.len(),
            home,
        })
    }

    fn backing(&self) -> &Backing {
        self.file
            .as_ref()
            .expect("a MemFile has its file until dropped")
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.backing().fd.as_fd()
    }

    /// A duplicate of the descriptor to send to one receiver, counted as one more reader of
    /// the file until that receiver's `Mapping` is dropped.
    pub fn lend(&self) -> io::Result<OwnedFd> {
        let b = self.backing();
        b.readers().fetch_add(1, Ordering::AcqRel);
        b.fd.try_clone().inspect_err(|_| {
            b.readers().fetch_sub(1, Ordering::AcqRel);
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the file holds exactly `data`.
    fn holds(&self, data: &[u8]) -> bool {
        // SAFETY: nobody writes a sender's memory file while its MemFile lives: receivers map
        // it private (arguments) or are its only user after the sender is done (results).
        data.len() == self.len && unsafe { self.backing().bytes() } == data
    }

    /// Receivers still mapping this file (tests).
    pub fn readers(&self) -> u32 {
        self.backing().readers().load(Ordering::Acquire)
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        if let Some(backing) = self.file.take() {
            self.home.give(backing);
        }
    }
}

impl Backing {
    /// A new memory file holding `data`, sealed against shrinking, filled by [`fill_fresh`].
    fn new(data: &[u8]) -> io::Result<Backing> {
        let fd = memfd::create(c"ferropool-buffer")?;
        let head = header_len();
        memfd::resize(fd.as_fd(), head + data.len())?;
        memfd::seal(fd.as_fd(), memfd::SEAL_SHRINK | memfd::SEAL_SEAL)?;
        let view = Map::new(fd.as_fd(), head + data.len(), 0, Share::Shared)?;
        fill_fresh(fd.as_fd(), &view, head, data)?;
        let backing = Backing {
            fd,
            view,
            len: data.len(),
            cap: data.len(),
            populated: 0,
        };
        backing
            .len_word()
            .store(data.len() as u64, Ordering::Release);
        Ok(backing)
    }

    /// Puts `data` into this (free) file, growing it if needed; a shorter buffer leaves the
    /// file's size and gives back the pages past its end.
    fn refill(mut self, data: &[u8]) -> io::Result<Backing> {
        let head = header_len();
        if data.len() > self.cap {
            memfd::resize(self.fd.as_fd(), head + data.len())?;
            self.view = Map::new(self.fd.as_fd(), head + data.len(), 0, Share::Shared)?;
            self.cap = data.len();
            self.populated = 0;
        } else if data.len() < self.len {
            let page = memfd::page_size();
            let from = data.len().div_ceil(page) * page;
            if from < self.len {
                memfd::punch_hole(self.fd.as_fd(), (head + from) as u64, self.len - from);
            }
            self.populated = self.populated.min(from);
        }
        if self.populated < data.len() {
            // Map every page at once (one call instead of a fault per 4 KiB page); they stay
            // mapped for every later reuse. Pages punched out or past the old end are allocated
            // here, and one that cannot be had (no memory under strict overcommit) is an error,
            // where the `memcpy` below would take a SIGBUS: `pwrite` then reports it, or does
            // the work where the advice is unknown (kernels before 5.14).
            if self.view.populate(head, data.len()).is_err() {
                memfd::write_at(self.fd.as_fd(), data, head)?;
                return Ok(self.holding(data.len()));
            }
            self.populated = data.len();
        }
        if !data.is_empty() {
            // SAFETY: the file is free (no receiver maps it: `readers` was 0 when it was taken
            // from the spare list, and only this thread holds it now), the view covers
            // `head + cap >= head + data.len()` bytes of a file that cannot shrink, those pages
            // exist and are mapped (`populated`: by the advice above, now or on an earlier
            // reuse), so the copy allocates nothing and cannot take a SIGBUS, and `data` is a
            // separate, live slice.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.view.as_ptr().add(head),
                    data.len(),
                )
            };
        }
        Ok(self.holding(data.len()))
    }

    /// Records that the file now holds `len` bytes, for this process and its receivers.
    fn holding(mut self, len: usize) -> Backing {
        self.len = len;
        self.len_word().store(len as u64, Ordering::Release);
        self
    }

    fn len_word(&self) -> &AtomicU64 {
        // SAFETY: as for `readers`: offset LEN_AT (8-aligned) of the shared header page, only
        // ever accessed atomically.
        unsafe { AtomicU64::from_ptr(self.view.as_ptr().add(LEN_AT).cast()) }
    }

    fn readers(&self) -> &AtomicU32 {
        // SAFETY: the view starts with the header page, mapped shared and writable for as long
        // as `self` lives; offset 0 is 4-aligned (page-aligned) and only ever accessed
        // atomically, by this process and by receivers through their own shared mappings.
        unsafe { AtomicU32::from_ptr(self.view.as_ptr().cast()) }
    }

    /// # Safety
    /// Nobody may write the file while the slice lives.
    unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: the view maps header and `len` bytes; no concurrent writer (caller's promise).
        unsafe { std::slice::from_raw_parts(self.view.as_ptr().add(header_len()), self.len) }
    }

    /// Whether no receiver maps the file any more, so its bytes may be overwritten.
    fn is_free(&self) -> bool {
        self.readers().load(Ordering::Acquire) == 0
    }
}

/// Below this many bytes a fresh file is filled by one thread (a helper costs tens of µs to start).
const SPLIT_FILL_MIN: usize = 8 << 20;

/// Copies `data` into the fresh memory file `fd` at offset `head`, where `view` maps the file
/// shared (header and bytes). The kernel allocates and clears a fresh file's pages one by one
/// (about 2-2.6 GB/s here, see `docs/shared-memory.md`), and `pwrite` does so under the file's
/// lock, so a second thread writing the same file with `pwrite` only waits. Allocating pages by
/// faulting them into a mapping takes no such lock: for `data` of [`SPLIT_FILL_MIN`] bytes or
/// more, on a machine with more than one CPU, a helper thread fills the file from its end
/// through `view` (`MADV_POPULATE_WRITE`, then `memcpy`, piece by piece) while this thread fills
/// it from the start with `pwrite` (the faster way alone), until they meet ([`fill_split`]). The
/// helper takes a piece only while a CPU is free for it ([`cpu_free_for_helper`]): where every CPU
/// is busy (two workers returning large results at once on two CPUs) it would only take turns
/// with the others, and faulting pages in costs more CPU than `pwrite`.
fn fill_fresh(fd: BorrowedFd<'_>, view: &Map, head: usize, data: &[u8]) -> io::Result<()> {
    if data.len() < SPLIT_FILL_MIN || cpus() < 2 {
        return memfd::write_at(fd, data, head);
    }
    fill_split(fd, view, head, data, cpu_free_for_helper)
}

/// The pieces a split fill hands out, one at a time: a multiple of any page size.
const FILL_PIECE: usize = 2 << 20;

/// How long a fill helper that found no free CPU waits before it asks again (unless the fill is
/// done first).
const HELPER_BACK_OFF: Duration = Duration::from_millis(1);

/// `fill_fresh` with the helper thread, whatever the size. The two threads take [`FILL_PIECE`]s
/// from the two ends of the buffer until they meet, so that this thread never waits for the
/// helper for more than the piece it is writing (about two thirds go to `pwrite` when both run
/// freely). The helper asks `room` before each piece; told no, it waits [`HELPER_BACK_OFF`] and
/// asks again, and leaves once every piece is taken. If the helper cannot be started, this
/// thread writes everything; if it cannot populate (an old kernel, no memory), it writes its
/// piece with `pwrite`, which reports the real error, and stops.
fn fill_split(
    fd: BorrowedFd<'_>,
    view: &Map,
    head: usize,
    data: &[u8],
    room: impl Fn() -> bool + Sync,
) -> io::Result<()> {
    // The pieces nobody has taken yet: this thread takes from the front, the helper from the back.
    let left = Mutex::new(0..data.len().div_ceil(FILL_PIECE));
    let lock = || left.lock().unwrap_or_else(|p| p.into_inner());
    let take = |from_back: bool| {
        let mut left = lock();
        let piece = if from_back {
            left.next_back()
        } else {
            left.next()
        }?;
        let at = piece * FILL_PIECE;
        Some((at, &data[at..(at + FILL_PIECE).min(data.len())]))
    };
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("ferropool-fill".into())
            .spawn_scoped(scope, || {
                loop {
                    if !room() {
                        if lock().is_empty() {
                            return Ok(());
                        }
                        std::thread::park_timeout(HELPER_BACK_OFF); // unparked when all is taken
                        continue;
                    }
                    let Some((at, piece)) = take(true) else {
                        return Ok(());
                    };
                    if view.populate_write(head + at, piece.len()).is_err() {
                        // `pwrite` reports the real error, if there is one; the rest is left to
                        // the other thread.
                        return memfd::write_at(fd, piece, head + at);
                    }
                    // SAFETY: `view` maps `head + data.len()` bytes of a file sealed against
                    // shrinking, and the pages of `[head + at, head + at + piece.len())` are
                    // allocated and mapped (populated just above), so the copy cannot fault. This
                    // thread alone writes that range: the file is fresh (no other process has
                    // its descriptor), and `take` hands each piece to one thread. `piece` is a
                    // live slice of the caller's separate buffer, only read.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            piece.as_ptr(),
                            view.as_ptr().add(head + at),
                            piece.len(),
                        )
                    };
                }
            });
        let Ok(helper) = helper else {
            return memfd::write_at(fd, data, head);
        };
        let mut front_done = Ok(());
        while let Some((at, piece)) = take(false) {
            if let Err(err) = memfd::write_at(fd, piece, head + at) {
                *lock() = 0..0; // the helper stops too
                front_done = Err(err);
                break;
            }
        }
        helper.thread().unpark();
        let back_done = helper
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the fill helper panicked")));
        front_done.and(back_done)
    })
}

/// How many CPUs this process may use (read once).
fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Whether a fill helper would run on a CPU of its own: no more threads are runnable on the
/// system right now than this process may use CPUs, the helper and the thread it helps included
/// (the kernel's count of runnable tasks, the fourth field of `/proc/loadavg`: "2/345" is 2
/// runnable of 345). False when it cannot be read.
fn cpu_free_for_helper() -> bool {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| runnable_tasks(&text))
        .is_some_and(|runnable| runnable <= cpus())
}

/// The number of runnable tasks in the text of `/proc/loadavg`.
fn runnable_tasks(loadavg: &str) -> Option<usize> {
    let field = loadavg.split_ascii_whitespace().nth(3)?;
    field.split_once('/')?.0.parse().ok()
}

/// A value of which each process has its own: a child forked from a process that used it finds a
/// fresh `T::default()`, without touching the parent's (whose lock another thread may have held
/// at the fork, and whose contents are the parent's: the parent's spare memory files are still
/// mapped shared in the parent). The parent's value is leaked in the child, never dropped: its
/// state may be half-changed by a thread that does not exist there.
pub struct ForkLocal<T> {
    /// Null until first used; then a value owned by the process in its `pid`, never freed while
    /// that process may still use it.
    current: AtomicPtr<Owned<T>>,
    _owns: PhantomData<Box<Owned<T>>>,
}

struct Owned<T> {
    pid: u32,
    value: T,
}

impl<T: Default> Default for ForkLocal<T> {
    fn default() -> ForkLocal<T> {
        ForkLocal::new()
    }
}

impl<T: Default> ForkLocal<T> {
    pub const fn new() -> ForkLocal<T> {
        ForkLocal {
            current: AtomicPtr::new(std::ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// This process's value, made on first use in this process.
    pub fn get(&self) -> &T {
        let pid = ident::pid();
        loop {
            let cur = self.current.load(Ordering::Acquire);
            // SAFETY: a non-null pointer here came from `Box::into_raw` below and is freed only
            // by `drop`, which has `&mut self`, so it is valid for as long as `&self` is.
            if let Some(owned) = unsafe { cur.as_ref() } {
                if owned.pid == pid {
                    return &owned.value;
                }
            }
            let fresh = Box::into_raw(Box::new(Owned {
                pid,
                value: T::default(),
            }));
            if self
                .current
                .compare_exchange(cur, fresh, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // `cur`, another process's, is leaked on purpose (see the type's docs).
                // SAFETY: just published; valid until `drop` as above.
                return unsafe { &(*fresh).value };
            }
            // SAFETY: `fresh` was never published, so this is its only owner.
            drop(unsafe { Box::from_raw(fresh) });
        }
    }
}

impl<T> Drop for ForkLocal<T> {
    fn drop(&mut self) {
        let cur = *self.current.get_mut();
        // SAFETY: `&mut self`: nobody else holds the pointer; it came from `Box::into_raw`.
        if let Some(owned) = unsafe { cur.as_ref() } {
            if owned.pid == ident::pid() {
                // SAFETY: as above, and this process owns it.
                drop(unsafe { Box::from_raw(cur) });
            }
        }
    }
}

/// A bounded list of things kept for reuse (spare memory files, received mappings): at most
/// [`MAX_KEPT`] entries and [`MAX_KEPT_BYTES`] bytes, each kept at most [`MAX_KEPT_AGE`] after
/// it was put back (checked whenever something is put or taken, and by [`trim_idle`] and
/// [`drop_spares`]); a thing larger than the byte bound is not kept. Each process has its own
/// (a forked child starts empty).
pub struct Kept<T> {
    list: ForkLocal<Mutex<Vec<(T, usize, Instant)>>>,
}

impl<T> Default for Kept<T> {
    fn default() -> Kept<T> {
        Kept::new()
    }
}

pub const MAX_KEPT: usize = 16;
pub const MAX_KEPT_BYTES: usize = 256 << 20;
pub const MAX_KEPT_AGE: Duration = Duration::from_secs(2);

impl<T> Kept<T> {
    pub const fn new() -> Kept<T> {
        Kept {
            list: ForkLocal::new(),
        }
    }

    /// The list, without the entries kept longer than `MAX_KEPT_AGE`.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(T, usize, Instant)>> {
        let mut list = self.list.get().lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        list.retain(|(_, _, at)| now.duration_since(*at) < MAX_KEPT_AGE);
        list
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops everything kept; returns how many.
    pub fn clear(&self) -> usize {
        let all = std::mem::take(&mut *self.lock());
        all.len() // dropped here, after the lock: closing and unmapping take system calls
    }

    /// Drops the entries kept longer than `MAX_KEPT_AGE`; returns how many.
    pub fn trim(&self) -> usize {
        let mut list = self.list.get().lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (old, young): (Vec<_>, Vec<_>) = std::mem::take(&mut *list)
            .into_iter()
            .partition(|(_, _, at)| now.duration_since(*at) >= MAX_KEPT_AGE);
        *list = young;
        drop(list);
        old.len()
    }

    /// Keeps `item` of `bytes` bytes (or drops it at once if it is larger than the bound).
    fn put(&self, item: T, bytes: usize) {
        if bytes > MAX_KEPT_BYTES {
            return;
        }
        let mut list = self.lock();
        list.push((item, bytes, Instant::now()));
        let mut total: usize = list.iter().map(|(_, b, _)| b).sum();
        while list.len() > MAX_KEPT || total > MAX_KEPT_BYTES {
            // the oldest first
            total -= list.remove(0).1;
        }
    }

    /// Takes the most recently kept item that `best` accepts, else the most recent one that
    /// `fits` accepts.
    fn take(&self, best: impl Fn(&T) -> bool, fits: impl Fn(&T) -> bool) -> Option<T> {
        let mut list = self.lock();
        let pick = list
            .iter()
            .rposition(|(t, _, _)| best(t))
            .or_else(|| list.iter().rposition(|(t, _, _)| fits(t)))?;
        Some(list.remove(pick).0)
    }
}

/// Memory files a sender is done with, to write its next buffers into (see the module docs).
pub type Spares = Kept<Backing>;

/// This process's spare memory files.
static SPARES: Spares = Spares::new();

impl Spares {
    fn give(&self, backing: Backing) {
        let bytes = backing.len;
        self.put(backing, bytes); // a file too large is closed; receivers' mappings keep its memory
    }

    /// A free spare file, preferring one of exactly `len` bytes (no resize).
    fn take_free(&self, len: usize) -> Option<Backing> {
        self.take(|b| b.len == len && b.is_free(), Backing::is_free)
    }
}

/// Closes every spare memory file and kept mapping of this process (a pool calls it when it
/// shuts down, so that idle memory is given back at once rather than after `MAX_KEPT_AGE`).
/// Returns how many.
pub fn drop_spares() -> usize {
    SPARES.clear() + KEPT_MAPPINGS.clear() + KEPT_PRIVATE.clear()
}

/// Closes the spare memory files and kept mappings of this process that have been kept longer
/// than [`MAX_KEPT_AGE`]; returns how many. Without it they would go only when the next buffer
/// moves, so an idle process would keep up to [`MAX_KEPT_BYTES`] per list indefinitely. Meant
/// for an idle tick (the dispatcher's, a worker's wait): cheap to call often, as it does nothing
/// within [`TRIM_EVERY`] of the last trim. Never blocks for long (three uncontended locks, and
/// the `munmap`/`close` of what it drops).
pub fn trim_idle() -> usize {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now_ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
    let last = LAST_MS.load(Ordering::Relaxed);
    if last != 0 && now_ms.saturating_sub(last) < TRIM_EVERY.as_millis() as u64 {
        return 0;
    }
    if LAST_MS
        .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return 0; // another thread trims now
    }
    SPARES.trim() + KEPT_MAPPINGS.trim() + KEPT_PRIVATE.trim()
}

/// The least time between two trims by [`trim_idle`].
pub const TRIM_EVERY: Duration = Duration::from_millis(250);

/// Memory files of buffers still held by some task, by the address and length of the memory
/// they were written from (see the module docs). Entries die with the last task holding them.
/// Each process has its own: a forked child must not send its parent's files.
#[derive(Default)]
pub struct BufferCache {
    entries: ForkLocal<Mutex<Vec<CacheEntry>>>,
}

/// The address and length of the memory a file was written from, and the file.
type CacheEntry = (usize, usize, Weak<MemFile>);

impl BufferCache {
    pub const fn new() -> BufferCache {
        BufferCache {
            entries: ForkLocal::new(),
        }
    }

    /// Returns a memory file holding `data`: one still held by a task if it was written from the
    /// same memory and its bytes are unchanged, else a new one.
    pub fn get_or_write(&self, data: &[u8]) -> io::Result<Arc<MemFile>> {
        let key = (data.as_ptr() as usize, data.len());
        let candidate = {
            let mut entries = self.entries.get().lock().unwrap_or_else(|p| p.into_inner());
            entries.retain(|(_, _, weak)| weak.strong_count() > 0);
            entries
                .iter()
                .find(|(p, l, _)| (*p, *l) == key)
                .and_then(|(_, _, weak)| weak.upgrade())
        };
        if let Some(file) = candidate {
            if file.holds(data) {
                return Ok(file);
            }
        }
        let file = Arc::new(MemFile::write(data)?);
        let mut entries = self.entries.get().lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(p, l, weak)| weak.strong_count() > 0 && (*p, *l) != key);
        entries.push((key.0, key.1, Arc::downgrade(&file)));
        Ok(file)
    }
}

/// A received buffer: the bytes of a memory file mapped into this process, read-write. On drop
/// the file's reader count is given back and the bytes unmapped — or kept for the file's next
/// buffer (see [`Mapping::new`]).
pub struct Mapping {
    /// Always `Some` until dropped.
    maps: Option<Maps>,
    /// The file, by device and inode.
    file: FileId,
    /// Whether the bytes are mapped shared (else private, copy-on-write).
    shared: bool,
}

/// The mappings of one received memory file: its header page (shared) and its bytes.
struct Maps {
    /// `None` for an empty buffer.
    data: Option<Map>,
    header: Map,
}

type FileId = (u64, u64);

/// Shared mappings of received files nobody uses any more, kept because the sender will likely
/// write its next buffer into the same file (its spare list), and a mapping whose pages are all
/// mapped already costs nothing to reuse, where mapping 16 MiB anew costs ~1.5 ms here.
static KEPT_MAPPINGS: Kept<(FileId, Maps)> = Kept::new();

/// Private mappings of received files nobody uses any more whose every page still shows the
/// file (the task wrote none: see [`Map::shows_only_its_file`]), kept for the same reason: a
/// worker that gets the next argument in the same file reads it through pages already mapped.
/// A page of a private mapping that was never written is the file's own page, so it shows what
/// the sender writes there next, as a shared mapping does.
static KEPT_PRIVATE: Kept<(FileId, Maps)> = Kept::new();

/// Where mappings of this sharing are kept: [`KEPT_MAPPINGS`] or [`KEPT_PRIVATE`].
fn kept_mappings(shared: bool) -> &'static Kept<(FileId, Maps)> {
    if shared {
        &KEPT_MAPPINGS
    } else {
        &KEPT_PRIVATE
    }
}

impl Mapping {
    /// Maps the bytes of the memory file `fd` (lent by its sender): `shared` writes go to the
    /// file (the caller is its only user), otherwise they are copy-on-write, private to this
    /// mapping. The descriptor may be closed afterwards.
    ///
    /// A mapping of the same file (same inode, same length, same sharing) kept from an earlier
    /// buffer is reused: it shows the file's current bytes, as any shared mapping does, and as
    /// a private one does when none of its pages was written (only such are kept: a written
    /// page is a private copy, stale for the next use).
    ///
    /// Fails with `InvalidData` for a file not sealed against shrinking (its mapping could be cut
    /// under this process), or whose header names more bytes than it holds; the header is read
    /// with `pread`, so a file shorter than that is an error, never a fault.
    pub fn new(fd: BorrowedFd<'_>, shared: bool) -> io::Result<Mapping> {
        let head = header_len();
        memfd::require_seals(fd, memfd::SEAL_SHRINK)?;
        let st = memfd::fstat(fd)?;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let room = usize::try_from(st.st_size)
            .ok()
            .and_then(|size| size.checked_sub(head))
            .ok_or_else(|| bad("a buffer's memory file is shorter than its header"))?;
        let mut word = [0u8; 8];
        memfd::read_at(fd, &mut word, LEN_AT)?;
        let len = usize::try_from(u64::from_le_bytes(word))
            .ok()
            .filter(|&len| len <= room)
            .ok_or_else(|| bad("a buffer's header names more bytes than its memory file holds"))?;
        let file = (st.st_dev, st.st_ino);
        let same = |(id, maps): &(FileId, Maps)| {
            *id == file && maps.data.as_ref().map_or(0, Map::len) == len
        };
        if let Some((_, maps)) = kept_mappings(shared).take(same, |_| false) {
            return Ok(Mapping {
                maps: Some(maps),
                file,
                shared,
            });
        }
        let header = Map::new(fd, head, 0, Share::Shared)?;
        // No prefaulting either way. Private: populating a writable private mapping would copy
        // every page. Shared: `MAP_POPULATE` of a fresh 64 MiB result cost more than the
        // kernel's fault-around as the caller first reads or writes it (map and read: 3.9-5.1
        // against 6.2-7.3 GB/s, docs/shared-memory.md), and held the result back until done. A
        // kept mapping keeps the pages the caller touched mapped for the file's next buffer.
        let share = if shared {
            Share::Shared
        } else {
            Share::Private
        };
        let data = if len == 0 {
            None
        } else {
            Some(Map::new(fd, len, head, share)?)
        };
        Ok(Mapping {
            maps: Some(Maps { data, header }),
            file,
            shared,
        })
    }

    fn data(&self) -> Option<&Map> {
        self.maps.as_ref().and_then(|m| m.data.as_ref())
    }

    /// Start of the mapped bytes (dangling, never to be read, when `len()` is 0).
    pub fn as_ptr(&self) -> *mut u8 {
        self.data()
            .map_or(NonNull::dangling().as_ptr(), Map::as_ptr)
    }

    pub fn len(&self) -> usize {
        self.data().map_or(0, Map::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the mapped bytes.
    ///
    /// # Safety
    /// No other thread or process may write the mapping while the slice lives.
    pub unsafe fn bytes(&self) -> &[u8] {
        match self.data() {
            // SAFETY: `d` maps `d.len()` readable bytes that live as long as `self`; the caller
            // guarantees no concurrent writes.
            Some(d) => unsafe { std::slice::from_raw_parts(d.as_ptr(), d.len()) },
            None => &[],
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let Some(mut maps) = self.maps.take() else {
            return;
        };
        // A private mapping is kept only if no page of it was written; otherwise it goes before
        // the sender may reuse the file. Nothing writes it now: its last user is gone.
        let keep = self.shared || maps.data.as_ref().is_some_and(Map::shows_only_its_file);
        if !keep {
            drop(maps.data.take());
        }
        // SAFETY: the header page is mapped shared and writable while `maps.header` lives; its
        // first word is the reader count, page-aligned and only ever accessed atomically.
        let readers = unsafe { AtomicU32::from_ptr(maps.header.as_ptr().cast()) };
        // Saturating: a file mapped without being lent (a hand-made frame) stays at 0.
        let _ = readers.fetch_update(Ordering::Release, Ordering::Relaxed, |n| n.checked_sub(1));
        if keep {
            let bytes = maps.data.as_ref().map_or(0, Map::len);
            kept_mappings(self.shared).put((self.file, maps), bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(fd: BorrowedFd<'_>) -> u64 {
        memfd::fstat(fd).unwrap().st_ino
    }

    fn receive(file: &MemFile, shared: bool) -> Mapping {
        Mapping::new(file.lend().unwrap().as_fd(), shared).unwrap()
    }

    /// A fresh memory file of `head + data.len()` bytes, as `Backing::new` makes it, and the
    /// shared view of all of it.
    fn fresh_file(head: usize, len: usize) -> (OwnedFd, Map) {
        let fd = memfd::create(c"test-fill").unwrap();
        memfd::resize(fd.as_fd(), head + len).unwrap();
        let view = Map::new(fd.as_fd(), head + len, 0, Share::Shared).unwrap();
        (fd, view)
    }

    fn read_back(fd: BorrowedFd<'_>, head: usize, len: usize) -> Vec<u8> {
        let mut got = vec![0u8; len];
        memfd::read_at(fd, &mut got, head).unwrap();
        got
    }

    #[test]
    fn a_fill_split_with_a_helper_thread_writes_every_byte_in_place() {
        let head = header_len();
        // Not a whole number of pages: the helper's first piece ends mid-page.
        let data: Vec<u8> = (0..SPLIT_FILL_MIN + 12_345)
            .map(|i| (i % 253) as u8)
            .collect();
        let (fd, view) = fresh_file(head, data.len());
        fill_split(fd.as_fd(), &view, head, &data, || true).unwrap();
        assert!(read_back(fd.as_fd(), head, data.len()) == data);
        let mut header = vec![0u8; head];
        memfd::read_at(fd.as_fd(), &mut header, 0).unwrap();
        assert!(
            header.iter().all(|&b| b == 0),
            "the fill wrote into the header page"
        );
    }

    #[test]
    fn a_helper_that_cannot_populate_writes_its_part_with_pwrite() {
        let head = header_len();
        // Many pieces, so that the helper takes some while this thread writes the first ones.
        let data: Vec<u8> = (0..16 * FILL_PIECE + 7).map(|i| (i % 241) as u8).collect();
        let (fd, _) = fresh_file(head, data.len());
        // A view of the header page alone: populating the helper's range fails (outside it).
        let short = Map::new(fd.as_fd(), head, 0, Share::Shared).unwrap();
        assert!(short.populate_write(head, 1).is_err());
        fill_split(fd.as_fd(), &short, head, &data, || true).unwrap();
        assert!(read_back(fd.as_fd(), head, data.len()) == data);
    }

    #[test]
    fn a_spare_whose_pages_cannot_be_populated_is_refilled_with_pwrite() {
        let head = header_len();
        let first: Vec<u8> = (0..3 * memfd::page_size() + 5)
            .map(|i| (i % 7) as u8)
            .collect();
        let mut spare = Backing::new(&first).unwrap();
        // A view of the header page alone: populating the bytes fails (outside it), as it does
        // when a page cannot be had; a `memcpy` through this view would fault instead.
        spare.view = Map::new(spare.fd.as_fd(), head, 0, Share::Shared).unwrap();
        let data: Vec<u8> = (0..first.len() - 3).map(|i| (i % 11) as u8).collect();
        let spare = spare.refill(&data).unwrap();
        assert_eq!(spare.populated, 0, "nothing was populated");
        assert_eq!(spare.len, data.len());
        assert_eq!(spare.len_word().load(Ordering::Acquire), data.len() as u64);
        assert!(read_back(spare.fd.as_fd(), head, data.len()) == data);
    }

    #[test]
    fn a_helper_never_given_room_leaves_everything_to_the_caller() {
        let head = header_len();
        let data: Vec<u8> = (0..4 * FILL_PIECE + 99).map(|i| (i % 239) as u8).collect();
        let (fd, view) = fresh_file(head, data.len());
        let asked = AtomicU32::new(0);
        fill_split(fd.as_fd(), &view, head, &data, || {
            asked.fetch_add(1, Ordering::Relaxed);
            false
        })
        .unwrap();
        assert!(read_back(fd.as_fd(), head, data.len()) == data);
        assert!(
            asked.load(Ordering::Relaxed) >= 1,
            "the helper never asked for room"
        );
    }

    #[test]
    fn a_large_buffer_round_trips_through_a_fresh_file_whatever_the_load() {
        static HOME: Spares = Spares::new();
        let data: Vec<u8> = (0..SPLIT_FILL_MIN * 2 + 1)
            .map(|i| (i * 7 % 256) as u8)
            .collect();
        let file = MemFile::write_in(&HOME, &data).unwrap();
        let seen = receive(&file, false);
        // SAFETY: nothing writes the mapping during the read.
        assert!(unsafe { seen.bytes() } == &data[..]);
    }

    #[test]
    fn the_runnable_count_is_read_from_loadavg() {
        assert_eq!(runnable_tasks("0.44 1.06 1.12 2/345 12345\n"), Some(2));
        assert_eq!(runnable_tasks("0.00 0.00 0.00 17/1024 9"), Some(17));
        assert_eq!(runnable_tasks("0.44 1.06 1.12"), None);
        assert_eq!(runnable_tasks("0.44 1.06 1.12 x/345 1"), None);
        let text = std::fs::read_to_string("/proc/loadavg").unwrap();
        // This thread is running while it reads it.
        assert!(runnable_tasks(&text).unwrap() >= 1, "{text}");
    }

    #[test]
    fn bytes_written_to_a_memfd_map_back_and_private_writes_stay_private() {
        static HOME: Spares = Spares::new();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let file = MemFile::write_in(&HOME, &data).unwrap();
        assert_eq!(
            memfd::fstat(file.fd()).unwrap().st_size as usize,
            header_len() + data.len()
        );
        let private = receive(&file, false);
        let shared = receive(&file, true);
        assert_eq!(file.readers(), 2);
        // SAFETY: nothing else writes these mappings during the test's reads.
        assert_eq!(unsafe { private.bytes() }, &data[..]);
        // SAFETY: index 7 is inside the private mapping, which nothing else accesses.
        unsafe { *private.as_ptr().add(7) = 0xAB };
        // SAFETY: read-only use while no writer runs.
        let seen = unsafe { shared.bytes() }[7];
        assert_eq!(seen, data[7], "a private write reached the file");
        // SAFETY: index 9 is inside the shared mapping; no other reference is live.
        unsafe { *shared.as_ptr().add(9) = 0xCD };
        let again = receive(&file, false);
        // SAFETY: read-only use while no writer runs.
        let seen = unsafe { again.bytes() }[9];
        assert_eq!(seen, 0xCD, "a shared write did not reach the file");
        drop((private, shared, again));
        assert_eq!(
            file.readers(),
            0,
            "every dropped mapping gives its count back"
        );
    }

    #[test]
    fn a_file_is_reused_only_once_no_receiver_maps_it() {
        static HOME: Spares = Spares::new();
        let a = vec![1u8; 200_000];
        let first = MemFile::write_in(&HOME, &a).unwrap();
        let first_ino = inode(first.fd());
        let held = receive(&first, true);
        drop(first);
        assert_eq!(HOME.len(), 1, "a dropped file is kept as a spare");
        let b = vec![2u8; 200_000];
        let second = MemFile::write_in(&HOME, &b).unwrap();
        assert_ne!(
            inode(second.fd()),
            first_ino,
            "a file a receiver still maps was reused"
        );
        // SAFETY: read-only use while no writer runs.
        let seen = unsafe { held.bytes() };
        assert_eq!(seen, &a[..], "a held buffer changed under its receiver");
        let second_ino = inode(second.fd());
        drop((held, second));
        let c = vec![3u8; 200_000];
        let third = MemFile::write_in(&HOME, &c).unwrap();
        assert!(
            [first_ino, second_ino].contains(&inode(third.fd())),
            "a free spare file was not reused"
        );
        assert_eq!(HOME.len(), 1);
        // SAFETY: read-only use while no writer runs.
        assert_eq!(unsafe { receive(&third, false).bytes() }, &c[..]);
    }

    #[test]
    fn a_shared_mapping_is_kept_for_the_files_next_buffer() {
        static HOME: Spares = Spares::new();
        let f = MemFile::write_in(&HOME, &vec![1u8; 300_000]).unwrap();
        let m = receive(&f, true);
        let at = m.as_ptr();
        drop(m);
        assert_eq!(f.readers(), 0, "a kept mapping must not count as a reader");
        drop(f);
        let g = MemFile::write_in(&HOME, &vec![2u8; 300_000]).unwrap(); // into the same file
        let m = receive(&g, true);
        assert_eq!(m.as_ptr(), at, "the kept mapping was not reused");
        // SAFETY: read-only use while no writer runs.
        let seen = unsafe { m.bytes() };
        assert!(
            seen.iter().all(|&b| b == 2),
            "a kept mapping shows stale bytes"
        );
    }

    #[test]
    fn a_private_mapping_none_of_whose_pages_was_written_is_kept_for_the_next_buffer() {
        static HOME: Spares = Spares::new();
        let len = 300_000;
        let f = MemFile::write_in(&HOME, &vec![1u8; len]).unwrap();
        let m = receive(&f, false);
        // SAFETY: read-only use while no writer runs (every page read, none written).
        assert!(unsafe { m.bytes() }.iter().all(|&b| b == 1));
        let at = m.as_ptr();
        drop(m);
        assert_eq!(f.readers(), 0, "a kept mapping must not count as a reader");
        drop(f);
        let g = MemFile::write_in(&HOME, &vec![2u8; len]).unwrap(); // into the same file
        let m = receive(&g, false);
        assert_eq!(m.as_ptr(), at, "the kept mapping was not reused");
        // SAFETY: read-only use while no writer runs.
        let seen = unsafe { m.bytes() };
        assert!(
            seen.iter().all(|&b| b == 2),
            "a kept private mapping shows stale bytes"
        );
        // Still private: a write stays in this mapping.
        // SAFETY: index 5 is inside the mapping; no other reference into it is live.
        unsafe { *m.as_ptr().add(5) = 9 };
        let file_view = receive(&g, true);
        // SAFETY: read-only use while no writer runs.
        let in_file = unsafe { file_view.bytes() }[5];
        assert_eq!(in_file, 2, "a private write reached the file");
    }

    #[test]
    fn a_private_mapping_with_a_written_page_is_never_reused() {
        static HOME: Spares = Spares::new();
        let len = 300_000;
        let f = MemFile::write_in(&HOME, &vec![1u8; len]).unwrap();
        let m = receive(&f, false);
        // SAFETY: the index is inside the private mapping, which nothing else accesses.
        unsafe { *m.as_ptr().add(3 * 4096 + 1) = 0xEE };
        drop(m);
        drop(f);
        let g = MemFile::write_in(&HOME, &vec![2u8; len]).unwrap(); // into the same file
        let m = receive(&g, false);
        // SAFETY: read-only use while no writer runs.
        let seen = unsafe { m.bytes() };
        assert!(
            seen.iter().all(|&b| b == 2),
            "a written page of an earlier private mapping came back"
        );
    }

    #[test]
    fn a_reused_file_takes_the_new_length() {
        static HOME: Spares = Spares::new();
        let ino = {
            let f = MemFile::write_in(&HOME, &vec![7u8; 300_000]).unwrap();
            inode(f.fd())
        };
        for len in [100_000usize, 500_000, 0, 4096] {
            let data: Vec<u8> = (0..len).map(|i| (i % 13) as u8).collect();
            let f = MemFile::write_in(&HOME, &data).unwrap();
            assert_eq!(
                inode(f.fd()),
                ino,
                "the only spare was not reused for {len} bytes"
            );
            let m = receive(&f, false);
            assert_eq!(m.len(), len);
            // SAFETY: read-only use while no writer runs.
            assert_eq!(unsafe { m.bytes() }, &data[..]);
        }
    }

    #[test]
    fn the_spare_list_stays_bounded_and_can_be_emptied() {
        static HOME: Spares = Spares::new();
        let files: Vec<MemFile> = (0..MAX_KEPT + 5)
            .map(|i| MemFile::write_in(&HOME, &[i as u8; 4096]).unwrap())
            .collect();
        drop(files);
        assert_eq!(HOME.len(), MAX_KEPT);
        assert_eq!(HOME.clear(), MAX_KEPT);
        assert!(HOME.is_empty());
    }

    #[test]
    fn the_cache_reuses_a_held_file_only_while_its_bytes_are_unchanged() {
        let cache = BufferCache::new();
        let mut data = vec![5u8; 100_000];
        let first = cache.get_or_write(&data).unwrap();
        assert!(
            Arc::ptr_eq(&first, &cache.get_or_write(&data).unwrap()),
            "same memory, same bytes: reused"
        );
        data[50_000] = 6;
        let changed = cache.get_or_write(&data).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &changed),
            "changed bytes must be written anew"
        );
        drop((first, changed));
        let fresh = cache.get_or_write(&data).unwrap();
        assert!(fresh.holds(&data));
        assert_eq!(
            cache.entries.get().lock().unwrap().len(),
            1,
            "dead entries are dropped"
        );
    }

    #[test]
    fn no_holder_can_shrink_a_file_and_a_receiver_checks_what_it_maps() {
        static HOME: Spares = Spares::new();
        let file = MemFile::write_in(&HOME, &[3u8; 100_000]).unwrap();
        let m = receive(&file, true);
        let err = memfd::resize(file.fd(), header_len()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        // A header that names more bytes than the file holds.
        let b = file.backing();
        b.len_word().store(1 << 40, Ordering::Release);
        let err = Mapping::new(file.fd(), false)
            .err()
            .expect("mapped past the end");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        b.len_word().store(100_000, Ordering::Release);
        drop(m);
        // A memory file without the seal.
        let plain = memfd::create(c"ferropool-test").unwrap();
        memfd::resize(plain.as_fd(), 2 * header_len()).unwrap();
        let err = Mapping::new(plain.as_fd(), true)
            .err()
            .expect("unsealed file mapped");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_shorter_buffer_reuses_a_file_without_shrinking_it() {
        static HOME: Spares = Spares::new();
        let ino = inode(MemFile::write_in(&HOME, &vec![7u8; 300_000]).unwrap().fd());
        let f = MemFile::write_in(&HOME, &vec![8u8; 10_000]).unwrap();
        assert_eq!(inode(f.fd()), ino);
        assert_eq!(
            memfd::fstat(f.fd()).unwrap().st_size as usize,
            header_len() + 300_000,
            "the file shrank"
        );
        let m = receive(&f, false);
        // SAFETY: read-only use while no writer runs.
        assert_eq!(unsafe { m.bytes() }, &vec![8u8; 10_000][..]);
    }

    #[test]
    fn idle_entries_are_trimmed_by_age_alone() {
        static HOME: Spares = Spares::new();
        drop(MemFile::write_in(&HOME, &[1u8; 4096]).unwrap());
        assert_eq!(HOME.trim(), 0, "a fresh spare was trimmed");
        let deadline = Instant::now() + 10 * MAX_KEPT_AGE;
        let mut trimmed = 0;
        while trimmed == 0 && Instant::now() < deadline {
            std::thread::sleep(MAX_KEPT_AGE / 8); // a time-based event: poll it, bounded
            trimmed = HOME.trim();
        }
        assert_eq!(trimmed, 1);
        assert_eq!(HOME.len(), 0);
    }

    #[test]
    fn a_forked_child_starts_with_empty_lists_even_if_one_was_locked() {
        use crate::shared::lock::tests::{fork_child, reap};
        static HOME: Spares = Spares::new();
        drop(MemFile::write_in(&HOME, &[1u8; 4096]).unwrap());
        assert_eq!(HOME.len(), 1);
        // Fork while the list's lock is held, as another thread may hold it at any fork.
        let guard = HOME.list.get().lock().unwrap();
        let child = fork_child(|| {
            if !HOME.is_empty() {
                return 1;
            }
            // Its own list works, and its files are its own.
            let f = MemFile::write_in(&HOME, &[2u8; 4096]).unwrap();
            drop(f);
            i32::from(HOME.len() != 1) * 2
        });
        drop(guard);
        assert_eq!(reap(child), 0);
        assert_eq!(HOME.len(), 1, "the child changed the parent's list");
    }

    #[test]
    fn an_empty_buffer_maps_to_nothing_and_still_counts() {
        static HOME: Spares = Spares::new();
        let file = MemFile::write_in(&HOME, &[]).unwrap();
        let m = receive(&file, true);
        assert!(m.is_empty());
        // SAFETY: empty mapping: returns an empty slice without touching memory.
        assert!(unsafe { m.bytes() }.is_empty());
        assert_eq!(file.readers(), 1);
        drop(m);
        assert_eq!(file.readers(), 0);
    }
}
