//! `helixrt._core.TieredCache`: the L1 hit path of `helixrt.TieredCache.get`, and `Ready`, the
//! finished awaitable it returns.
//!
//! An `async def get` costs a coroutine (a frame, an object, a send that ends in a return)
//! before it looks at L1: about three times the lookup itself. Here `get` reads L1 in Rust and
//! returns a `Ready` holding the value; `await` takes it through the `am_send` slot, so no
//! frame and no StopIteration. A miss returns the Python subclass's `_get_l2` coroutine.
//!
//! `unframe` reads the common frame of a value from Redis (`crate::codec`) for `helixrt.codec`.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyMemoryView, PySlice, PyTuple, PyType};

use super::cache::L1Cache;
use crate::codec;

/// An awaitable that has already finished with `value` (awaiting it again gives it again, as
/// with a done future). It passes for a coroutine (`send`, `throw`, `close`), so
/// `asyncio.create_task` and `asyncio.run` take it too.
#[pyclass(module = "helixrt._core", name = "Ready", frozen, freelist = 64)]
pub struct Ready {
    value: Py<PyAny>,
}

impl Ready {
    fn stop(&self, py: Python<'_>) -> PyErr {
        PyStopIteration::new_err((self.value.clone_ref(py),))
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Reached only when something iterates it by hand: `await` goes through `am_send`.
    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Err(self.stop(py))
    }

    /// Finishes at once, whatever is sent.
    fn send(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let _ = value;
        Err(self.stop(py))
    }

    /// Raises what is thrown in: there is no frame to catch it.
    #[pyo3(signature = (typ, value=None, traceback=None))]
    fn throw(
        &self,
        typ: &Bound<'_, PyAny>,
        value: Option<&Bound<'_, PyAny>>,
        traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let _ = traceback;
        let value = value.filter(|v| !v.is_none());
        if let Ok(typ) = typ.cast::<PyType>() {
            let exc = match value {
                Some(v) if v.is_instance(typ)? => v.clone(),
                Some(v) => typ.call1((v,))?,
                None => typ.call0()?,
            };
            return Err(PyErr::from_value(exc));
        }
        if value.is_some() {
            return Err(PyRuntimeError::new_err(
                "instance exception may not have a separate value",
            ));
        }
        Err(PyErr::from_value(typ.clone()))
    }

    /// Nothing to close: it has already finished.
    fn close(&self) {}

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("<Ready {}>", self.value.bind(py).repr()?))
    }
}

/// `await ready` asks `am_send` first: answering PYGEN_RETURN with the value skips the
/// StopIteration that `__next__` would have to raise.
unsafe extern "C" fn ready_send(
    slf: *mut pyo3::ffi::PyObject,
    _arg: *mut pyo3::ffi::PyObject,
    result: *mut *mut pyo3::ffi::PyObject,
) -> pyo3::ffi::PySendResult {
    // SAFETY: CPython calls the slot while attached, with `slf` an instance of the type the
    // slot was put on (`Ready`, which has no subclasses) and `result` a place for a new
    // reference.
    unsafe {
        let py = Python::assume_attached();
        let ready = Bound::<PyAny>::from_borrowed_ptr(py, slf);
        let ready = ready.cast_unchecked::<Ready>();
        *result = ready.get().value.clone_ref(py).into_ptr();
    }
    pyo3::ffi::PySendResult::PYGEN_RETURN
}

/// Gives `Ready` its `am_send` slot, which `#[pyclass]` has no way to declare. Called once, at
/// module init, before any `Ready` exists.
pub fn install_send(py: Python<'_>) {
    let ty = py.get_type::<Ready>();
    // SAFETY: `Ready`'s type is a heap type made by PyType_FromSpec, whose `tp_as_async`
    // points at the type object's own (writable) table; `__await__` made it non-null.
    unsafe {
        let tp = ty.as_type_ptr();
        let table = (*tp).tp_as_async;
        assert!(!table.is_null(), "Ready has an async table");
        (*table).am_send = Some(ready_send);
        pyo3::ffi::PyType_Modified(tp);
    }
}

/// The base of `helixrt.TieredCache`: `get` reads L1 here; the subclass gives the L1
/// (`_bind`) and the rest of the path (`_get_l2` after a miss, `_hit_event`).
#[pyclass(module = "helixrt._core", name = "TieredCache", subclass, frozen)]
pub struct TieredCache {
    l1: PyOnceLock<Py<L1Cache>>,
    /// Whether hits publish `cache.hit` events.
    hit_events: PyOnceLock<bool>,
    l1_hits: AtomicU64,
}

#[pymethods]
impl TieredCache {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyAny>>) -> Self {
        TieredCache {
            l1: PyOnceLock::new(),
            hit_events: PyOnceLock::new(),
            l1_hits: AtomicU64::new(0),
        }
    }

    /// Sets, once, the L1 that `get` reads and whether its hits call `_hit_event(key)`.
    fn _bind(&self, py: Python<'_>, l1: Bound<'_, L1Cache>, hit_events: bool) -> PyResult<()> {
        if self.l1.set(py, l1.unbind()).is_err() {
            return Err(PyRuntimeError::new_err("the cache's L1 is already bound"));
        }
        let _ = self.hit_events.set(py, hit_events);
        Ok(())
    }

    /// The value from L1, else from Redis (then kept in L1), else `default`. Awaitable.
    #[pyo3(signature = (key, default=None))]
    fn get(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        default: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let me = slf.get();
        let l1 = me
            .l1
            .get(py)
            .ok_or_else(|| PyRuntimeError::new_err("TieredCache.__init__ has not run"))?;
        // A key L1 cannot look up (unhashable) goes on like a miss: `_get_l2` refuses it.
        if let Ok(Some(value)) = l1.get().lookup(key) {
            me.l1_hits.fetch_add(1, Relaxed);
            if me.hit_events.get(py) == Some(&true) {
                slf.call_method1(intern!(py, "_hit_event"), (key,))?;
            }
            return Ok(Py::new(py, Ready { value })?.into_any());
        }
        slf.call_method1(intern!(py, "_get_l2"), (key, default))
            .map(Bound::unbind)
    }

    /// L1 hits, counted here for `get` and by the subclass for its other reads.
    #[getter]
    fn _l1_hits(&self) -> u64 {
        self.l1_hits.load(Relaxed)
    }

    #[setter(_l1_hits)]
    fn set_l1_hits(&self, hits: u64) {
        self.l1_hits.store(hits, Relaxed);
    }
}

/// The body of a value read from Redis and its expiry (seconds since the epoch, or None), when
/// `data` is an unsigned lz4 or uncompressed value of the serializer `serializer` (an id of
/// `helixrt.codec`); None for anything else, which `Codec.decode` then reads or refuses with its
/// reason. An lz4 body comes back decompressed, an uncompressed one as a view of `data`.
#[pyfunction]
pub fn unframe<'py>(
    data: &Bound<'py, PyBytes>,
    serializer: u8,
) -> PyResult<Option<(Bound<'py, PyAny>, Option<f64>)>> {
    let py = data.py();
    let bytes = data.as_bytes();
    let Some(frame) = codec::frame(bytes, serializer) else {
        return Ok(None);
    };
    let expires_at = frame.expires_at_ms.map(|ms| ms as f64 / 1000.0);
    let body = &bytes[frame.body_at..];
    if frame.compression == codec::NONE {
        let view = PyMemoryView::from(data.as_any())?;
        let body = view.get_item(PySlice::new(
            py,
            frame.body_at as isize,
            bytes.len() as isize,
            1,
        ))?;
        return Ok(Some((body, expires_at)));
    }
    let mut whole = false;
    let out = PyBytes::new_with(py, frame.length, |out| {
        whole = codec::lz4_into(body, out);
        Ok(())
    })?;
    Ok(whole.then(|| (out.into_any(), expires_at)))
}
