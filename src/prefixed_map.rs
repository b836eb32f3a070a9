//! `PrefixedMap(values, func, iterable)`: the iterator `Pool(strategy="auto").map` returns when
//! it runs a function serially. It yields `values` (the results of the calls the probe already
//! made), then `func(item)` for each remaining item of `iterable`, each computed when the
//! consumer asks for it: what `itertools.chain(values, map(func, iterable))` yields.
//!
//! Why a type of its own: for calls as small as `x + 1` (~40 ns) the chain's step per item costs
//! 4-10% (benchmarks/bench_auto.py, `tiny`), which is most of what auto lost against a plain
//! `map`. This iterator does `map`'s work in the same slot `map` uses (`tp_iternext`, called by
//! `list()` and `for` directly, with no wrapper between: a PyO3 `__next__` adds a trampoline of
//! about the same cost as the chain) and calls `func` with vectorcall, as `map` does.
//!
//! It is a heap type built from a `PyType_Spec` by hand: its instances hold three references,
//! so it takes part in garbage collection (traverse, clear) like any container.

use std::ffi::{c_int, c_void};
use std::ptr;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::critical_section::with_critical_section;

/// The instance layout: the object header, then the fields (all owned references or null).
#[repr(C)]
struct Raw {
    ob_base: ffi::PyObject,
    /// The list of results still to yield first; null once they are all yielded.
    head: *mut ffi::PyObject,
    /// Index of the next result in `head`.
    next_head: ffi::Py_ssize_t,
    func: *mut ffi::PyObject,
    /// An iterator over the remaining arguments.
    source: *mut ffi::PyObject,
    /// `source`'s `tp_iternext`, looked up once.
    source_next: Option<ffi::iternextfunc>,
}

type VectorcallFunc = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    usize,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

// Both are exported by CPython 3.11 (declared in its cpython/abstract.h) and part of the stable
// ABI from 3.12; pyo3-ffi declares them only for 3.12 when building abi3. This module requires
// 3.11 or later (abi3-py311; free-threaded builds are 3.14 or later), so the symbols are always
// there to bind at import. Neither reads more of `callable` than its type's slots.
extern "C" {
    /// The callable's vectorcall function, if it has one (its type sets the flag).
    fn PyVectorcall_Function(callable: *mut ffi::PyObject) -> Option<VectorcallFunc>;
    fn PyObject_Vectorcall(
        callable: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargsf: usize,
        kwnames: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;
}

/// Lets the callee use `args[-1]` as scratch space (we pass a slot before the argument), which
/// saves bound methods a copy of the arguments.
const ARGUMENTS_OFFSET: usize = 1 << (usize::BITS - 1);

/// Takes the next of the prefixed values: a new reference, or null once they are all yielded
/// (no exception set).
///
/// Without a GIL several threads may call `next` on one instance at once (the GIL build never
/// runs two at once), so `head` and `next_head` are read and written only inside a critical
/// section on the instance, which serialises them on the free-threaded build and costs nothing
/// on the GIL build. Nothing inside it can suspend it (no call that may run Python code or take
/// another lock): each caller claims an index and takes its own reference to the list there,
/// and reads the item outside, so a list dropped by a thread that found it exhausted is never
/// read by another. Concurrent callers each get a different item, as with a list iterator.
unsafe fn next_value(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    let this = slf.cast::<Raw>();
    // SAFETY: `slf` is a live instance (the caller holds it) and the thread is attached.
    let obj = unsafe { Borrowed::from_ptr(Python::assume_attached(), slf) };
    let claimed = with_critical_section(&obj, || {
        // SAFETY: fields of a live instance, only touched under this critical section (or by
        // tp_clear and dealloc, which run when no thread can be here: no reference remains, or
        // the collector found the object unreachable). Py_INCREF cannot run code or block.
        unsafe {
            let head = (*this).head;
            if head.is_null() {
                return None;
            }
            ffi::Py_INCREF(head);
            let index = (*this).next_head;
            (*this).next_head = index + 1;
            Some((head, index))
        }
    });
    let Some((head, index)) = claimed else {
        return ptr::null_mut();
    };
    // SAFETY: `head` is a list (checked by tp_new) that we hold a reference to. The compat
    // PyList_GetItemRef is CPython's (safe against another thread resizing the list) when built
    // for 3.13 or later, as every free-threaded build is; the abi3-py311 build, for GIL
    // interpreters only, gets GetItem plus an incref, and its GIL rules the resize out.
    unsafe {
        if index < ffi::PyList_Size(head) {
            let value = ffi::compat::PyList_GetItemRef(head, index);
            if !value.is_null() {
                ffi::Py_DECREF(head);
                return value;
            }
            // The list shrank after the size check (only another thread can do that): its
            // end has been reached.
            ffi::PyErr_Clear();
        }
        // Exhausted: whichever caller comes first drops the instance's reference. The drops
        // happen outside the critical section, since a list's destructor can run any code.
        let owned = with_critical_section(&obj, || {
            let mine = (*this).head == head;
            if mine {
                (*this).head = ptr::null_mut();
            }
            mine
        });
        if owned {
            ffi::Py_DECREF(head);
        }
        ffi::Py_DECREF(head);
    }
    ptr::null_mut()
}

unsafe extern "C" fn next(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    let this = slf.cast::<Raw>();
    // SAFETY: CPython calls tp_iternext on an attached thread with `slf` a live instance of
    // this type, so `slf` points to a `Raw` whose fields are null or owned references (tp_new
    // set them; clear only nulls them). `func`, `source` and `source_next` are written only by
    // tp_new and tp_clear and stay alive during the call: the caller holds `slf`, which owns
    // them, and tp_clear never runs on an object someone still references. Calling `source`'s
    // tp_iternext from several threads at once is as safe as that iterator is, as for `map`.
    unsafe {
        let value = next_value(slf);
        if !value.is_null() {
            return value;
        }
        let source = (*this).source;
        if source.is_null() {
            return ptr::null_mut();
        }
        // Null: the arguments are exhausted or their iterator raised (an exception is set,
        // StopIteration included, which our callers clear as they do for any iterator).
        let Some(source_next) = (*this).source_next else {
            return ptr::null_mut();
        };
        let arg = source_next(source);
        if arg.is_null() {
            return ptr::null_mut();
        }
        let args = [ptr::null_mut(), arg];
        let func = (*this).func;
        let result = match PyVectorcall_Function(func) {
            Some(call) => call(
                func,
                args.as_ptr().add(1),
                1 | ARGUMENTS_OFFSET,
                ptr::null_mut(),
            ),
            None => PyObject_Vectorcall(
                func,
                args.as_ptr().add(1),
                1 | ARGUMENTS_OFFSET,
                ptr::null_mut(),
            ),
        };
        ffi::Py_DECREF(arg);
        if result.is_null() && ffi::PyErr_Occurred().is_null() {
            // A broken C callable returned no result and no error: without this the consumer
            // would take it for the end of the items (CPython's own calls raise the same).
            let py = Python::assume_attached();
            pyo3::exceptions::PySystemError::new_err(
                "PrefixedMap: func returned NULL without setting an exception",
            )
            .restore(py);
        }
        result
    }
}

unsafe extern "C" fn traverse(
    slf: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut c_void,
) -> c_int {
    let this = slf.cast::<Raw>();
    // SAFETY: called by the garbage collector on a live instance, with the GIL held or, on the
    // free-threaded build, with every other thread stopped; each field is null (skipped) or an
    // owned reference, which is what `visit` expects.
    unsafe {
        for field in [(*this).head, (*this).func, (*this).source] {
            if !field.is_null() {
                let rc = visit(field, arg);
                if rc != 0 {
                    return rc;
                }
            }
        }
    }
    0
}

unsafe extern "C" fn clear(slf: *mut ffi::PyObject) -> c_int {
    let this = slf.cast::<Raw>();
    // SAFETY: a live instance that no thread is iterating: tp_clear runs on objects the
    // collector found unreachable, and from dealloc once no reference is left. Each field is
    // nulled before its reference is dropped, so a destructor that runs during the drop and
    // reaches this object sees null, not a dangling pointer.
    unsafe {
        for field in [
            &raw mut (*this).head,
            &raw mut (*this).func,
            &raw mut (*this).source,
        ] {
            let old = *field;
            *field = ptr::null_mut();
            ffi::Py_XDECREF(old);
        }
    }
    0
}

unsafe extern "C" fn dealloc(slf: *mut ffi::PyObject) {
    // SAFETY: called once, when the last reference goes (so no other thread can reach the
    // object, with or without a GIL). Untracking first
    // keeps the collector from visiting a half-destroyed object; the instance was allocated by
    // PyType_GenericAlloc for a GC type, so PyObject_GC_Del frees it; a heap type's instance
    // owns a reference to its type, dropped last.
    unsafe {
        ffi::PyObject_GC_UnTrack(slf.cast());
        clear(slf);
        let tp = ffi::Py_TYPE(slf);
        ffi::PyObject_GC_Del(slf.cast());
        ffi::Py_DECREF(tp.cast());
    }
}

unsafe extern "C" fn new(
    tp: *mut ffi::PyTypeObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls tp_new on an attached thread, `args` a tuple and `kwargs` null or a
    // dict. Borrowed items of `args` are used only while `args` lives (this call; a tuple never
    // changes); the instance is zeroed by PyType_GenericAlloc and no other thread can see it
    // before we return it, and every field gets an owned reference before anything else can
    // run (no Python code runs between the allocation and the stores).
    // PyType_GetSlot(Py_tp_iternext) returns the iterator type's `iternextfunc` or null, which
    // is what `Option<iternextfunc>` is in memory. Caching it is sound even if the iterator's
    // class is later reassigned: only heap types allow that, and theirs is the generic slot
    // that looks `__next__` up on each call (raising if it is gone).
    unsafe {
        let py = Python::assume_attached();
        if (!kwargs.is_null() && ffi::PyDict_Size(kwargs) != 0) || ffi::PyTuple_Size(args) != 3 {
            pyo3::exceptions::PyTypeError::new_err(
                "PrefixedMap(values, func, iterable) takes exactly 3 positional arguments",
            )
            .restore(py);
            return ptr::null_mut();
        }
        let values = ffi::PyTuple_GetItem(args, 0);
        let func = ffi::PyTuple_GetItem(args, 1);
        let iterable = ffi::PyTuple_GetItem(args, 2);
        if ffi::PyList_Check(values) == 0 {
            pyo3::exceptions::PyTypeError::new_err("PrefixedMap: values must be a list")
                .restore(py);
            return ptr::null_mut();
        }
        if ffi::PyCallable_Check(func) == 0 {
            pyo3::exceptions::PyTypeError::new_err("PrefixedMap: func must be callable")
                .restore(py);
            return ptr::null_mut();
        }
        let source = ffi::PyObject_GetIter(iterable);
        if source.is_null() {
            return ptr::null_mut();
        }
        let slf = ffi::PyType_GenericAlloc(tp, 0);
        if slf.is_null() {
            ffi::Py_DECREF(source);
            return ptr::null_mut();
        }
        let this = slf.cast::<Raw>();
        ffi::Py_INCREF(values);
        ffi::Py_INCREF(func);
        (*this).head = values;
        (*this).next_head = 0;
        (*this).func = func;
        (*this).source = source;
        (*this).source_next = std::mem::transmute::<*mut c_void, Option<ffi::iternextfunc>>(
            ffi::PyType_GetSlot(ffi::Py_TYPE(source), ffi::Py_tp_iternext),
        );
        slf
    }
}

const DOC: &std::ffi::CStr = c"PrefixedMap(values, func, iterable, /)\n--\n\n\
Yields the items of the list `values`, then func(item) for each item of `iterable`, lazily: \
what itertools.chain(values, map(func, iterable)) yields, without the chain's step per item.";

/// Builds the type and adds it to the module as `PrefixedMap`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let slots: &'static mut [ffi::PyType_Slot] = Box::leak(Box::new([
        ffi::PyType_Slot {
            slot: ffi::Py_tp_new,
            pfunc: new as *mut c_void,
        },
        ffi::PyType_Slot {
            slot: ffi::Py_tp_dealloc,
            pfunc: dealloc as *mut c_void,
        },
        ffi::PyType_Slot {
            slot: ffi::Py_tp_traverse,
            pfunc: traverse as *mut c_void,
        },
        ffi::PyType_Slot {
            slot: ffi::Py_tp_clear,
            pfunc: clear as *mut c_void,
        },
        ffi::PyType_Slot {
            slot: ffi::Py_tp_iter,
            pfunc: ffi::PyObject_SelfIter as *mut c_void,
        },
        ffi::PyType_Slot {
            slot: ffi::Py_tp_iternext,
            pfunc: next as *mut c_void,
        },
        ffi::PyType_Slot {
            slot: ffi::Py_tp_doc,
            pfunc: DOC.as_ptr() as *mut c_void,
        },
        ffi::PyType_Slot {
            slot: 0,
            pfunc: ptr::null_mut(),
        },
    ]));
    let spec: &'static mut ffi::PyType_Spec = Box::leak(Box::new(ffi::PyType_Spec {
        name: c"ferropool._core.PrefixedMap".as_ptr(),
        basicsize: std::mem::size_of::<Raw>() as c_int,
        itemsize: 0,
        flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_HAVE_GC) as _,
        slots: slots.as_mut_ptr(),
    }));
    // SAFETY: the spec, its slots and its name are 'static (leaked once per import; CPython
    // keeps pointers to the name and doc); each slot function has the signature its slot id
    // requires. The result is a new reference or null with an exception set.
    let tp = unsafe { Bound::from_owned_ptr_or_err(m.py(), ffi::PyType_FromSpec(spec)) }?;
    m.add("PrefixedMap", tp)
}
