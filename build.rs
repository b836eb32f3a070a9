//! Gives this crate the `cfg`s PyO3 builds with (`Py_GIL_DISABLED` on a free-threaded
//! interpreter, `Py_LIMITED_API` for abi3, `Py_3_*`), from the interpreter or `PYO3_CONFIG_FILE`
//! that PyO3 itself resolved.
//!
//! With `FERROPOOL_REQUIRE_FREE_THREADED` set (as `make check-freethreaded` does) the build fails
//! unless that configuration is free-threaded, so the check cannot quietly compile the GIL build.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    println!("cargo:rerun-if-env-changed=FERROPOOL_REQUIRE_FREE_THREADED");
    if std::env::var_os("FERROPOOL_REQUIRE_FREE_THREADED").is_some() {
        let config = pyo3_build_config::get();
        assert!(
            config.is_free_threaded(),
            "FERROPOOL_REQUIRE_FREE_THREADED is set but PyO3 resolved a GIL-enabled \
             configuration (is PYO3_CONFIG_FILE set to a free-threaded config file?)"
        );
    }
}
