//! `helixrt._core.EventBus`, `Event` and `Subscription`: the Rust half of `helixrt.EventBus`.
//!
//! `publish` runs here from end to end: the router (`crate::bus::Router`) gives the topic's
//! subscribers, the event is made, and each subscriber's mailbox takes it under its `on_full`
//! policy. A mailbox that was idle wakes its consumer: plain-function handlers are run by the
//! bus's dispatcher threads (Python threads that call `_dispatch`, a Rust loop that keeps the
//! interpreter lock while there is work), coroutine handlers and `async for` readers by a waker
//! the Python side parked on their event loop. The Python subclasses add the asyncio surface.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyMapping, PyMappingProxy, PyString};

use super::pool::thread_ident;
use crate::bus::{Mailbox, Offer, OnFull, Pattern, Router};
use crate::errors::{helix_error, Error};

/// This process's part of every event id, so ids stay unique across the processes a bridge
/// joins. Drawn again in a forked child (`_reseed`).
static NODE: AtomicU64 = AtomicU64::new(0);
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Events a dispatcher hands one handler before it lets other subscribers' handlers run.
const BATCH: usize = 64;

thread_local! {
    /// The bus whose dispatcher this thread is (its address): a publish from a handler must
    /// not wait for room that only this thread can make.
    static DISPATCHER_OF: Cell<usize> = const { Cell::new(0) };
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A fresh node id: the clock, the process id and an address, mixed.
#[pyfunction]
pub fn _reseed() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let stack = &nanos as *const u64 as u64;
    let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ stack.rotate_left(17);
    // splitmix64's finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    NODE.store(x & 0xffff_ffff_ffff, SeqCst);
}

fn node() -> u64 {
    let node = NODE.load(Relaxed);
    if node != 0 {
        return node;
    }
    _reseed();
    NODE.load(Relaxed)
}

/// The node part of the ids of events made in this process.
#[pyfunction]
pub fn _node_id() -> String {
    format!("{:012x}", node())
}

/// Whether the literal `topic` matches the subscription `pattern` (`*` one token, `>` the rest).
#[pyfunction]
pub fn topic_matches(pattern: &str, topic: &str) -> PyResult<bool> {
    let pattern = Pattern::parse(pattern)?;
    crate::bus::check_topic(topic)?;
    Ok(pattern.matches(topic))
}

/// The context variable that holds the current trace id (`helixrt.events.trace_context`).
#[pyfunction]
pub fn trace_id_var(py: Python<'_>) -> PyResult<Py<PyAny>> {
    static VAR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    VAR.get_or_try_init(py, || {
        // SAFETY: creates a new context variable (a new reference) with no default.
        unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                pyo3::ffi::PyContextVar_New(c"helixrt.trace_id".as_ptr(), std::ptr::null_mut()),
            )
        }
        .map(Bound::unbind)
    })
    .map(|var| var.clone_ref(py))
}

/// The current trace id, or None.
fn current_trace_id(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let var = trace_id_var(py)?;
    let mut value: *mut pyo3::ffi::PyObject = std::ptr::null_mut();
    // SAFETY: `var` is a context variable; on success `value` is a new reference or NULL.
    let status =
        unsafe { pyo3::ffi::PyContextVar_Get(var.as_ptr(), py.None().as_ptr(), &mut value) };
    if status < 0 {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: a new reference returned by PyContextVar_Get.
    Ok(unsafe { Bound::from_owned_ptr(py, value) }.unbind())
}

fn empty_metadata(py: Python<'_>) -> Py<PyAny> {
    static EMPTY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    EMPTY
        .get_or_init(py, || {
            PyMappingProxy::new(py, PyDict::new(py).cast::<PyMapping>().expect("a dict"))
                .into_any()
                .unbind()
        })
        .clone_ref(py)
}

fn read_only_metadata(py: Python<'_>, metadata: Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
    let Some(metadata) = metadata.filter(|m| !m.is_none()) else {
        return Ok(empty_metadata(py));
    };
    let copy = PyDict::new(py);
    copy.update(metadata.cast::<PyMapping>().map_err(|_| {
        Error::WrongType(format!(
            "metadata must be a mapping or None, got {}",
            metadata
                .get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        ))
    })?)?;
    Ok(PyMappingProxy::new(py, copy.cast::<PyMapping>()?)
        .into_any()
        .unbind())
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map_or_else(|_| "?".into(), |n| n.to_string())
}

fn as_topic<'py>(topic: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyString>> {
    topic.cast::<PyString>().cloned().map_err(|_| {
        Error::WrongType(format!("topic must be a str, got {}", type_name(topic))).into()
    })
}

fn check_source(py: Python<'_>, source: Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
    match source {
        Some(s) if s.is_instance_of::<PyString>() || s.is_none() => Ok(s.clone().unbind()),
        Some(s) => Err(Error::WrongType(format!(
            "source must be a str or None, got {}",
            type_name(s)
        ))
        .into()),
        None => Ok(py.None()),
    }
}

/// Something that happened: frozen, shared by reference with every subscriber.
#[pyclass(module = "helixrt._core", name = "Event", frozen)]
pub struct Event {
    /// Given (an event from another process) or made from the node and `seq` on first read.
    id: PyOnceLock<Py<PyString>>,
    seq: u64,
    topic: Py<PyString>,
    payload: Py<PyAny>,
    source: Py<PyAny>,
    timestamp: f64,
    trace_id: Py<PyAny>,
    metadata: Py<PyAny>,
}

impl Event {
    fn make(
        py: Python<'_>,
        topic: Py<PyString>,
        payload: Py<PyAny>,
        source: Py<PyAny>,
        metadata: Py<PyAny>,
    ) -> PyResult<Event> {
        Ok(Event {
            id: PyOnceLock::new(),
            seq: SEQ.fetch_add(1, Relaxed) + 1,
            topic,
            payload,
            source,
            timestamp: now(),
            trace_id: current_trace_id(py)?,
            metadata,
        })
    }
}

impl Event {
    /// The event as a Python object the cyclic garbage collector does not track. An event is
    /// immutable and made after its payload and metadata, so it can only be part of a cycle if
    /// a payload is changed after publishing to refer to its own event; tracking every event
    /// would cost each publish a share of the collections its allocations set off.
    fn into_untracked(self, py: Python<'_>) -> PyResult<Py<Event>> {
        let event = Py::new(py, self)?;
        // SAFETY: `event` is a live object of a GC type; untracking only hides it from the
        // cycle collector (its deallocation untracks again, which is allowed).
        unsafe { pyo3::ffi::PyObject_GC_UnTrack(event.as_ptr().cast()) };
        Ok(event)
    }
}

#[pymethods]
impl Event {
    /// An event made by hand (a bridge rebuilding one from another process gives all fields);
    /// `trace_id` defaults to the current trace context.
    #[new]
    #[pyo3(signature = (topic, payload=None, *, source=None, metadata=None, id=None, timestamp=None, trace_id=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        topic: &Bound<'_, PyAny>,
        payload: Option<Py<PyAny>>,
        source: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
        id: Option<&Bound<'_, PyAny>>,
        timestamp: Option<f64>,
        trace_id: Option<Py<PyAny>>,
    ) -> PyResult<Event> {
        let topic = as_topic(topic)?;
        crate::bus::check_topic(topic.to_str()?)?;
        let mut event = Event::make(
            py,
            topic.unbind(),
            payload.unwrap_or_else(|| py.None()),
            check_source(py, source)?,
            read_only_metadata(py, metadata)?,
        )?;
        if let Some(id) = id {
            let id = id.cast::<PyString>().map_err(|_| {
                Error::WrongType(format!("id must be a str, got {}", type_name(id)))
            })?;
            let _ = event.id.set(py, id.clone().unbind());
        }
        if let Some(timestamp) = timestamp {
            event.timestamp = timestamp;
        }
        if let Some(trace_id) = trace_id {
            event.trace_id = trace_id;
        }
        Ok(event)
    }

    /// Unique across processes: this process's node id and a sequence number.
    #[getter]
    fn id(&self, py: Python<'_>) -> Py<PyString> {
        self.id
            .get_or_init(py, || {
                PyString::new(py, &format!("{:012x}-{}", node(), self.seq)).unbind()
            })
            .clone_ref(py)
    }

    #[getter]
    fn topic(&self, py: Python<'_>) -> Py<PyString> {
        self.topic.clone_ref(py)
    }

    #[getter]
    fn payload(&self, py: Python<'_>) -> Py<PyAny> {
        self.payload.clone_ref(py)
    }

    #[getter]
    fn source(&self, py: Python<'_>) -> Py<PyAny> {
        self.source.clone_ref(py)
    }

    /// When it was published, in seconds since the epoch.
    #[getter]
    fn timestamp(&self) -> f64 {
        self.timestamp
    }

    #[getter]
    fn trace_id(&self, py: Python<'_>) -> Py<PyAny> {
        self.trace_id.clone_ref(py)
    }

    /// A read-only mapping.
    #[getter]
    fn metadata(&self, py: Python<'_>) -> Py<PyAny> {
        self.metadata.clone_ref(py)
    }

    /// The fields as a plain dict (for JSON, msgpack and Server-Sent Events).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item(intern!(py, "id"), self.id(py))?;
        dict.set_item(intern!(py, "topic"), &self.topic)?;
        dict.set_item(intern!(py, "source"), &self.source)?;
        dict.set_item(intern!(py, "payload"), &self.payload)?;
        dict.set_item(intern!(py, "timestamp"), self.timestamp)?;
        dict.set_item(intern!(py, "trace_id"), &self.trace_id)?;
        let metadata = PyDict::new(py);
        metadata.update(self.metadata.bind(py).cast::<PyMapping>()?)?;
        dict.set_item(intern!(py, "metadata"), metadata)?;
        Ok(dict)
    }

    /// Rebuilds an event from `to_dict()`'s output, keeping its id.
    #[staticmethod]
    fn from_dict(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<Event> {
        let data = data.cast::<PyMapping>().map_err(|_| {
            Error::WrongType(format!(
                "from_dict needs a mapping, got {}",
                type_name(data)
            ))
        })?;
        let field = |name: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
            match data.get_item(name) {
                Ok(value) if value.is_none() => Ok(None),
                Ok(value) => Ok(Some(value)),
                Err(err) if err.is_instance_of::<pyo3::exceptions::PyKeyError>(py) => Ok(None),
                Err(err) => Err(err),
            }
        };
        let topic = field("topic")?.ok_or_else(|| {
            PyErr::from(Error::InvalidArgument("an event needs a 'topic'".into()))
        })?;
        let timestamp = field("timestamp")?
            .map(|t| t.extract::<f64>())
            .transpose()?;
        let event = Event::new(
            py,
            &topic,
            field("payload")?.map(Bound::unbind),
            field("source")?.as_ref(),
            field("metadata")?.as_ref(),
            field("id")?.as_ref(),
            timestamp,
            Some(field("trace_id")?.map_or_else(|| py.None(), Bound::unbind)),
        )?;
        Ok(event)
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        match other.cast::<Event>() {
            Ok(other) => self
                .id(py)
                .bind(py)
                .as_any()
                .eq(other.get().id(py).bind(py)),
            Err(_) => Ok(false),
        }
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        self.id(py).bind(py).hash()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Event(topic={}, id={}, source={}, payload={})",
            self.topic.bind(py).repr()?,
            self.id(py).bind(py).repr()?,
            self.source.bind(py).repr()?,
            self.payload.bind(py).repr()?,
        ))
    }
}

/// Who runs a subscription's deliveries.
enum Consumer {
    /// A plain function, called by the bus's dispatcher threads.
    Dispatcher(Py<PyAny>),
    /// A coroutine handler (`reader` false) or an `async for` reader, woken on its loop.
    Loop { reader: bool },
}

struct Sub {
    id: u64,
    pattern: Pattern,
    pattern_text: Py<PyString>,
    mailbox: Mailbox<Py<Event>, Py<PyAny>>,
    consumer: Consumer,
    filter: Option<Py<PyAny>>,
    /// The filter's errors reach the publisher (a bridge refusing what it cannot send).
    strict_filter: bool,
    /// The thread of a `Loop` consumer's event loop, once it has parked.
    consumer_thread: AtomicU64,
}

struct Ready {
    queue: VecDeque<Arc<Sub>>,
    idle: usize,
    stopping: bool,
}

struct Shared {
    router: Mutex<Router<Arc<Sub>>>,
    ready: Mutex<Ready>,
    work: Condvar,
    closed: AtomicBool,
    next_id: AtomicU64,
    published: AtomicU64,
    /// Delivered and dropped counts of ended subscriptions.
    retired: Mutex<(u64, u64)>,
    history: Option<Mutex<VecDeque<Py<Event>>>>,
    history_size: usize,
    buffer_size: usize,
    on_full: OnFull,
    max_subscribers: Option<usize>,
    subscribers_total: AtomicU64,
    dispatchers: AtomicUsize,
}

impl Shared {
    fn id(&self) -> usize {
        self as *const Shared as usize
    }

    fn schedule(&self, sub: Arc<Sub>) {
        let mut ready = lock(&self.ready);
        ready.queue.push_back(sub);
        if ready.idle > 0 {
            self.work.notify_one();
        }
    }

    /// The next subscriber with work, waiting up to `timeout`; None on timeout or at the end.
    fn next_ready(&self, timeout: Option<Duration>) -> Result<Arc<Sub>, bool> {
        let mut ready = lock(&self.ready);
        if let Some(sub) = ready.queue.pop_front() {
            return Ok(sub);
        }
        let Some(timeout) = timeout else {
            return Err(ready.stopping);
        };
        if ready.stopping {
            return Err(true);
        }
        ready.idle += 1;
        ready = self
            .work
            .wait_timeout(ready, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        ready.idle -= 1;
        ready.queue.pop_front().ok_or(ready.stopping)
    }

    /// Hands `event` to `sub`, waking its consumer if it was idle.
    fn deliver(&self, py: Python<'_>, sub: &Arc<Sub>, event: &Py<Event>) {
        let offer = match sub.mailbox.offer(event.clone_ref(py)) {
            Offer::Full(item) if self.on_consumer_thread(sub) => sub.mailbox.offer_over(item),
            Offer::Full(item) => py.detach(|| sub.mailbox.offer_wait(item, None)),
            other => other,
        };
        if let Offer::Queued { wake: true, waker } = offer {
            self.wake(py, sub, waker);
        }
    }

    fn wake(&self, py: Python<'_>, sub: &Arc<Sub>, waker: Option<Py<PyAny>>) {
        match &sub.consumer {
            Consumer::Dispatcher(_) => self.schedule(sub.clone()),
            Consumer::Loop { .. } => {
                if let Some(waker) = waker {
                    if let Err(err) = waker.call0(py) {
                        err.write_unraisable(py, Some(waker.bind(py)));
                    }
                }
            }
        }
    }

    /// Whether this thread is the one that empties `sub`'s mailbox (so must never wait on it).
    fn on_consumer_thread(&self, sub: &Sub) -> bool {
        match sub.consumer {
            Consumer::Dispatcher(_) => DISPATCHER_OF.get() == self.id(),
            Consumer::Loop { .. } => sub.consumer_thread.load(Relaxed) == thread_ident(),
        }
    }

    fn retire(&self, sub: &Sub) {
        let (delivered, dropped, _) = sub.mailbox.counts();
        let mut retired = lock(&self.retired);
        retired.0 += delivered;
        retired.1 += dropped;
    }
}

/// The pub/sub core of `helixrt.EventBus`.
#[pyclass(module = "helixrt._core", name = "EventBus", subclass, frozen)]
pub struct EventBus {
    shared: Arc<Shared>,
}

fn closed_error(py: Python<'_>) -> PyErr {
    helix_error(py, "BusClosedError", "the event bus is closed")
}

#[pymethods]
impl EventBus {
    #[new]
    #[pyo3(signature = (*, buffer_size=1000, on_full="drop_oldest", history=0, max_subscribers=None))]
    fn new(
        buffer_size: i64,
        on_full: &str,
        history: i64,
        max_subscribers: Option<i64>,
    ) -> PyResult<Self> {
        if buffer_size < 1 {
            return Err(Error::InvalidArgument(format!(
                "buffer_size must be at least 1, got {buffer_size}"
            ))
            .into());
        }
        if history < 0 {
            return Err(Error::InvalidArgument(format!(
                "history must be 0 (none kept) or more, got {history}"
            ))
            .into());
        }
        if let Some(max) = max_subscribers.filter(|m| *m < 1) {
            return Err(Error::InvalidArgument(format!(
                "max_subscribers must be at least 1 or None, got {max}"
            ))
            .into());
        }
        let history_size = history as usize;
        Ok(EventBus {
            shared: Arc::new(Shared {
                router: Mutex::new(Router::new()),
                ready: Mutex::new(Ready {
                    queue: VecDeque::new(),
                    idle: 0,
                    stopping: false,
                }),
                work: Condvar::new(),
                closed: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
                published: AtomicU64::new(0),
                retired: Mutex::new((0, 0)),
                history: (history_size > 0)
                    .then(|| Mutex::new(VecDeque::with_capacity(history_size))),
                history_size,
                buffer_size: buffer_size as usize,
                on_full: OnFull::parse(on_full)?,
                max_subscribers: max_subscribers.map(|m| m as usize),
                subscribers_total: AtomicU64::new(0),
                dispatchers: AtomicUsize::new(0),
            }),
        })
    }

    /// Publishes an event on `topic` to every matching subscriber and returns it. Never waits
    /// on a subscriber, except for room in one whose `on_full` is "block".
    #[pyo3(signature = (topic, payload=None, *, source=None, metadata=None))]
    fn publish(
        slf: &Bound<'_, Self>,
        topic: &Bound<'_, PyAny>,
        payload: Option<Py<PyAny>>,
        source: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Event>> {
        let py = slf.py();
        let shared = &*slf.get().shared;
        if shared.closed.load(Relaxed) {
            return Err(closed_error(py));
        }
        let topic = as_topic(topic)?;
        let subs = lock(&shared.router).route(topic.to_str()?)?;
        let event = Event::make(
            py,
            topic.unbind(),
            payload.unwrap_or_else(|| py.None()),
            check_source(py, source)?,
            read_only_metadata(py, metadata)?,
        )?;
        send(slf, &subs, event.into_untracked(py)?)
    }

    /// Publishes an event made elsewhere (one a bridge brought from another process), keeping
    /// its id, timestamp and trace id.
    fn publish_event(slf: &Bound<'_, Self>, event: Bound<'_, Event>) -> PyResult<Py<Event>> {
        let py = slf.py();
        let shared = &*slf.get().shared;
        if shared.closed.load(Relaxed) {
            return Err(closed_error(py));
        }
        let subs = lock(&shared.router).route(event.get().topic.bind(py).to_str()?)?;
        send(slf, &subs, event.unbind())
    }

    /// Registers a subscription (the Python `subscribe` builds the `Subscription` around it).
    /// `handler` is a plain function for the dispatchers; without one, the consumer runs on an
    /// event loop: a coroutine handler's task, or (`reader`) whoever reads the subscription.
    /// `loop_thread` is the thread of the event loop that subscribes (0 when none runs there):
    /// the consumer's thread until it parks somewhere else.
    #[pyo3(signature = (pattern, handler, filter, buffer_size, on_full, *, reader, loop_thread=0, strict_filter=false))]
    #[allow(clippy::too_many_arguments)]
    fn _subscribe(
        &self,
        py: Python<'_>,
        pattern: &Bound<'_, PyAny>,
        handler: Option<Py<PyAny>>,
        filter: Option<Py<PyAny>>,
        buffer_size: Option<i64>,
        on_full: Option<&str>,
        reader: bool,
        loop_thread: u64,
        strict_filter: bool,
    ) -> PyResult<Subscription> {
        let shared = &self.shared;
        if shared.closed.load(Relaxed) {
            return Err(closed_error(py));
        }
        let pattern_text = pattern.cast::<PyString>().map_err(|_| {
            Error::WrongType(format!("pattern must be a str, got {}", type_name(pattern)))
        })?;
        let parsed = Pattern::parse(pattern_text.to_str()?)?;
        let capacity = match buffer_size {
            None => shared.buffer_size,
            Some(n) if n >= 1 => n as usize,
            Some(n) => {
                return Err(Error::InvalidArgument(format!(
                    "buffer_size must be at least 1 or None, got {n}"
                ))
                .into())
            }
        };
        let on_full = on_full
            .map(OnFull::parse)
            .transpose()?
            .unwrap_or(shared.on_full);
        let id = shared.next_id.fetch_add(1, Relaxed) + 1;
        let sub = Arc::new(Sub {
            id,
            pattern: parsed.clone(),
            pattern_text: pattern_text.clone().unbind(),
            mailbox: Mailbox::new(capacity, on_full),
            consumer: handler.map_or(Consumer::Loop { reader }, Consumer::Dispatcher),
            filter,
            strict_filter,
            consumer_thread: AtomicU64::new(loop_thread),
        });
        {
            let mut router = lock(&shared.router);
            if let Some(max) = shared.max_subscribers.filter(|max| router.len() >= *max) {
                return Err(helix_error(
                    py,
                    "SubscriberLimitError",
                    format!("the bus has its max_subscribers={max} subscriptions"),
                ));
            }
            router.insert(&parsed, id, sub.clone());
        }
        shared.subscribers_total.fetch_add(1, Relaxed);
        Ok(Subscription {
            sub,
            shared: shared.clone(),
        })
    }

    /// A dispatcher thread's loop: runs plain-function handlers until the bus shuts down.
    /// Calls `on_error(subscription_id, event, exception)` for a handler that raised.
    fn _dispatch(&self, py: Python<'_>, on_error: &Bound<'_, PyAny>) {
        let shared = &*self.shared;
        DISPATCHER_OF.set(shared.id());
        shared.dispatchers.fetch_add(1, SeqCst);
        loop {
            let sub = match shared.next_ready(None) {
                Ok(sub) => sub,
                Err(_) => match py.detach(|| shared.next_ready(Some(Duration::from_secs(1)))) {
                    Ok(sub) => sub,
                    Err(true) => break,
                    Err(false) => continue,
                },
            };
            let Consumer::Dispatcher(handler) = &sub.consumer else {
                continue;
            };
            let batch = sub.mailbox.take(BATCH, None);
            let n = batch.len();
            for (i, event) in batch.into_iter().enumerate() {
                if sub.mailbox.is_closed() {
                    sub.mailbox.untake(n - i);
                    break;
                }
                if let Err(err) = handler.call1(py, (&event,)) {
                    if let Err(err) = on_error.call1((sub.id, &event, err.value(py))) {
                        err.write_unraisable(py, Some(on_error));
                    }
                }
            }
            if sub.mailbox.more() {
                // Back of the line, for fairness; this thread takes the next one itself, so
                // waking another dispatcher would only hand the interpreter lock back and forth.
                lock(&shared.ready).queue.push_back(sub);
            }
        }
        shared.dispatchers.fetch_sub(1, SeqCst);
        DISPATCHER_OF.set(0);
    }

    /// Stops intake: publish and subscribe raise from now on.
    fn _close(&self) {
        self.shared.closed.store(true, SeqCst);
    }

    /// Whether every handler has nothing pending and is not running, leaving out the coroutine
    /// handlers on the thread `except_thread` (they cannot run while it waits). Readers do not
    /// count: they keep what is buffered after the shutdown.
    #[pyo3(signature = (except_thread=None))]
    fn _idle(&self, except_thread: Option<u64>) -> bool {
        let router = lock(&self.shared.router);
        router.resolve_all().iter().all(|sub| match sub.consumer {
            Consumer::Loop { reader: true } => true,
            Consumer::Loop { reader: false } => {
                sub.mailbox.is_idle() || Some(sub.consumer_thread.load(Relaxed)) == except_thread
            }
            Consumer::Dispatcher(_) => sub.mailbox.is_idle(),
        })
    }

    /// Ends every subscription and stops the dispatcher threads. What a handler has not
    /// handled yet counts as dropped; readers can still take what is buffered.
    fn _shutdown(&self, py: Python<'_>) {
        let shared = &self.shared;
        shared.closed.store(true, SeqCst);
        let subs: Vec<Arc<Sub>> = lock(&shared.router).resolve_all();
        for sub in &subs {
            end(
                py,
                shared,
                sub,
                matches!(sub.consumer, Consumer::Loop { reader: true }),
            );
        }
        let mut ready = lock(&shared.ready);
        ready.stopping = true;
        self.shared.work.notify_all();
    }

    /// Dispatcher threads running.
    #[getter]
    fn _dispatchers(&self) -> usize {
        self.shared.dispatchers.load(SeqCst)
    }

    #[getter]
    fn closed(&self) -> bool {
        self.shared.closed.load(SeqCst)
    }

    /// Ids of the subscriptions that an event on `topic` would reach, in delivery order.
    fn _matching(&self, topic: &str) -> PyResult<Vec<u64>> {
        let subs = lock(&self.shared.router).route(topic)?;
        Ok(subs.iter().map(|sub| sub.id).collect())
    }

    /// The kept events that match `pattern`, oldest first, at most the last `limit`.
    #[pyo3(signature = (pattern=">", limit=None))]
    fn history<'py>(
        &self,
        py: Python<'py>,
        pattern: &str,
        limit: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let pattern = Pattern::parse(pattern)?;
        let mut found: Vec<Py<Event>> = Vec::new();
        if let Some(history) = &self.shared.history {
            let kept = lock(history);
            for event in kept.iter().rev() {
                if limit.is_some_and(|limit| found.len() >= limit) {
                    break;
                }
                if pattern.matches(event.get().topic.bind(py).to_str()?) {
                    found.push(event.clone_ref(py));
                }
            }
        }
        found.reverse();
        PyList::new(py, found)
    }

    /// (published, delivered, dropped, active subscriptions, subscriptions ever made, lag in
    /// seconds: the age of the oldest pending event).
    fn _stats(&self, py: Python<'_>) -> (u64, u64, u64, usize, u64, f64) {
        let shared = &self.shared;
        let subs: Vec<Arc<Sub>> = lock(&shared.router).resolve_all();
        let (mut delivered, mut dropped) = *lock(&shared.retired);
        let mut oldest = f64::INFINITY;
        for sub in &subs {
            let (d, x, _) = sub.mailbox.counts();
            delivered += d;
            dropped += x;
            if let Some(ts) = sub.mailbox.oldest(|e| e.get().timestamp) {
                oldest = oldest.min(ts);
            }
        }
        let lag = if oldest.is_finite() {
            (now() - oldest).max(0.0)
        } else {
            0.0
        };
        let _ = py;
        (
            shared.published.load(Relaxed),
            delivered,
            dropped,
            subs.len(),
            shared.subscribers_total.load(Relaxed),
            lag,
        )
    }
}

/// Counts `event` published, keeps it in the history, and hands it to those of `subs` whose
/// filter takes it.
fn send(bus: &Bound<'_, EventBus>, subs: &[Arc<Sub>], event: Py<Event>) -> PyResult<Py<Event>> {
    let py = bus.py();
    let shared = &*bus.get().shared;
    let wanted = filter(bus, subs, &event)?;
    shared.published.fetch_add(1, Relaxed);
    if let Some(history) = &shared.history {
        let mut kept = lock(history);
        if kept.len() == shared.history_size {
            kept.pop_front();
        }
        kept.push_back(event.clone_ref(py));
    }
    for (i, sub) in subs.iter().enumerate() {
        if wanted.as_ref().is_none_or(|w| w[i]) {
            shared.deliver(py, sub, &event);
        }
    }
    Ok(event)
}

/// Runs the filters of `subs` that have one; None when none has. A strict filter's error fails
/// the publish before anything is delivered; another's is reported as a handler's would be
/// (`_handler_failed`), and the event skips that subscriber.
fn filter(
    bus: &Bound<'_, EventBus>,
    subs: &[Arc<Sub>],
    event: &Py<Event>,
) -> PyResult<Option<Vec<bool>>> {
    let py = bus.py();
    {
        if subs.iter().all(|sub| sub.filter.is_none()) {
            return Ok(None);
        }
        let mut wanted = Vec::with_capacity(subs.len());
        for sub in subs {
            let Some(filter) = &sub.filter else {
                wanted.push(true);
                continue;
            };
            match filter.call1(py, (event,)).and_then(|r| r.is_truthy(py)) {
                Ok(keep) => wanted.push(keep),
                Err(err) if sub.strict_filter => return Err(err),
                Err(err) => {
                    let report = intern!(py, "_handler_failed");
                    if let Err(err) = bus.call_method1(report, (sub.id, event, err.value(py))) {
                        err.write_unraisable(py, Some(bus));
                    }
                    wanted.push(false);
                }
            }
        }
        Ok(Some(wanted))
    }
}

/// Ends `sub`: out of the router, its mailbox closed (or only sealed: `keep` what is pending
/// for its reader), its parked consumer woken to see it.
fn end(py: Python<'_>, shared: &Shared, sub: &Arc<Sub>, keep: bool) -> bool {
    let removed = lock(&shared.router).remove(&sub.pattern, sub.id).is_some();
    let waker = if keep {
        sub.mailbox.seal()
    } else {
        let (left, waker) = sub.mailbox.close();
        drop(left);
        waker
    };
    if removed {
        shared.retire(sub);
    }
    if let Some(waker) = waker {
        if let Err(err) = waker.call0(py) {
            err.write_unraisable(py, Some(waker.bind(py)));
        }
    }
    removed
}

/// The core of `helixrt.Subscription`: one pattern's mailbox on one bus.
#[pyclass(module = "helixrt._core", name = "Subscription", subclass, frozen)]
pub struct Subscription {
    sub: Arc<Sub>,
    shared: Arc<Shared>,
}

#[pymethods]
impl Subscription {
    #[getter]
    fn id(&self) -> u64 {
        self.sub.id
    }

    #[getter]
    fn pattern(&self, py: Python<'_>) -> Py<PyString> {
        self.sub.pattern_text.clone_ref(py)
    }

    /// False once unsubscribed or the bus has shut down.
    #[getter]
    fn active(&self) -> bool {
        !self.sub.mailbox.is_closed()
    }

    #[getter]
    fn buffer_size(&self) -> usize {
        self.sub.mailbox.capacity()
    }

    #[getter]
    fn on_full(&self) -> &'static str {
        match self.sub.mailbox.on_full() {
            OnFull::DropOldest => "drop_oldest",
            OnFull::DropNewest => "drop_newest",
            OnFull::Block => "block",
        }
    }

    /// Stops delivery; what is pending is dropped. Safe to call more than once, from anywhere.
    fn unsubscribe(&self, py: Python<'_>) {
        end(py, &self.shared, &self.sub, false);
    }

    /// Takes up to `max` pending events. On an empty mailbox, parks `waker` to be called (once,
    /// from the publishing thread) when the next event arrives.
    #[pyo3(signature = (max, waker=None))]
    fn _take<'py>(
        &self,
        py: Python<'py>,
        max: usize,
        waker: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        if waker.is_some() {
            self.sub.consumer_thread.store(thread_ident(), Relaxed);
        }
        PyList::new(py, self.sub.mailbox.take(max, waker))
    }

    /// The consumer stopped `n` events short of the end of its batch (the subscription ended):
    /// they count as dropped.
    fn _untake(&self, n: usize) {
        self.sub.mailbox.untake(n);
    }

    /// (delivered, dropped, pending).
    fn _counts(&self) -> (u64, u64, usize) {
        self.sub.mailbox.counts()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "<Subscription {} {} {}>",
            self.sub.id,
            self.sub.pattern_text.bind(py).repr()?,
            if self.active() { "active" } else { "ended" }
        ))
    }
}
