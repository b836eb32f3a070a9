//! The atomics, locks and threads of the model-checked protocols: the standard library's, or
//! loom's in the model-checking build (`RUSTFLAGS="--cfg loom"` with `cargo test --lib`; see
//! docs/development.md, "Model checking"), so that loom explores every interleaving of the
//! code that uses them.
//!
//! Only test builds switch: loom is a dev-dependency, and its types work only inside a model,
//! so the library itself (and everything linked against it) stays on the standard library.

#[cfg(not(all(loom, test)))]
pub(crate) use std::sync::atomic::AtomicBool;

#[cfg(all(loom, test))]
pub(crate) use loom::sync::atomic::AtomicBool;
