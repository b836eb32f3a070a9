//! A queue's spill file when the ring entry that names a range was written by someone else:
//! `take` with arbitrary offsets and lengths, beside the ranges `write` returned, in a file
//! whose shared counter may also hold anything.
//!
//! Checked: `take` either fails or maps a range every byte of which can be read (a range past
//! the end of the file would fault on first touch); a range `write` returned, taken once with
//! what `write` said of it, reads back what was written.

#![no_main]

use std::os::fd::AsFd;
use std::sync::Arc;

use arbitrary::Arbitrary;
use ferropool_engine::memfd;
use ferropool_engine::shared::spill::{Spill, SpillRange, Written};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Take {
    /// The range of buffer `index`, with its length.
    Written { index: u8 },
    /// Any offset, any length (`% 16 MiB`), any tag.
    Any { offset: u64, len: u32, tag: u64 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Buffers written first: `len % 64 KiB` copies of the byte (none at all, too).
    buffers: Vec<(u16, u8)>,
    /// Another process's value of the file's next-offset counter, written after the buffers.
    next: Option<u64>,
    takes: Vec<Take>,
}

fn read_all(r: &SpillRange) -> u64 {
    // SAFETY: `take` mapped `len()` bytes at `as_ptr()` (nothing when empty) and nothing writes
    // them meanwhile; reading each one is what a consumer of the buffer does.
    let bytes = unsafe { std::slice::from_raw_parts(r.as_ptr(), r.len()) };
    bytes.iter().map(|&b| u64::from(b)).sum()
}

fuzz_target!(|input: Input| {
    let spill = Arc::new(Spill::create().expect("a spill file"));
    let mut written = Vec::new();
    for (len, byte) in input.buffers.iter().take(64) {
        // Empty ones too: a range that ends with its tag page must be taken like any other.
        let data = vec![*byte; *len as usize % (64 << 10)];
        let w = spill.write(&data).expect("room for a small buffer");
        written.push((w.offset, w.tag, data));
    }
    if let Some(next) = input.next {
        memfd::write_at(spill.fd().as_fd(), &next.to_le_bytes(), 0).unwrap();
    }
    // Every range stays mapped until the end: a dropped one frees its pages, which would
    // change what a later take of the same bytes reads.
    let mut held = Vec::new();
    let mut taken = std::collections::HashSet::new();
    for take in input.takes.into_iter().take(64) {
        match take {
            Take::Written { index } => {
                let index = index as usize % written.len().max(1);
                let Some((offset, tag, data)) = written.get(index) else {
                    continue;
                };
                let w = Written {
                    offset: *offset,
                    len: data.len(),
                    tag: *tag,
                };
                let first = taken.insert(index);
                match spill.take(w) {
                    Ok(r) => {
                        assert_eq!(r.len(), data.len());
                        // SAFETY: as in `read_all`.
                        let got = unsafe { std::slice::from_raw_parts(r.as_ptr(), r.len()) };
                        assert!(got == data.as_slice(), "a written range reads back changed");
                        held.push(r);
                    }
                    // Only a range taken already, or a counter overwritten below it, is refused.
                    Err(e) => assert!(
                        !first || input.next.is_some(),
                        "a written range refused: {e}"
                    ),
                }
            }
            Take::Any { offset, len, tag } => {
                let w = Written {
                    offset,
                    len: len as usize % (16 << 20),
                    tag,
                };
                if let Ok(r) = spill.take(w) {
                    read_all(&r);
                    held.push(r);
                }
            }
        }
    }
});
