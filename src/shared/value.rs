//! `SharedValue`, one number in shared memory with atomic add and compare-and-swap, and
//! `SharedMemory`, the raw bytes behind `ferropool.shared.Array` (which maps them with `mmap` so
//! that numpy sees a buffer that keeps the mapping alive).

use std::os::fd::AsRawFd;

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;

use ferropool_engine::shared::segment::{Kind, Segment, PAYLOAD};
use ferropool_engine::shared::value::{Type, Value};

use super::adopt;
use crate::errors::{creating, io_error};

/// The `array`/`ctypes` type codes a `SharedValue` accepts (`l` and `L` are 64-bit on Linux).
fn type_of(code: &str) -> PyResult<Type> {
    let int = |bits, signed| Type::Int { bits, signed };
    Ok(match code {
        "b" => int(8, true),
        "B" => int(8, false),
        "h" => int(16, true),
        "H" => int(16, false),
        "i" => int(32, true),
        "I" => int(32, false),
        "l" | "q" => int(64, true),
        "L" | "Q" => int(64, false),
        "f" => Type::Float { single: true },
        "d" => Type::Float { single: false },
        _ => {
            return Err(PyValueError::new_err(format!(
                "unsupported typecode {code:?}: use one of b B h H i I l L q Q f d"
            )))
        }
    })
}

fn code_of(ty: Type) -> &'static str {
    match ty {
        Type::Int { bits: 8, signed } => {
            if signed {
                "b"
            } else {
                "B"
            }
        }
        Type::Int { bits: 16, signed } => {
            if signed {
                "h"
            } else {
                "H"
            }
        }
        Type::Int { bits: 32, signed } => {
            if signed {
                "i"
            } else {
                "I"
            }
        }
        Type::Int { signed, .. } => {
            if signed {
                "q"
            } else {
                "Q"
            }
        }
        Type::Float { single } => {
            if single {
                "f"
            } else {
                "d"
            }
        }
    }
}

fn out_of_range(ty: Type) -> PyErr {
    let (lo, hi) = ty.int_range().unwrap_or((0, 0));
    PyOverflowError::new_err(format!(
        "value out of range for typecode {:?} ({lo}..={hi})",
        code_of(ty)
    ))
}

/// A number in shared memory; see `ferropool.shared.Value`.
#[pyclass(subclass, frozen, weakref, module = "ferropool._core")]
pub struct SharedValue {
    value: Value,
}

impl SharedValue {
    fn is_float(&self) -> bool {
        matches!(self.value.ty(), Type::Float { .. })
    }

    fn int(&self, n: &Bound<'_, PyAny>) -> PyResult<i128> {
        n.extract::<i128>()
            .map_err(|_| out_of_range(self.value.ty()))
    }
}

#[pymethods]
impl SharedValue {
    #[new]
    #[pyo3(signature = (typecode, value=None, *, _attach=None))]
    fn new(
        typecode: &str,
        value: Option<&Bound<'_, PyAny>>,
        _attach: Option<(i32, u64)>,
    ) -> PyResult<Self> {
        if let Some(a) = _attach {
            let (fd, id) = adopt(a)?;
            return Ok(SharedValue {
                value: Value::open(fd, id).map_err(io_error)?,
            });
        }
        let v = SharedValue {
            value: Value::create(type_of(typecode)?).map_err(creating("Value"))?,
        };
        if let Some(value) = value {
            v.set_value(value)?;
        }
        Ok(v)
    }

    #[getter]
    fn value<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.is_float() {
            self.value
                .load_float()
                .into_pyobject(py)
                .map(Bound::into_any)
                .map_err(Into::into)
        } else {
            self.value
                .load_int()
                .into_pyobject(py)
                .map(Bound::into_any)
                .map_err(Into::into)
        }
    }

    #[setter]
    fn set_value(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.is_float() {
            self.value.store_float(value.extract()?);
            Ok(())
        } else {
            let n = self.int(value)?;
            self.value
                .store_int(n)
                .map_err(|_| out_of_range(self.value.ty()))
        }
    }

    #[pyo3(signature = (n=None))]
    fn add<'py>(
        &self,
        py: Python<'py>,
        n: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if self.is_float() {
            let delta = n.map_or(Ok(1.0), |n| n.extract::<f64>())?;
            self.value
                .add_float(delta)
                .into_pyobject(py)
                .map(Bound::into_any)
                .map_err(Into::into)
        } else {
            let delta = n.map_or(Ok(1), |n| self.int(n))?;
            self.value
                .add_int(delta)
                .into_pyobject(py)
                .map(Bound::into_any)
                .map_err(Into::into)
        }
    }

    fn compare_and_swap(
        &self,
        expected: &Bound<'_, PyAny>,
        new: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if self.is_float() {
            return Ok(self.value.cas_float(expected.extract()?, new.extract()?));
        }
        let Ok(expected) = expected.extract::<i128>() else {
            return Ok(false);
        };
        let new = self.int(new)?;
        self.value
            .cas_int(expected, new)
            .map_err(|_| out_of_range(self.value.ty()))
    }

    #[getter]
    fn typecode(&self) -> &'static str {
        code_of(self.value.ty())
    }

    #[getter(_fd)]
    fn fd(&self) -> i32 {
        self.value.segment().fd().as_raw_fd()
    }

    #[getter(_id)]
    fn id(&self) -> u64 {
        self.value.segment().id()
    }
}

/// Raw shared bytes; see `ferropool.shared.Array`.
#[pyclass(frozen, weakref, module = "ferropool._core")]
pub struct SharedMemory {
    seg: Segment,
}

#[pymethods]
impl SharedMemory {
    #[new]
    #[pyo3(signature = (size, *, _attach=None))]
    fn new(size: usize, _attach: Option<(i32, u64)>) -> PyResult<Self> {
        let seg = match _attach {
            Some(a) => adopt(a)
                .and_then(|(fd, id)| Segment::open(fd, Kind::Array, id, 0).map_err(io_error))?,
            None => {
                Segment::create(c"ferropool-array", Kind::Array, size).map_err(creating("Array"))?
            }
        };
        Ok(SharedMemory { seg })
    }

    #[getter]
    fn size(&self) -> usize {
        self.seg.payload_len()
    }

    #[getter]
    fn offset(&self) -> usize {
        PAYLOAD
    }

    #[getter(_fd)]
    fn fd(&self) -> i32 {
        self.seg.fd().as_raw_fd()
    }

    #[getter(_id)]
    fn id(&self) -> u64 {
        self.seg.id()
    }
}
