//! `Exclusive<T>`: state that one thread at a time may use, for the pyclasses' hot paths.
//!
//! With a GIL, the GIL already is that lock: a `Python` token proves this thread holds it, and
//! the code that runs under a guard never releases it (it calls no Python code and never
//! detaches), so no other thread can be inside at the same time. A plain flag then only has to
//! catch re-entry from the same thread, without the two atomic instructions a mutex costs on
//! every call. Free-threaded builds have no GIL to lean on and use a real mutex.

use std::ops::{Deref, DerefMut};

use pyo3::prelude::*;

use crate::errors::helix_error;

#[cfg(not(Py_GIL_DISABLED))]
pub struct Exclusive<T> {
    busy: std::cell::Cell<bool>,
    value: std::cell::UnsafeCell<T>,
}

// SAFETY: on builds with a GIL, `lock` takes a `Python` token (the GIL is held) and guards never
// outlive a stretch of code that keeps the GIL, so at most one thread touches `busy` and `value`
// at a time; `try_lock` is only called by the garbage collector, which holds the GIL too.
#[cfg(not(Py_GIL_DISABLED))]
unsafe impl<T: Send> Sync for Exclusive<T> {}

#[cfg(not(Py_GIL_DISABLED))]
pub struct Guard<'a, T> {
    owner: &'a Exclusive<T>,
}

#[cfg(not(Py_GIL_DISABLED))]
impl<T> Exclusive<T> {
    pub fn new(value: T) -> Self {
        Exclusive {
            busy: std::cell::Cell::new(false),
            value: std::cell::UnsafeCell::new(value),
        }
    }

    /// Exclusive access; an error (never a deadlock) if this thread is already inside.
    #[inline]
    pub fn lock<'a>(&'a self, py: Python<'a>) -> PyResult<Guard<'a, T>> {
        self.try_lock().ok_or_else(|| reentered(py))
    }

    /// Exclusive access unless this thread is already inside. The caller must hold the GIL.
    #[inline]
    pub fn try_lock(&self) -> Option<Guard<'_, T>> {
        if self.busy.replace(true) {
            return None;
        }
        Some(Guard { owner: self })
    }
}

#[cfg(not(Py_GIL_DISABLED))]
impl<T> Drop for Guard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.owner.busy.set(false);
    }
}

#[cfg(not(Py_GIL_DISABLED))]
impl<T> Deref for Guard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one alive (`busy` was false when it was made).
        unsafe { &*self.owner.value.get() }
    }
}

#[cfg(not(Py_GIL_DISABLED))]
impl<T> DerefMut for Guard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this guard is the only one alive (`busy` was false when it was made).
        unsafe { &mut *self.owner.value.get() }
    }
}

#[cfg(Py_GIL_DISABLED)]
pub struct Exclusive<T> {
    inner: std::sync::Mutex<T>,
}

#[cfg(Py_GIL_DISABLED)]
pub struct Guard<'a, T> {
    inner: std::sync::MutexGuard<'a, T>,
}

#[cfg(Py_GIL_DISABLED)]
impl<T> Exclusive<T> {
    pub fn new(value: T) -> Self {
        Exclusive {
            inner: std::sync::Mutex::new(value),
        }
    }

    #[inline]
    pub fn lock<'a>(&'a self, _py: Python<'a>) -> PyResult<Guard<'a, T>> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Guard { inner })
    }

    pub fn try_lock(&self) -> Option<Guard<'_, T>> {
        self.inner.try_lock().ok().map(|inner| Guard { inner })
    }
}

#[cfg(Py_GIL_DISABLED)]
impl<T> Deref for Guard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.inner
    }
}

#[cfg(Py_GIL_DISABLED)]
impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

#[cfg(not(Py_GIL_DISABLED))]
#[cold]
fn reentered(py: Python<'_>) -> PyErr {
    helix_error(
        py,
        "ReentryError",
        "a helixrt object was used from inside one of its own operations",
    )
}
