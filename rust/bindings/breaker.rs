//! `helixrt._core.CircuitBreaker`: the Python face of `crate::breaker::Breaker`.
//!
//! `call(fn, *args, **kwargs)` does the whole round in Rust: ask for a permit, call, classify
//! the outcome, report it. The Python subclass builds the context managers, the decorator and
//! the listeners on `_acquire` and `_record`. State changes are announced through `on_change`
//! after the breaker's state is released, so a listener may use the breaker.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::bindings::exclusive::Exclusive;
use crate::breaker::{Breaker, Config, Outcome, Permit, State, Transition};
use crate::clock::{ticks_from_secs, Clock, Tick};
use crate::errors::{helix_error, Error};

#[pyclass(module = "helixrt._core", name = "CircuitBreaker", subclass, frozen)]
pub struct CircuitBreaker {
    inner: Exclusive<Breaker>,
    clock: Clock,
    name: String,
    /// Exceptions that say nothing against the callee: they count as successes.
    exclude: Py<PyTuple>,
    /// Called as `on_change(old_state, new_state)` after each change of state.
    on_change: Py<PyAny>,
}

/// A function decorated with a breaker (`@breaker` on a plain function): calling it calls the
/// function through the breaker, all in Rust. It has a `__dict__` for `functools.wraps` and
/// binds like a function when it decorates a method.
#[pyclass(module = "helixrt._core", name = "BreakerGuarded", frozen, dict)]
pub struct BreakerGuarded {
    breaker: Py<CircuitBreaker>,
    func: Py<PyAny>,
}

#[pymethods]
impl BreakerGuarded {
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.breaker
            .get()
            .call(py, self.func.bind(py), args, kwargs)
    }

    fn __get__(
        slf: Bound<'_, Self>,
        instance: Option<&Bound<'_, PyAny>>,
        _owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        match instance {
            None => Ok(slf.into_any().unbind()),
            Some(instance) => Ok(py
                .import("types")?
                .getattr("MethodType")?
                .call1((slf, instance))?
                .unbind()),
        }
    }

    #[getter]
    fn breaker(&self, py: Python<'_>) -> Py<CircuitBreaker> {
        self.breaker.clone_ref(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.breaker)?;
        visit.call(&self.func)
    }
}

/// Leave for one call, from `_acquire`, to give back to `_record`.
#[pyclass(
    module = "helixrt._core",
    name = "BreakerPermit",
    frozen,
    freelist = 64
)]
pub struct BreakerPermit {
    permit: Permit,
}

fn seconds(ticks: Tick) -> f64 {
    ticks as f64 / 1e9
}

fn positive(name: &str, value: f64) -> Result<Tick, Error> {
    if value > 0.0 && value.is_finite() {
        Ok(ticks_from_secs(value))
    } else {
        Err(Error::InvalidArgument(format!(
            "{name} must be a positive number of seconds, got {value}"
        )))
    }
}

fn at_least_one(name: &str, value: i64) -> Result<u32, Error> {
    u32::try_from(value)
        .ok()
        .filter(|&v| v >= 1)
        .ok_or_else(|| Error::InvalidArgument(format!("{name} must be an int >= 1, got {value}")))
}

impl CircuitBreaker {
    #[inline]
    fn acquire(&self, py: Python<'_>) -> PyResult<Permit> {
        let now = self.clock.now();
        let (result, transition) = self.inner.lock(py)?.acquire(now);
        self.announce(py, transition);
        result.map_err(|wait| self.open_error(py, wait))
    }

    #[inline]
    fn record(&self, py: Python<'_>, permit: Permit, outcome: Outcome) -> PyResult<()> {
        let now = self.clock.now();
        let transition = self.inner.lock(py)?.record(permit, outcome, now);
        self.announce(py, transition);
        Ok(())
    }

    /// How an exception ends a call: against the callee unless excluded, or not at all when it
    /// is not an `Exception` (a cancellation, an interrupt).
    fn classify(&self, py: Python<'_>, error: &PyErr) -> Outcome {
        let value = error.value(py);
        if !value.is_instance_of::<pyo3::exceptions::PyException>() {
            Outcome::Ignored
        } else if value.is_instance(self.exclude.bind(py)).unwrap_or(false) {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }

    #[cold]
    fn open_error(&self, py: Python<'_>, wait: Tick) -> PyErr {
        helix_error(py, "CircuitOpenError", (self.name.clone(), seconds(wait)))
    }

    #[inline]
    fn announce(&self, py: Python<'_>, transition: Option<Transition>) {
        if let Some((from, to)) = transition {
            if let Err(err) = self.on_change.call1(py, (from.name(), to.name())) {
                err.write_unraisable(py, None);
            }
        }
    }

    fn move_to(&self, py: Python<'_>, state: State) -> PyResult<()> {
        let now = self.clock.now();
        let (expired, moved) = {
            let mut breaker = self.inner.lock(py)?;
            let (current, expired) = breaker.state(now);
            (
                expired,
                (current != state).then(|| breaker.move_to(state, now)),
            )
        };
        self.announce(py, expired);
        self.announce(py, moved);
        Ok(())
    }
}

#[pymethods]
impl CircuitBreaker {
    #[new]
    #[pyo3(signature = (name, failure_threshold, success_threshold, reset_timeout, half_open_max_calls, failure_rate, window, min_calls, slow_call_duration, exclude, on_change, _manual_clock=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: String,
        failure_threshold: i64,
        success_threshold: i64,
        reset_timeout: f64,
        half_open_max_calls: i64,
        failure_rate: Option<f64>,
        window: i64,
        min_calls: i64,
        slow_call_duration: Option<f64>,
        exclude: Py<PyTuple>,
        on_change: Py<PyAny>,
        _manual_clock: bool,
    ) -> PyResult<Self> {
        if let Some(rate) = failure_rate {
            if !(rate > 0.0 && rate <= 1.0) {
                return Err(Error::InvalidArgument(format!(
                    "failure_rate must be a number in (0, 1] or None, got {rate}"
                ))
                .into());
            }
        }
        let config = Config {
            failure_threshold: at_least_one("failure_threshold", failure_threshold)?,
            success_threshold: at_least_one("success_threshold", success_threshold)?,
            reset_timeout: positive("reset_timeout", reset_timeout)?,
            half_open_max_calls: at_least_one("half_open_max_calls", half_open_max_calls)?,
            failure_rate,
            window: at_least_one("window", window)? as usize,
            min_calls: at_least_one("min_calls", min_calls)? as usize,
            slow_call: slow_call_duration
                .map(|d| positive("slow_call_duration", d))
                .transpose()?,
        };
        Ok(CircuitBreaker {
            inner: Exclusive::new(Breaker::new(config)),
            clock: if _manual_clock {
                Clock::manual()
            } else {
                Clock::Monotonic
            },
            name,
            exclude,
            on_change,
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// "closed", "open" or "half_open".
    #[getter]
    fn state(&self, py: Python<'_>) -> PyResult<&'static str> {
        let (state, transition) = self.inner.lock(py)?.state(self.clock.now());
        self.announce(py, transition);
        Ok(state.name())
    }

    /// Seconds until an open breaker lets a trial call through (0.0 unless open).
    #[getter]
    fn retry_after(&self, py: Python<'_>) -> PyResult<f64> {
        Ok(seconds(self.inner.lock(py)?.retry_after(self.clock.now())))
    }

    /// Calls `func(*args, **kwargs)` through the breaker: `CircuitOpenError` while it is open.
    #[pyo3(signature = (func, /, *args, **kwargs))]
    fn call(
        &self,
        py: Python<'_>,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let permit = self.acquire(py)?;
        match func.call(args, kwargs) {
            Ok(value) => {
                self.record(py, permit, Outcome::Success)?;
                Ok(value.unbind())
            }
            Err(err) => {
                let outcome = self.classify(py, &err);
                self.record(py, permit, outcome)?;
                Err(err)
            }
        }
    }

    /// `func` guarded by this breaker (what `@breaker` makes of a plain function).
    fn _guard(slf: &Bound<'_, Self>, func: Py<PyAny>) -> BreakerGuarded {
        BreakerGuarded {
            breaker: slf.clone().unbind(),
            func,
        }
    }

    /// A permit for one call, or `CircuitOpenError`.
    fn _acquire(&self, py: Python<'_>) -> PyResult<BreakerPermit> {
        Ok(BreakerPermit {
            permit: self.acquire(py)?,
        })
    }

    /// Reports the call of `permit`: `error` is the exception it raised, or None.
    #[pyo3(signature = (permit, error=None))]
    fn _record(
        &self,
        py: Python<'_>,
        permit: &Bound<'_, BreakerPermit>,
        error: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let outcome = match error {
            None => Outcome::Success,
            Some(error) => self.classify(py, &PyErr::from_value(error.clone())),
        };
        self.record(py, permit.get().permit, outcome)
    }

    /// Opens the breaker now, whatever its counts.
    fn force_open(&self, py: Python<'_>) -> PyResult<()> {
        self.move_to(py, State::Open)
    }

    /// Closes the breaker now and forgets its counts.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.move_to(py, State::Closed)
    }

    /// (calls, successes, failures, rejected, state_changes).
    fn _stats(&self, py: Python<'_>) -> PyResult<(u64, u64, u64, u64, u64)> {
        let s = self.inner.lock(py)?.stats();
        Ok((
            s.calls,
            s.successes,
            s.failures,
            s.rejected,
            s.state_changes,
        ))
    }

    /// Moves a manual clock (`_manual_clock=True`) forward; for tests.
    fn _advance(&self, seconds: f64) {
        self.clock.advance(ticks_from_secs(seconds));
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.exclude)?;
        visit.call(&self.on_change)
    }
}
