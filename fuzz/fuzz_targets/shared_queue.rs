//! The shared queue's ring when another process has written anything at all into its
//! segment: arbitrary indices, counts, capacity, lock words and ring bytes, before it is opened
//! and between calls.
//!
//! Checked: `open`, `put`, `get` and their `try_` forms never panic and never touch memory
//! outside the segment (a wild read or write faults); an item that comes out is no longer than
//! the ring; and while nobody has meddled (a clean start and no pokes), the queue is a FIFO of
//! the items put, refusing exactly those that do not fit.

#![no_main]

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::time::Duration;

use arbitrary::Arbitrary;
use ferropool_engine::shared::queue::{Queue, QueueError};
use ferropool_engine::shared::{Kind, Segment};
use libfuzzer_sys::fuzz_target;

/// Bytes of the queue's state before its ring: three cache lines (producers, consumers,
/// config; see `shared/queue.rs`).
const RING: usize = 192;
/// Offsets of the state's fields in the payload (`Field::Word` reaches any other).
const PUT_LOCK: usize = 0;
const HEAD: usize = 16;
const GET_LOCK: usize = 64;
const TAIL: usize = 80;
const CAPACITY: usize = 128;
const MAXSIZE: usize = 136;
const ITEMS: usize = 140;
/// Length of a record's length prefix.
const LEN: usize = 4;

#[derive(Arbitrary, Debug)]
enum Field {
    PutLock(u32),
    Head(u64),
    GetLock(u32),
    Tail(u64),
    Capacity(u64),
    Maxsize(u32),
    Items(u32),
    /// Writes `value` at ring byte `at % ring`.
    Ring {
        at: u16,
        value: u8,
    },
    /// Writes `value` into the state's 8-byte word `at % 24`, whatever the layout puts there.
    Word {
        at: u8,
        value: u64,
    },
}

#[derive(Arbitrary, Debug)]
enum Op {
    Get,
    TryGet,
    Put(Vec<u8>),
    TryPut(Vec<u8>),
    /// Another process writes a field of the state.
    Poke(Field),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bytes of ring in the segment: `ring % 4096`.
    ring: u16,
    maxsize: u32,
    /// Fields written before the queue is opened; none means a clean, empty queue.
    meddle: Vec<Field>,
    ops: Vec<Op>,
}

fn poke(seg: &Segment, ring: usize, field: &Field) {
    let (at, bytes): (usize, Vec<u8>) = match *field {
        Field::PutLock(v) => (PUT_LOCK, v.to_le_bytes().to_vec()),
        Field::Head(v) => (HEAD, v.to_le_bytes().to_vec()),
        Field::GetLock(v) => (GET_LOCK, v.to_le_bytes().to_vec()),
        Field::Tail(v) => (TAIL, v.to_le_bytes().to_vec()),
        Field::Capacity(v) => (CAPACITY, v.to_le_bytes().to_vec()),
        Field::Maxsize(v) => (MAXSIZE, v.to_le_bytes().to_vec()),
        Field::Items(v) => (ITEMS, v.to_le_bytes().to_vec()),
        Field::Ring { at, value } if ring > 0 => (RING + at as usize % ring, vec![value]),
        Field::Ring { .. } => return,
        Field::Word { at, value } => (at as usize % (RING / 8) * 8, value.to_le_bytes().to_vec()),
    };
    assert!(at + bytes.len() <= seg.payload_len());
    // SAFETY: the range lies inside the segment's payload (checked above); the write stands for
    // another process's, which the queue must survive: it reads these words only atomically or
    // copies ring bytes, so a racing plain write is no worse than that process's would be (and
    // nothing runs concurrently here).
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), seg.payload().add(at), bytes.len()) };
}

fuzz_target!(|input: Input| {
    let ring = input.ring as usize % 4096;
    let seg = Segment::create(c"ferropool-fuzz-queue", Kind::Queue, RING + ring).unwrap();
    // A queue as `Queue::create` would leave it (zeroed, then the config), then meddled with.
    poke(&seg, ring, &Field::Capacity(ring as u64));
    poke(&seg, ring, &Field::Maxsize(input.maxsize));
    for f in &input.meddle {
        poke(&seg, ring, f);
    }
    let fd = seg.fd().try_clone_to_owned().unwrap();
    let Ok(q) = Queue::open(fd, seg.id()) else {
        return;
    };
    let cap = q.capacity();
    assert!(
        cap as usize <= ring,
        "open accepted a capacity beyond the segment"
    );
    // The model: exact while nobody has meddled.
    let mut clean = input.meddle.is_empty();
    let mut model: VecDeque<Vec<u8>> = VecDeque::new();
    let mut used = 0usize;
    let mut out = Vec::new();
    for op in input.ops {
        match op {
            Op::Get | Op::TryGet => {
                let got = if matches!(op, Op::Get) {
                    q.get(&mut out, Some(Duration::ZERO))
                } else {
                    q.try_get(&mut out)
                };
                match got {
                    Ok(()) => {
                        assert!(out.len() + LEN <= ring, "an item longer than the ring");
                        if clean {
                            let want = model.pop_front().expect("an item from an empty queue");
                            assert_eq!(out, want, "items out of order");
                            used -= LEN + want.len();
                        }
                    }
                    Err(QueueError::TimedOut) => {
                        assert!(!clean || model.is_empty(), "an item was not returned")
                    }
                    Err(QueueError::Corrupt) => assert!(!clean, "a clean queue reads corrupt"),
                    Err(QueueError::TooLarge) => panic!("get never says TooLarge"),
                }
            }
            Op::Put(_) | Op::TryPut(_) => {
                let (item, try_) = match op {
                    Op::Put(item) => (item, false),
                    Op::TryPut(item) => (item, true),
                    _ => unreachable!(),
                };
                let got = if try_ {
                    q.try_put(&item)
                } else {
                    q.put(&item, Some(Duration::ZERO))
                };
                if clean {
                    let max = input.maxsize as usize;
                    let fits = used + LEN + item.len() <= ring && (max == 0 || model.len() < max);
                    match got {
                        Ok(()) => {
                            assert!(fits, "an item that does not fit was put");
                            used += LEN + item.len();
                            model.push_back(item);
                        }
                        Err(QueueError::TooLarge) => assert!(LEN + item.len() > ring),
                        Err(QueueError::TimedOut) => assert!(!fits, "a fitting item was refused"),
                        Err(QueueError::Corrupt) => panic!("a clean queue reads corrupt"),
                    }
                }
            }
            Op::Poke(f) => {
                poke(&seg, ring, &f);
                clean = false;
            }
        }
        if clean {
            assert_eq!(q.capacity(), cap, "capacity changed");
            assert_eq!(q.len(), model.len(), "item count");
        }
        let _ = (q.len(), q.is_empty(), q.is_full(), q.maxsize());
        let _ = q.segment().fd().as_fd();
    }
});
