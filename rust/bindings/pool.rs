//! `helixrt._core.WorkerPool`: the Rust half of `helixrt.WorkerPool`.
//!
//! Tasks (callable, arguments, optional Future) wait in a `crate::pool::TaskQueue`. Worker
//! threads are Python threads (so thread names, `threading.local` and the initializer behave
//! as with ThreadPoolExecutor) that call `_work()`: a Rust loop that keeps the interpreter lock
//! while tasks keep coming, and lets go of it only to park when the queue is empty. The Python
//! subclass adds the `concurrent.futures.Executor` surface.

use std::cell::Cell;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::errors::{helix_error, Error};
use crate::pool::{Counters, Histogram, Refused, TaskQueue};

struct Task {
    func: Py<PyAny>,
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
    future: Option<Py<PyAny>>,
    enqueued: Instant,
    deadline: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OnFull {
    Block,
    Reject,
    CallerRuns,
    DropOldest,
}

thread_local! {
    /// The pool whose worker this thread is (its address), so that a task submitting into
    /// its own full pool gets an error instead of waiting for itself.
    static WORKER_OF: Cell<usize> = const { Cell::new(0) };
}

#[pyclass(module = "helixrt._core", name = "WorkerPool", subclass, frozen)]
pub struct WorkerPool {
    queue: TaskQueue<Task>,
    on_full: OnFull,
    max_workers: usize,
    /// Worker threads started or about to be.
    workers: AtomicUsize,
    active: AtomicUsize,
    abandoned: AtomicBool,
    task_timeout: Option<Duration>,
    counters: Counters,
    wait_times: Histogram,
    run_times: Histogram,
    /// `on_error(exc)` for tasks without a Future; set by the Python class.
    report: Py<PyAny>,
    /// Called with (future, deadline in seconds from now) for tasks that start with a deadline.
    watch: Py<PyAny>,
    /// Starts one worker thread (a Python thread that calls `_work`).
    start_worker: Py<PyAny>,
    /// The class of the pool's Futures (see `new_future`).
    future_class: Py<PyType>,
    completion: Completion,
    /// Why the pool broke (a worker's initializer failed), once it has.
    broken: std::sync::OnceLock<String>,
}

fn parse_on_full(value: &str) -> Result<OnFull, Error> {
    Ok(match value {
        "block" => OnFull::Block,
        "reject" => OnFull::Reject,
        "caller_runs" => OnFull::CallerRuns,
        "drop_oldest" => OnFull::DropOldest,
        other => {
            return Err(Error::InvalidArgument(format!(
                "on_full must be 'block', 'reject', 'caller_runs' or 'drop_oldest', got {other:?}"
            )))
        }
    })
}

fn timeout_from(name: &str, seconds: Option<f64>) -> Result<Option<Duration>, Error> {
    match seconds {
        None => Ok(None),
        Some(s) if s > 0.0 && s.is_finite() => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(Error::InvalidArgument(format!(
            "{name} must be a positive number of seconds or None, got {s}"
        ))),
    }
}

impl WorkerPool {
    fn id(&self) -> usize {
        self as *const WorkerPool as usize
    }

    /// Runs one task on this thread (a worker, or the submitter under "caller_runs").
    fn run(&self, py: Python<'_>, task: Task) {
        let started = Instant::now();
        if task.deadline.is_some_and(|at| started >= at) {
            self.counters.timed_out.fetch_add(1, Relaxed);
            if let Some(future) = &task.future {
                let error = helix_error(
                    py,
                    "TaskTimeoutError",
                    "the task's deadline passed while it was queued",
                );
                let _ =
                    future.call_method1(py, intern!(py, "set_exception"), (error.into_value(py),));
            }
            return;
        }
        if let Some(future) = &task.future {
            let running = if self.completion.start(py, future.bind(py)) {
                Ok(true)
            } else {
                future
                    .call_method0(py, intern!(py, "set_running_or_notify_cancel"))
                    .and_then(|r| r.is_truthy(py))
            };
            if !matches!(running, Ok(true)) {
                self.counters.cancelled.fetch_add(1, Relaxed);
                return;
            }
            if let Some(deadline) = task.deadline {
                let left = deadline.saturating_duration_since(started).as_secs_f64();
                if let Err(err) = self.watch.call1(py, (future, left)) {
                    err.write_unraisable(py, None);
                }
            }
        }
        self.wait_times.record(started - task.enqueued);
        self.active.fetch_add(1, Relaxed);
        let result = task
            .func
            .bind(py)
            .call(task.args.bind(py), task.kwargs.as_ref().map(|k| k.bind(py)));
        self.active.fetch_sub(1, Relaxed);
        self.run_times.record(started.elapsed());
        let counter = match (&result, &task.future) {
            (Ok(value), Some(future)) => {
                // Fails only if the watchdog already timed the future out: then the result is
                // discarded, and the task was counted as timed out.
                let future = future.bind(py);
                if !self
                    .completion
                    .finish(future, intern!(py, "_result"), value)
                    && future
                        .call_method1(intern!(py, "set_result"), (value,))
                        .is_err()
                {
                    return;
                }
                &self.counters.completed
            }
            (Err(err), Some(future)) => {
                let future = future.bind(py);
                let exception = err.value(py);
                if !self
                    .completion
                    .finish(future, intern!(py, "_exception"), exception)
                    && future
                        .call_method1(intern!(py, "set_exception"), (exception,))
                        .is_err()
                {
                    return;
                }
                &self.counters.failed
            }
            (Err(err), None) => {
                if let Err(report_err) = self.report.call1(py, (err.value(py),)) {
                    report_err.write_unraisable(py, None);
                }
                &self.counters.failed
            }
            (Ok(_), None) => &self.counters.completed,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Queues a task by the pool's policy, starting a worker thread when none is idle.
    fn push(&self, py: Python<'_>, task: Task, priority: i64) -> PyResult<()> {
        self.counters.submitted.fetch_add(1, Relaxed);
        let task = match self.queue.try_push(task, priority) {
            Ok(()) => return self.ensure_worker(py),
            Err(Refused::Closed(task)) => return Err(self.refuse_closed(py, task)),
            Err(Refused::Full(task)) => task,
        };
        match self.on_full {
            OnFull::Reject => {
                self.counters.rejected.fetch_add(1, Relaxed);
                Err(helix_error(
                    py,
                    "QueueFullError",
                    format!(
                        "the pool's queue is full ({} tasks) and on_full='reject'",
                        self.queue.capacity()
                    ),
                ))
            }
            OnFull::CallerRuns => {
                self.run(py, task);
                Ok(())
            }
            OnFull::DropOldest => {
                let mut task = task;
                loop {
                    if let Some(oldest) = self.queue.pop_oldest() {
                        self.counters.dropped.fetch_add(1, Relaxed);
                        if let Some(future) = &oldest.future {
                            future.call_method0(py, intern!(py, "cancel"))?;
                        }
                    }
                    match self.queue.try_push(task, priority) {
                        Ok(()) => return self.ensure_worker(py),
                        Err(Refused::Closed(back)) => return Err(self.refuse_closed(py, back)),
                        Err(Refused::Full(back)) => task = back,
                    }
                }
            }
            OnFull::Block => {
                if WORKER_OF.get() == self.id() {
                    self.counters.rejected.fetch_add(1, Relaxed);
                    return Err(helix_error(
                        py,
                        "QueueFullError",
                        format!(
                            "a task submitted into its own pool, whose queue is full ({} tasks): \
                         waiting would deadlock; use on_full='caller_runs' or a larger queue_size",
                            self.queue.capacity()
                        ),
                    ));
                }
                self.ensure_worker(py)?;
                match py.detach(|| self.queue.push_wait(task, priority, None)) {
                    Ok(()) => self.ensure_worker(py),
                    Err(Refused::Closed(back) | Refused::Full(back)) => {
                        Err(self.refuse_closed(py, back))
                    }
                }
            }
        }
    }

    #[cold]
    fn refuse_closed(&self, py: Python<'_>, task: Task) -> PyErr {
        self.counters.rejected.fetch_add(1, Relaxed);
        drop(task);
        if let Some(reason) = self.broken.get() {
            helix_error(py, "BrokenPoolError", reason.clone())
        } else if self.abandoned.load(SeqCst) {
            helix_error(py, "PoolClosedError", "the pool was created before os.fork(): it cannot be used in the child process; create a new one")
        } else {
            helix_error(
                py,
                "PoolClosedError",
                "cannot submit to a pool that was shut down",
            )
        }
    }

    /// Starts a worker thread when none is idle and fewer than `max_workers` exist.
    #[inline]
    fn ensure_worker(&self, py: Python<'_>) -> PyResult<()> {
        if self.queue.idle_consumers() > 0 {
            return Ok(());
        }
        let claimed = self
            .workers
            .fetch_update(SeqCst, SeqCst, |n| (n < self.max_workers).then_some(n + 1))
            .is_ok();
        if claimed {
            self.start_worker.call0(py)?;
        }
        Ok(())
    }

    /// A new Future of the pool's class, allocated without running `__init__`: the class keeps
    /// every default at class level and needs none (`helixrt.pool._PoolFuture`). Calling the
    /// class would cost more than the rest of a submission.
    fn new_future(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let class = self.future_class.bind(py);
        let type_ptr = class.as_type_ptr();
        // SAFETY: `type_ptr` is a live heap type (we hold a reference); `tp_alloc` is the slot
        // every type has (set by `PyType_Ready`), which returns a new reference or NULL with
        // an exception set, as `from_owned_ptr_or_err` expects.
        unsafe {
            let alloc = (*type_ptr)
                .tp_alloc
                .unwrap_or(pyo3::ffi::PyType_GenericAlloc);
            Bound::from_owned_ptr_or_err(py, alloc(type_ptr, 0)).map(Bound::unbind)
        }
    }

    fn make_task(
        &self,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
        future: Option<Py<PyAny>>,
        timeout: Option<Duration>,
    ) -> Task {
        let enqueued = Instant::now();
        let deadline = timeout.or(self.task_timeout).map(|t| enqueued + t);
        Task {
            func,
            args,
            kwargs,
            future,
            enqueued,
            deadline,
        }
    }
}

#[pymethods]
impl WorkerPool {
    #[new]
    #[pyo3(signature = (max_workers, queue_size, on_full, task_timeout, report, watch, start_worker, future_class, future_parts))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_workers: i64,
        queue_size: i64,
        on_full: &str,
        task_timeout: Option<f64>,
        report: Py<PyAny>,
        watch: Py<PyAny>,
        start_worker: Py<PyAny>,
        future_class: Py<PyType>,
        future_parts: FutureParts,
    ) -> PyResult<Self> {
        let (lock, condition_waiters, pending, running, finished, no_callbacks) = future_parts;
        if max_workers < 1 {
            return Err(Error::InvalidArgument(format!(
                "max_workers must be an int >= 1, got {max_workers}"
            ))
            .into());
        }
        if queue_size < 1 {
            return Err(Error::InvalidArgument(format!(
                "queue_size must be an int >= 1, got {queue_size}"
            ))
            .into());
        }
        Ok(WorkerPool {
            queue: TaskQueue::new(queue_size as usize),
            on_full: parse_on_full(on_full)?,
            max_workers: max_workers as usize,
            workers: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
            task_timeout: timeout_from("task_timeout", task_timeout)?,
            counters: Counters::default(),
            wait_times: Histogram::default(),
            run_times: Histogram::default(),
            report,
            watch,
            start_worker,
            future_class,
            completion: Completion {
                lock,
                condition_waiters,
                pending,
                running,
                finished,
                no_callbacks,
            },
            broken: std::sync::OnceLock::new(),
        })
    }

    /// Runs `func(*args, **kwargs)` on a worker; returns its Future.
    #[pyo3(signature = (func, /, *args, **kwargs))]
    fn submit(
        &self,
        py: Python<'_>,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let future = self.new_future(py)?;
        let task = self.make_task(func, args, kwargs, Some(future.clone_ref(py)), None);
        self.push(py, task, 0)?;
        Ok(future)
    }

    /// Runs `func(*args, **kwargs)` on a worker, with no Future: a failure goes to the pool's
    /// `on_error`, or to the `helixrt.pool` logger.
    #[pyo3(signature = (func, /, *args, **kwargs))]
    fn submit_nowait(
        &self,
        py: Python<'_>,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
    ) -> PyResult<()> {
        let task = self.make_task(func, args, kwargs, None, None);
        self.push(py, task, 0)
    }

    /// Runs `func(*args)` for each tuple in `iterable_of_args`, in one call; returns the
    /// Futures in order. If a submission fails (a full queue under "reject", a shutdown), the
    /// error is raised and the tasks submitted before it still run.
    fn submit_many(
        &self,
        py: Python<'_>,
        func: Py<PyAny>,
        iterable_of_args: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let mut futures = Vec::new();
        for args in iterable_of_args.try_iter()? {
            let args = args?;
            let args = match args.cast_into::<PyTuple>() {
                Ok(tuple) => tuple,
                Err(err) => {
                    return Err(Error::WrongType(format!(
                        "submit_many takes an iterable of argument tuples, got an item of type {}",
                        err.into_inner().get_type().name()?
                    ))
                    .into())
                }
            };
            let future = self.new_future(py)?;
            let task = self.make_task(
                func.clone_ref(py),
                args.unbind(),
                None,
                Some(future.clone_ref(py)),
                None,
            );
            self.push(py, task, 0)?;
            futures.push(future);
        }
        Ok(futures)
    }

    /// Queues `func(*args, **kwargs)`, completing `future` (or reporting a failure when it is
    /// None).
    #[pyo3(signature = (func, args, kwargs, future, priority=0, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn _push(
        &self,
        py: Python<'_>,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
        future: Option<Py<PyAny>>,
        priority: i64,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let timeout = timeout_from("timeout", timeout)?;
        let task = self.make_task(func, args, kwargs, future, timeout);
        self.push(py, task, priority)
    }

    /// The worker loop: runs tasks until the pool shuts down and its queue is empty. Keeps
    /// the interpreter lock while there is work and parks without it when there is none.
    fn _work(&self, py: Python<'_>) {
        WORKER_OF.set(self.id());
        loop {
            while let Some(task) = self.queue.pop() {
                self.run(py, task);
            }
            match py.detach(|| self.queue.pop_wait(Duration::from_secs(1))) {
                Some(task) => {
                    self.queue.pass_on_backlog();
                    self.run(py, task);
                }
                None if self.queue.is_closed() && self.queue.is_empty() => break,
                None => {}
            }
        }
        WORKER_OF.set(0);
    }

    /// A worker thread that was to start did not (or ended): let another be started.
    fn _worker_gone(&self) {
        self.workers.fetch_sub(1, SeqCst);
    }

    /// Stops intake and wakes every waiting submitter and parked worker.
    fn _close(&self) {
        self.queue.close();
    }

    /// Takes every queued task out; returns their Futures (None for fire-and-forget tasks).
    fn _drain(&self, py: Python<'_>) -> Vec<Option<Py<PyAny>>> {
        let tasks = py.detach(|| self.queue.drain());
        tasks.into_iter().map(|task| task.future).collect()
    }

    /// Counts tasks the Python side cancelled or timed out.
    fn _count(&self, what: &str, n: u64) -> PyResult<()> {
        let counter = match what {
            "cancelled" => &self.counters.cancelled,
            "timed_out" => &self.counters.timed_out,
            "completed" => &self.counters.completed,
            "failed" => &self.counters.failed,
            _ => return Err(Error::InvalidArgument(format!("no counter {what:?}")).into()),
        };
        counter.fetch_add(n, Relaxed);
        Ok(())
    }

    /// Refuses all further work: a worker's initializer failed.
    fn _set_broken(&self, reason: String) {
        let _ = self.broken.set(reason);
        self.queue.close();
    }

    /// Marks the pool unusable without touching its locks (for the child after os.fork()).
    fn _abandon(&self) {
        self.abandoned.store(true, SeqCst);
        self.queue.mark_closed();
    }

    #[getter]
    fn _max_workers(&self) -> usize {
        self.max_workers
    }

    #[getter]
    fn _queue_size(&self) -> usize {
        self.queue.capacity()
    }

    /// (submitted, completed, failed, rejected, dropped, cancelled, timed_out, active,
    /// queued, workers, wait mean, wait p99, run mean, run p99).
    fn _stats(&self) -> StatsTuple {
        let c = &self.counters;
        let (wait_mean, wait_p99) = self.wait_times.summary();
        let (run_mean, run_p99) = self.run_times.summary();
        (
            [
                c.submitted.load(Relaxed),
                c.completed.load(Relaxed),
                c.failed.load(Relaxed),
                c.rejected.load(Relaxed),
                c.dropped.load(Relaxed),
                c.cancelled.load(Relaxed),
                c.timed_out.load(Relaxed),
            ],
            [
                self.active.load(SeqCst),
                self.queue.len(),
                self.workers.load(SeqCst),
            ],
            [wait_mean, wait_p99, run_mean, run_p99],
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.report)?;
        visit.call(&self.watch)?;
        visit.call(&self.start_worker)?;
        visit.call(&self.future_class)?;
        self.completion.traverse(&visit)
    }
}

/// (the Futures' lock, the Condition's waiter deque, PENDING, RUNNING, FINISHED, the empty
/// callbacks tuple): what `Completion` needs to know of the pool's Future class.
type FutureParts = (
    Py<FutureLock>,
    Py<PyAny>,
    Py<PyAny>,
    Py<PyAny>,
    Py<PyAny>,
    Py<PyAny>,
);
type StatsTuple = ([u64; 7], [usize; 3], [f64; 4]);

/// The fast path for the two state changes a worker makes on each Future (PENDING to RUNNING,
/// RUNNING to FINISHED), equivalent to `_PoolFuture`'s methods when nobody holds the pool's
/// Future lock, nobody waits and no callback is registered. With the interpreter lock held and
/// no Python code run between the checks and the writes, no other thread can see the Future
/// half-changed. Free-threaded builds have no such guarantee and always call the methods.
struct Completion {
    lock: Py<FutureLock>,
    /// The pool Condition's deque of waiting threads.
    condition_waiters: Py<PyAny>,
    pending: Py<PyAny>,
    running: Py<PyAny>,
    finished: Py<PyAny>,
    /// `_PoolFuture._done_callbacks` while no callback is registered.
    no_callbacks: Py<PyAny>,
}

impl Completion {
    #[cfg(not(Py_GIL_DISABLED))]
    fn start(&self, py: Python<'_>, future: &Bound<'_, PyAny>) -> bool {
        let state = intern!(py, "_state");
        self.lock.get().is_free()
            && future.getattr(state).is_ok_and(|s| s.is(&self.pending))
            && future.setattr(state, &self.running).is_ok()
    }

    /// Stores `value` as the Future's `field` (`_result` or `_exception`) and finishes it.
    #[cfg(not(Py_GIL_DISABLED))]
    fn finish(
        &self,
        future: &Bound<'_, PyAny>,
        field: &Bound<'_, PyString>,
        value: &Bound<'_, PyAny>,
    ) -> bool {
        let py = future.py();
        let state = intern!(py, "_state");
        self.lock.get().is_free()
            && future.getattr(state).is_ok_and(|s| s.is(&self.running))
            && future
                .getattr(intern!(py, "_waiter_list"))
                .is_ok_and(|w| w.is_none())
            && future
                .getattr(intern!(py, "_done_callbacks"))
                .is_ok_and(|c| c.is(&self.no_callbacks))
            && self.condition_waiters.bind(py).len().is_ok_and(|n| n == 0)
            && future.setattr(field, value).is_ok()
            && future.setattr(state, &self.finished).is_ok()
    }

    #[cfg(Py_GIL_DISABLED)]
    fn start(&self, _py: Python<'_>, _future: &Bound<'_, PyAny>) -> bool {
        false
    }

    #[cfg(Py_GIL_DISABLED)]
    fn finish(
        &self,
        _future: &Bound<'_, PyAny>,
        _field: &Bound<'_, PyString>,
        _value: &Bound<'_, PyAny>,
    ) -> bool {
        false
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.lock)?;
        visit.call(&self.condition_waiters)?;
        visit.call(&self.no_callbacks)
    }
}

/// `helixrt._core.FutureLock`: the reentrant lock the Futures of one pool share, in place of a
/// `threading.RLock`, with the methods `threading.Condition` uses. Being Rust, it lets a worker
/// see whether anyone holds it without taking it: while the interpreter lock is held and no
/// Python code runs, a Future whose lock is free cannot change under the worker, which then
/// completes it in a few field writes instead of two calls into Python (`Completion`).
#[pyclass(module = "helixrt._core", name = "FutureLock", frozen)]
pub struct FutureLock {
    /// Thread ident of the holder, 0 when free.
    owner: AtomicU64,
    /// Times the holder acquired it; only the holder touches it.
    count: AtomicU64,
    sleep: Mutex<()>,
    freed: Condvar,
    waiters: AtomicUsize,
}

pub(crate) fn thread_ident() -> u64 {
    // SAFETY: a plain query of the calling thread's identifier, as threading.get_ident().
    // (`c_ulong` is 64 bits wide on the platforms helixrt builds for.)
    #[allow(clippy::useless_conversion)]
    let ident = u64::from(unsafe { pyo3::ffi::PyThread_get_thread_ident() });
    ident
}

impl FutureLock {
    pub fn is_free(&self) -> bool {
        self.owner.load(SeqCst) == 0
    }

    fn try_take(&self, me: u64) -> bool {
        self.owner.compare_exchange(0, me, SeqCst, SeqCst).is_ok()
    }

    /// Waits (without the interpreter lock) until the lock is taken for `me` or the deadline.
    fn take_waiting(&self, py: Python<'_>, me: u64, deadline: Option<Instant>) -> bool {
        py.detach(|| {
            let mut guard = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            self.waiters.fetch_add(1, SeqCst);
            let taken = loop {
                if self.try_take(me) {
                    break true;
                }
                let wait = match deadline {
                    None => Duration::from_millis(50),
                    Some(at) => match at.checked_duration_since(Instant::now()) {
                        Some(left) if !left.is_zero() => left.min(Duration::from_millis(50)),
                        _ => break false,
                    },
                };
                guard = self
                    .freed
                    .wait_timeout(guard, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            };
            self.waiters.fetch_sub(1, SeqCst);
            taken
        })
    }

    fn free(&self) {
        self.owner.store(0, SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            let _guard = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            self.freed.notify_one();
        }
    }
}

#[pymethods]
impl FutureLock {
    #[new]
    fn new() -> Self {
        FutureLock {
            owner: AtomicU64::new(0),
            count: AtomicU64::new(0),
            sleep: Mutex::new(()),
            freed: Condvar::new(),
            waiters: AtomicUsize::new(0),
        }
    }

    #[pyo3(signature = (blocking=true, timeout=-1.0))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: f64) -> PyResult<bool> {
        if !blocking && timeout >= 0.0 {
            return Err(Error::InvalidArgument(
                "can't specify a timeout for a non-blocking call".into(),
            )
            .into());
        }
        let me = thread_ident();
        if self.owner.load(SeqCst) == me {
            self.count.fetch_add(1, SeqCst);
            return Ok(true);
        }
        let taken = self.try_take(me)
            || (blocking && {
                let deadline = if timeout < 0.0 {
                    None
                } else {
                    Some(Instant::now() + Duration::from_secs_f64(timeout))
                };
                self.take_waiting(py, me, deadline)
            });
        if taken {
            self.count.store(1, SeqCst);
        }
        Ok(taken)
    }

    fn release(&self) -> PyResult<()> {
        if self.owner.load(SeqCst) != thread_ident() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "cannot release un-acquired lock",
            ));
        }
        if self.count.fetch_sub(1, SeqCst) == 1 {
            self.free();
        }
        Ok(())
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, -1.0)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.release()
    }

    fn _is_owned(&self) -> bool {
        self.owner.load(SeqCst) == thread_ident()
    }

    /// For `threading.Condition.wait`: releases the lock however many times it is held.
    fn _release_save(&self) -> PyResult<(u64, u64)> {
        let me = thread_ident();
        if self.owner.load(SeqCst) != me {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "cannot release un-acquired lock",
            ));
        }
        let count = self.count.swap(0, SeqCst);
        self.free();
        Ok((count, me))
    }

    /// For `threading.Condition.wait`: takes the lock back as `_release_save` left it.
    fn _acquire_restore(&self, py: Python<'_>, state: (u64, u64)) {
        let me = thread_ident();
        if !self.try_take(me) {
            self.take_waiting(py, me, None);
        }
        self.count.store(state.0, SeqCst);
    }
}
