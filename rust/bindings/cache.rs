//! `helixrt._core.L1Cache`: the Python face of `crate::cache::Cache`.
//!
//! Keys and values are Python objects kept by reference. Two rules keep the cache safe when
//! user code runs inside it (a key's `__eq__`, a value's `__del__`, a weigher):
//! - no Python code runs while the lock is held: hashing and weighing happen before, objects
//!   leaving the cache are dropped after (the `Graveyard`), and keys are compared under the lock
//!   only when both sides are builtin types (`str`, `bytes`, `int`, `float`, `bool`, `None` and
//!   tuples of them) whose `==` is C code;
//! - any other comparison makes the operation stop unchanged (`Undecided`); the candidates are
//!   compared with Python's `==` outside the lock, and the operation is retried knowing them.
//!
//! "The lock" is the cache's `Exclusive` (see `bindings::exclusive`): on builds with a GIL, the
//! GIL itself, with a flag that turns a re-entry into an error; a mutex on free-threaded builds.
//! The GIL is held for the whole of every call.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::bindings::exclusive::{Exclusive, Guard};
use crate::cache::{Cache, Config, Graveyard, Insert, Match, Undecided};
use crate::clock::{ticks_from_secs, Clock, Tick, NEVER};
use crate::errors::{helix_error, Error};

type PyCache = Cache<Py<PyAny>, Py<PyAny>>;
type PyGraveyard = Graveyard<Py<PyAny>, Py<PyAny>>;
/// hits, misses, inserts, updates, evictions, expirations, invalidations, size, weight.
type StatsTuple = (u64, u64, u64, u64, u64, u64, u64, usize, u64);
/// How an operation compares the caller's key with a stored one (see `compare`).
type KeyEq<'a> = dyn FnMut(&Py<PyAny>) -> Match + 'a;
type Decided = Vec<(Py<PyAny>, bool)>;

#[pyclass(module = "helixrt._core", name = "L1Cache", subclass, frozen, weakref)]
pub struct L1Cache {
    inner: Exclusive<PyCache>,
    config: Config,
    clock: Clock,
    weigher: Option<Py<PyAny>>,
}

/// Spreads CPython's hash over all 64 bits: small ints hash to themselves, and the table needs
/// entropy in its top bits (control bytes) and low bits (bucket) alike.
#[inline]
fn mix(hash: isize) -> u64 {
    let h = (hash as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 32)
}

/// A key whose `==` with another such key is builtin C code, safe to run under the lock.
#[inline]
fn is_plain(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_exact_instance_of::<PyString>()
        || obj.is_exact_instance_of::<PyInt>()
        || obj.is_exact_instance_of::<PyBytes>()
        || obj.is_exact_instance_of::<PyFloat>()
        || obj.is_exact_instance_of::<PyBool>()
        || obj.is_none()
        || plain_tuple(obj)
}

#[cold]
fn plain_tuple(obj: &Bound<'_, PyAny>) -> bool {
    obj.cast_exact::<PyTuple>()
        .is_ok_and(|tuple| tuple.iter().all(|item| is_plain(&item)))
}

/// The comparison the core calls with each stored key whose hash matches.
#[inline]
fn compare(
    py: Python<'_>,
    probe: &Bound<'_, PyAny>,
    probe_plain: bool,
    decided: &[(Py<PyAny>, bool)],
    stored: &Py<PyAny>,
) -> Match {
    if stored.as_ptr() == probe.as_ptr() {
        return Match::Yes;
    }
    if let Some((_, same)) = decided
        .iter()
        .find(|(obj, _)| obj.as_ptr() == stored.as_ptr())
    {
        return if *same { Match::Yes } else { Match::No };
    }
    let stored = stored.bind(py);
    if probe_plain && is_plain(stored) {
        // Builtin equality cannot run user code; it can only fail on memory exhaustion.
        return match probe.eq(stored) {
            Ok(true) => Match::Yes,
            _ => Match::No,
        };
    }
    Match::Unknown
}

/// Drops what left the cache, now that the lock is released. Most operations remove nothing;
/// they skip the call into `drop_in_place`.
#[inline]
fn bury(graveyard: PyGraveyard) {
    if graveyard.capacity() == 0 {
        std::mem::forget(graveyard);
    } else {
        drop(graveyard);
    }
}

fn positive_seconds(name: &str, value: Option<f64>) -> Result<Tick, Error> {
    match value {
        None => Ok(NEVER),
        Some(secs) if secs > 0.0 => Ok(ticks_from_secs(secs)),
        Some(secs) => Err(Error::InvalidArgument(format!(
            "{name} must be a positive number of seconds or None, got {secs}"
        ))),
    }
}

fn parse_tags(tags: &Bound<'_, PyAny>) -> PyResult<Option<Box<[Box<str>]>>> {
    let mut parsed = Vec::new();
    if tags.is_instance_of::<PyString>() {
        return Err(Error::WrongType("tags must be an iterable of str, not a str".into()).into());
    }
    for tag in tags.try_iter()? {
        let tag = tag?;
        let Ok(text) = tag.cast::<PyString>() else {
            return Err(Error::WrongType(format!(
                "tags must be str, got {}",
                tag.get_type().name()?
            ))
            .into());
        };
        parsed.push(Box::from(text.to_str()?));
    }
    Ok((!parsed.is_empty()).then(|| parsed.into_boxed_slice()))
}

impl L1Cache {
    #[inline]
    fn lock<'a>(&'a self, py: Python<'a>) -> PyResult<Guard<'a, PyCache>> {
        self.inner.lock(py)
    }

    /// The live value under `key`, if any (counted as a hit or a miss).
    #[inline]
    pub(crate) fn lookup(&self, key: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        let py = key.py();
        self.with_key(key, |cache, hash, eq, now, graveyard| {
            Ok(cache
                .get(hash, eq, now, graveyard)?
                .map(|v| v.clone_ref(py)))
        })
    }

    /// Runs `op` on the cache for `key`, comparing keys as the module doc says; retries after
    /// comparing in Python the stored keys the core could not compare under the lock.
    #[inline]
    fn with_key<R>(
        &self,
        key: &Bound<'_, PyAny>,
        mut op: impl FnMut(
            &mut PyCache,
            u64,
            &mut KeyEq<'_>,
            Tick,
            &mut PyGraveyard,
        ) -> Result<R, Undecided>,
    ) -> PyResult<R> {
        let py = key.py();
        let hash = mix(key.hash()?);
        let plain = is_plain(key);
        let mut graveyard = Vec::new();
        let result = {
            let mut cache = self.lock(py)?;
            let now = self.clock.now();
            let mut eq = |stored: &Py<PyAny>| compare(py, key, plain, &[], stored);
            op(&mut cache, hash, &mut eq, now, &mut graveyard)
        };
        bury(graveyard);
        match result {
            Ok(value) => Ok(value),
            Err(Undecided) => self.with_key_comparing(key, hash, plain, op),
        }
    }

    /// The rest of `with_key` when some stored key can only be compared by running Python.
    #[cold]
    #[inline(never)]
    fn with_key_comparing<R>(
        &self,
        key: &Bound<'_, PyAny>,
        hash: u64,
        plain: bool,
        mut op: impl FnMut(
            &mut PyCache,
            u64,
            &mut KeyEq<'_>,
            Tick,
            &mut PyGraveyard,
        ) -> Result<R, Undecided>,
    ) -> PyResult<R> {
        let py = key.py();
        let mut decided: Decided = Vec::new();
        loop {
            let mut graveyard = Vec::new();
            let mut candidates = Vec::new();
            let result = {
                let mut cache = self.lock(py)?;
                let now = self.clock.now();
                let mut eq = |stored: &Py<PyAny>| compare(py, key, plain, &decided, stored);
                let result = op(&mut cache, hash, &mut eq, now, &mut graveyard);
                if result.is_err() {
                    candidates.extend(
                        cache
                            .keys_with_hash(hash)
                            .filter(|stored| eq(stored) == Match::Unknown)
                            .map(|stored| stored.clone_ref(py)),
                    );
                }
                result
            };
            bury(graveyard);
            match result {
                Ok(value) => return Ok(value),
                Err(Undecided) => {
                    for candidate in candidates {
                        let same = key.eq(&candidate)?;
                        decided.push((candidate, same));
                    }
                }
            }
        }
    }

    fn weigh(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<u64> {
        let Some(weigher) = &self.weigher else {
            return Ok(0);
        };
        let weight = weigher.bind(key.py()).call1((key, value))?;
        if !weight.is_instance_of::<PyInt>() || weight.is_instance_of::<PyBool>() {
            return Err(Error::WrongType(format!(
                "weigher must return an int, got {}",
                weight.get_type().name()?
            ))
            .into());
        }
        weight.extract::<u64>().map_err(|_| {
            Error::InvalidArgument(format!("weigher must return an int >= 0, got {weight}")).into()
        })
    }

    fn insert(
        &self,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<Tick>,
        tags: Option<Box<[Box<str>]>>,
    ) -> PyResult<()> {
        let weight = self.weigh(key, value)?;
        self.with_key(key, |cache, hash, eq, now, graveyard| {
            let options = Insert {
                ttl,
                weight,
                tags: tags.clone(),
            };
            let (key, value) = (key.clone().unbind(), value.clone().unbind());
            cache.insert(hash, key, value, eq, options, now, graveyard)
        })?;
        Ok(())
    }

    fn purge(&self, py: Python<'_>) -> PyResult<usize> {
        let mut graveyard = Vec::new();
        let removed = self
            .lock(py)?
            .purge_expired(self.clock.now(), &mut graveyard);
        drop(graveyard);
        Ok(removed)
    }
}

#[cold]
fn key_error(key: &Bound<'_, PyAny>) -> PyErr {
    helix_error(key.py(), "CacheKeyError", (key.clone().unbind(),))
}

#[pymethods]
impl L1Cache {
    #[new]
    #[pyo3(signature = (maxsize=10_000, ttl=Some(300.0), *, tti=None, max_weight=None, weigher=None, _manual_clock=false))]
    fn new(
        maxsize: i64,
        ttl: Option<f64>,
        tti: Option<f64>,
        max_weight: Option<i64>,
        weigher: Option<Py<PyAny>>,
        _manual_clock: bool,
    ) -> PyResult<Self> {
        if maxsize < 1 {
            return Err(Error::InvalidArgument(format!(
                "maxsize must be an int >= 1, got {maxsize}"
            ))
            .into());
        }
        let max_weight = match max_weight {
            None => None,
            Some(w) if w >= 1 => Some(w as u64),
            Some(w) => {
                return Err(Error::InvalidArgument(format!(
                    "max_weight must be an int >= 1 or None, got {w}"
                ))
                .into())
            }
        };
        if max_weight.is_some() && weigher.is_none() {
            return Err(Error::InvalidArgument(
                "max_weight needs a weigher(key, value) -> int to weigh entries with".into(),
            )
            .into());
        }
        let config = Config {
            max_size: maxsize as usize,
            max_weight,
            ttl: positive_seconds("ttl", ttl)?,
            tti: positive_seconds("tti", tti)?,
        };
        Ok(L1Cache {
            inner: Exclusive::new(Cache::new(config)),
            config,
            clock: if _manual_clock {
                Clock::manual()
            } else {
                Clock::Monotonic
            },
            weigher,
        })
    }

    #[getter]
    fn maxsize(&self) -> usize {
        self.config.max_size
    }

    #[getter]
    fn ttl(&self) -> Option<f64> {
        let ttl = self.config.ttl;
        (ttl != NEVER).then(|| ttl as f64 / 1e9)
    }

    #[getter]
    fn tti(&self) -> Option<f64> {
        let tti = self.config.tti;
        (tti != NEVER).then(|| tti as f64 / 1e9)
    }

    #[getter]
    fn max_weight(&self) -> Option<u64> {
        self.config.max_weight
    }

    #[pyo3(signature = (key, default=None))]
    fn get(&self, key: &Bound<'_, PyAny>, default: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let found = self.lookup(key)?;
        Ok(found.or(default).unwrap_or_else(|| key.py().None()))
    }

    fn __getitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = key.py();
        self.with_key(key, |cache, hash, eq, now, graveyard| {
            Ok(cache
                .get(hash, eq, now, graveyard)?
                .map(|v| v.clone_ref(py)))
        })?
        .ok_or_else(|| key_error(key))
    }

    fn __setitem__(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.insert(key, value, None, None)
    }

    #[pyo3(signature = (key, value, *, ttl=None, tags=None))]
    fn set(
        &self,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = ttl.map(|t| positive_seconds("ttl", Some(t))).transpose()?;
        let tags = tags.map(parse_tags).transpose()?.flatten();
        self.insert(key, value, ttl, tags)
    }

    #[pyo3(signature = (mapping, *, ttl=None, tags=None))]
    fn set_many(
        &self,
        mapping: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = ttl.map(|t| positive_seconds("ttl", Some(t))).transpose()?;
        let tags = tags.map(parse_tags).transpose()?.flatten();
        let items = match mapping.cast::<PyDict>() {
            Ok(dict) => dict.items().into_any(),
            Err(_) => mapping.call_method0("items")?,
        };
        for item in items.try_iter()? {
            let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
            self.insert(&key, &value, ttl, tags.clone())?;
        }
        Ok(())
    }

    fn get_many<'py>(&self, keys: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let py = keys.py();
        let found = PyDict::new(py);
        for key in keys.try_iter()? {
            let key = key?;
            let value = self.with_key(&key, |cache, hash, eq, now, graveyard| {
                Ok(cache
                    .get(hash, eq, now, graveyard)?
                    .map(|v| v.clone_ref(py)))
            })?;
            if let Some(value) = value {
                found.set_item(key, value)?;
            }
        }
        Ok(found)
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.with_key(key, |cache, hash, eq, now, graveyard| {
            cache.contains(hash, eq, now, graveyard)
        })
    }

    fn delete(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let removed = self.with_key(key, |cache, hash, eq, now, graveyard| {
            cache.remove(hash, eq, now, graveyard)
        })?;
        Ok(removed.is_some())
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.delete(key)? {
            Ok(())
        } else {
            Err(key_error(key))
        }
    }

    #[pyo3(signature = (key, *default))]
    fn pop(&self, key: &Bound<'_, PyAny>, default: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        if default.len() > 1 {
            return Err(PyTypeError::new_err(format!(
                "pop expected at most 2 arguments, got {}",
                default.len() + 1
            )));
        }
        let removed = self.with_key(key, |cache, hash, eq, now, graveyard| {
            cache.remove(hash, eq, now, graveyard)
        })?;
        match removed {
            Some((_key, value)) => Ok(value),
            None if default.len() == 1 => Ok(default.get_item(0)?.unbind()),
            None => Err(key_error(key)),
        }
    }

    fn remaining_ttl(&self, key: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
        let left = self.with_key(key, |cache, hash, eq, now, graveyard| {
            cache.remaining(hash, eq, now, graveyard)
        })?;
        Ok(left.map(|ticks| {
            if ticks == NEVER {
                f64::INFINITY
            } else {
                ticks as f64 / 1e9
            }
        }))
    }

    fn invalidate_tag(&self, tag: &Bound<'_, PyAny>) -> PyResult<usize> {
        let Ok(tag) = tag.cast::<PyString>() else {
            return Err(Error::WrongType(format!(
                "tag must be a str, got {}",
                tag.get_type().name()?
            ))
            .into());
        };
        let mut graveyard = Vec::new();
        let removed =
            self.lock(tag.py())?
                .invalidate_tag(tag.to_str()?, self.clock.now(), &mut graveyard);
        drop(graveyard);
        Ok(removed)
    }

    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        let mut graveyard = Vec::new();
        self.lock(py)?.clear(self.clock.now(), &mut graveyard);
        drop(graveyard);
        Ok(())
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.purge(py)?;
        Ok(self.lock(py)?.len_unpurged())
    }

    /// A snapshot of the live keys.
    fn _keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.purge(py)?;
        let keys: Vec<Py<PyAny>> = self
            .lock(py)?
            .iter()
            .map(|(k, _)| k.clone_ref(py))
            .collect();
        PyList::new(py, keys)
    }

    /// A snapshot of the live values (not counted as reads).
    fn _values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.purge(py)?;
        let values: Vec<Py<PyAny>> = self
            .lock(py)?
            .iter()
            .map(|(_, v)| v.clone_ref(py))
            .collect();
        PyList::new(py, values)
    }

    /// A snapshot of the live (key, value) pairs (not counted as reads).
    fn _items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.purge(py)?;
        let items: Vec<(Py<PyAny>, Py<PyAny>)> = self
            .lock(py)?
            .iter()
            .map(|(k, v)| (k.clone_ref(py), v.clone_ref(py)))
            .collect();
        PyList::new(py, items)
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self._keys(py)?.try_iter().map(Bound::into_any)
    }

    /// Counters and gauges: (hits, misses, inserts, updates, evictions, expirations,
    /// invalidations, size, weight).
    fn _stats(&self, py: Python<'_>) -> PyResult<StatsTuple> {
        self.purge(py)?;
        let cache = self.lock(py)?;
        let s = cache.stats();
        Ok((
            s.hits,
            s.misses,
            s.inserts,
            s.updates,
            s.evictions,
            s.expirations,
            s.invalidations,
            cache.len_unpurged(),
            cache.weight(),
        ))
    }

    /// Removes expired entries now; the background sweeper calls this.
    fn _purge_expired(&self, py: Python<'_>) -> PyResult<usize> {
        self.purge(py)
    }

    /// Moves a manual clock (`_manual_clock=True`) forward; for tests.
    fn _advance(&self, seconds: f64) {
        self.clock.advance(ticks_from_secs(seconds));
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(weigher) = &self.weigher {
            visit.call(weigher)?;
        }
        // The collector may run while this thread is inside an operation (an allocation there):
        // then skip, which only makes the entries look referenced from outside, never freed.
        if let Some(cache) = self.inner.try_lock() {
            for (key, value) in cache.iter() {
                visit.call(key)?;
                visit.call(value)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let mut graveyard = Vec::new();
        if let Some(mut cache) = self.inner.try_lock() {
            cache.clear(self.clock.now(), &mut graveyard);
        }
        drop(graveyard);
    }
}
