//! helixrt's Rust core: the hot paths of the package (task queue, L1 cache, topic routing,
//! circuit breaker, the tiered cache's value frame) as plain Rust, plus the thin PyO3 bindings
//! that expose them as `helixrt._core`. Python-facing code lives in the `bindings` modules; the
//! data structures know nothing of Python and are tested with `cargo test`.

pub mod bindings;
pub mod breaker;
pub mod bus;
pub mod cache;
pub mod clock;
pub mod codec;
pub mod errors;
pub mod pool;

/// The Python module `helixrt._core`.
#[pyo3::pymodule]
mod _core {
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    #[pymodule_export]
    use crate::bindings::breaker::{BreakerGuarded, BreakerPermit, CircuitBreaker};
    #[pymodule_export]
    use crate::bindings::bus::{
        _node_id, _reseed, topic_matches, trace_id_var, Event, EventBus, Subscription,
    };
    #[pymodule_export]
    use crate::bindings::cache::L1Cache;
    #[pymodule_export]
    use crate::bindings::pool::{FutureLock, WorkerPool};
    #[pymodule_export]
    use crate::bindings::tiered::{unframe, Ready, TieredCache};

    #[pymodule_init]
    fn init(module: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::bindings::tiered::install_send(module.py());
        module.add("__version__", env!("CARGO_PKG_VERSION"))
    }

    /// What this build of the Rust core is: its version, Cargo profile, compiler and PyO3.
    #[pyfunction]
    fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
        let info = PyDict::new(py);
        info.set_item("version", env!("CARGO_PKG_VERSION"))?;
        info.set_item("profile", env!("HELIXRT_PROFILE"))?;
        info.set_item("rustc", env!("HELIXRT_RUSTC_VERSION"))?;
        info.set_item("pyo3", env!("HELIXRT_PYO3_VERSION"))?;
        Ok(info)
    }

    /// Does nothing: `helixrt bench` measures the fixed cost of one call into the Rust core with it.
    #[pyfunction]
    fn noop() {}
}
