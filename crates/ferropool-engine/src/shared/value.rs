//! One number in shared memory with atomic load, store, add and compare-and-swap
//! (`multiprocessing.Value` without a lock).
//!
//! The number is one 64-bit cell. Integers narrower than 64 bits live in its low bits: `add` is a
//! 64-bit wrapping `fetch_add`, whose low bits are exactly the narrow type's wrapping sum, and
//! reads mask or sign-extend them, so the high bits never matter. Floats are stored as `f64`
//! bits and added with a compare-and-swap loop.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::segment::{Kind, Segment};

/// The type of the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// An integer of `bits` (8, 16, 32 or 64) bits, signed or not.
    Int { bits: u8, signed: bool },
    /// A float: single precision when `single` (values are rounded to `f32` when stored).
    Float { single: bool },
}

impl Type {
    fn encode(self) -> u32 {
        match self {
            Type::Int { bits, signed } => u32::from(bits) | if signed { 0x100 } else { 0 },
            Type::Float { single } => 0x1000 | u32::from(single),
        }
    }

    fn decode(code: u32) -> Option<Type> {
        match code {
            0x1000 | 0x1001 => Some(Type::Float {
                single: code == 0x1001,
            }),
            _ => {
                let bits = (code & 0xff) as u8;
                let known = matches!(bits, 8 | 16 | 32 | 64) && code & !0x1ff == 0;
                known.then_some(Type::Int {
                    bits,
                    signed: code & 0x100 != 0,
                })
            }
        }
    }

    /// The range of an integer type as `(min, max)`.
    pub fn int_range(self) -> Option<(i128, i128)> {
        match self {
            Type::Int { bits, signed: true } => {
                Some((-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1))
            }
            Type::Int {
                bits,
                signed: false,
            } => Some((0, (1i128 << bits) - 1)),
            Type::Float { .. } => None,
        }
    }
}

#[repr(C)]
struct State {
    cell: AtomicU64,
    ty: AtomicU32,
}

/// The error of storing an integer outside its type's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange;

/// A number in its own segment.
#[derive(Debug)]
pub struct Value {
    seg: Segment,
    ty: Type,
}

impl Value {
    /// Creates a number of type `ty` holding zero.
    pub fn create(ty: Type) -> std::io::Result<Value> {
        let v = Value {
            seg: Segment::create(
                c"ferropool-value",
                Kind::Value,
                std::mem::size_of::<State>(),
            )?,
            ty,
        };
        v.state().ty.store(ty.encode(), Ordering::Relaxed);
        Ok(v)
    }

    /// Maps an existing number's segment (see `Segment::open`).
    pub fn open(fd: std::os::fd::OwnedFd, id: u64) -> std::io::Result<Value> {
        let seg = Segment::open(fd, Kind::Value, id, std::mem::size_of::<State>())?;
        // SAFETY: a Kind::Value segment's payload is a `State` of atomics (checked by
        // `Segment::open`).
        let code = unsafe { seg.state::<State>() }.ty.load(Ordering::Relaxed);
        let ty = Type::decode(code).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "unknown value type")
        })?;
        Ok(Value { seg, ty })
    }

    fn state(&self) -> &State {
        // SAFETY: a Kind::Value segment's payload is a `State` of atomics (`open` checks its size).
        unsafe { self.seg.state::<State>() }
    }

    /// The number's type.
    pub fn ty(&self) -> Type {
        self.ty
    }

    /// Interprets raw cell bits as this integer type.
    fn int_of(&self, raw: u64) -> i128 {
        match self.ty {
            Type::Int {
                bits: 64,
                signed: true,
            } => i128::from(raw as i64),
            Type::Int {
                bits: 64,
                signed: false,
            } => i128::from(raw),
            Type::Int { bits, signed: true } => {
                i128::from(((raw << (64 - bits)) as i64) >> (64 - bits))
            }
            Type::Int {
                bits,
                signed: false,
            } => i128::from(raw & ((1u64 << bits) - 1)),
            Type::Float { .. } => f64::from_bits(raw) as i128,
        }
    }

    fn check(&self, n: i128) -> Result<u64, OutOfRange> {
        let (lo, hi) = self.ty.int_range().ok_or(OutOfRange)?;
        if n < lo || n > hi {
            return Err(OutOfRange);
        }
        Ok(n as u64)
    }

    fn round(&self, x: f64) -> f64 {
        match self.ty {
            Type::Float { single: true } => f64::from(x as f32),
            _ => x,
        }
    }

    /// Reads an integer number.
    pub fn load_int(&self) -> i128 {
        self.int_of(self.state().cell.load(Ordering::SeqCst))
    }

    /// Stores an integer; fails if it is outside the type's range.
    pub fn store_int(&self, n: i128) -> Result<(), OutOfRange> {
        self.state().cell.store(self.check(n)?, Ordering::SeqCst);
        Ok(())
    }

    /// Adds `delta` (wrapping around at the type's width, like C) and returns the new value.
    pub fn add_int(&self, delta: i128) -> i128 {
        let d = delta as u64; // two's complement: the low 64 bits are all a wrapping add needs
        self.int_of(
            self.state()
                .cell
                .fetch_add(d, Ordering::SeqCst)
                .wrapping_add(d),
        )
    }

    /// Stores `new` if the number equals `expected`; returns whether it did. Fails if `new` is
    /// outside the type's range.
    pub fn cas_int(&self, expected: i128, new: i128) -> Result<bool, OutOfRange> {
        let new = self.check(new)?;
        let cell = &self.state().cell;
        let mut raw = cell.load(Ordering::SeqCst);
        loop {
            if self.int_of(raw) != expected {
                return Ok(false);
            }
            match cell.compare_exchange_weak(raw, new, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Ok(true),
                Err(now) => raw = now,
            }
        }
    }

    /// Reads a float number.
    pub fn load_float(&self) -> f64 {
        f64::from_bits(self.state().cell.load(Ordering::SeqCst))
    }

    /// Stores a float (rounded to single precision for `Float { single: true }`).
    pub fn store_float(&self, x: f64) {
        self.state()
            .cell
            .store(self.round(x).to_bits(), Ordering::SeqCst);
    }

    /// Adds `delta` and returns the new value.
    pub fn add_float(&self, delta: f64) -> f64 {
        let cell = &self.state().cell;
        let mut raw = cell.load(Ordering::SeqCst);
        loop {
            let new = self.round(f64::from_bits(raw) + delta);
            match cell.compare_exchange_weak(raw, new.to_bits(), Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return new,
                Err(now) => raw = now,
            }
        }
    }

    /// Stores `new` if the number's bits equal those of `expected`; returns whether it did.
    pub fn cas_float(&self, expected: f64, new: f64) -> bool {
        let cell = &self.state().cell;
        let expected = self.round(expected).to_bits();
        cell.compare_exchange(
            expected,
            self.round(new).to_bits(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        )
        .is_ok()
    }

    /// The segment holding the number.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::lock::tests::{fork_child, reap};
    use crate::shared::segment::reopen;

    #[test]
    fn narrow_integers_wrap_and_check_range() {
        let v = Value::create(Type::Int {
            bits: 8,
            signed: true,
        })
        .unwrap();
        v.store_int(127).unwrap();
        assert_eq!(v.add_int(1), -128);
        assert_eq!(v.load_int(), -128);
        assert_eq!(v.store_int(128), Err(OutOfRange));
        assert_eq!(v.cas_int(-128, 5), Ok(true));
        assert_eq!(v.cas_int(-128, 6), Ok(false));
        assert_eq!(v.load_int(), 5);
        let u = Value::create(Type::Int {
            bits: 32,
            signed: false,
        })
        .unwrap();
        assert_eq!(u.add_int(-1), i128::from(u32::MAX));
        let w = Value::create(Type::Int {
            bits: 64,
            signed: false,
        })
        .unwrap();
        w.store_int(i128::from(u64::MAX)).unwrap();
        assert_eq!(w.load_int(), i128::from(u64::MAX));
    }

    #[test]
    fn floats() {
        let f = Value::create(Type::Float { single: false }).unwrap();
        assert_eq!(f.add_float(1.5), 1.5);
        assert!(f.cas_float(1.5, 2.25));
        assert!(!f.cas_float(1.5, 3.0));
        assert_eq!(f.load_float(), 2.25);
        let s = Value::create(Type::Float { single: true }).unwrap();
        s.store_float(0.1);
        assert_eq!(s.load_float(), f64::from(0.1f32));
    }

    #[test]
    fn processes_add_and_cas_exactly() {
        const N: i128 = 20_000;
        let v = Value::create(Type::Int {
            bits: 64,
            signed: true,
        })
        .unwrap();
        let other = Value::open(
            reopen(v.segment(), Kind::Value)
                .unwrap()
                .fd()
                .try_clone_to_owned()
                .unwrap(),
            v.segment().id(),
        )
        .unwrap();
        let work = |v: &Value| {
            for i in 0..N {
                if i % 2 == 0 {
                    v.add_int(1);
                } else {
                    loop {
                        let cur = v.load_int();
                        if v.cas_int(cur, cur + 1).unwrap() {
                            break;
                        }
                    }
                }
            }
            0
        };
        let children: Vec<_> = (0..2).map(|_| fork_child(|| work(&other))).collect();
        work(&v);
        for c in children {
            assert_eq!(reap(c), 0);
        }
        assert_eq!(v.load_int(), 3 * N);
    }
}
