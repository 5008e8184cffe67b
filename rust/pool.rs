//! The worker pool's task queue: bounded, multi-producer multi-consumer, with priority lanes,
//! parking for idle consumers and for producers waiting for room, and the pool's counters.
//!
//! It knows nothing of Python: items are generic, and whoever calls a blocking method has
//! already let go of anything other threads need (the bindings detach from the interpreter).
//! The common case, priority 0, is a lock-free array queue; other priorities go to lanes
//! behind a mutex that is only touched when such items exist. One atomic counter of reserved
//! places enforces the bound across all lanes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

/// Why a push did not enqueue; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<T> {
    Full(T),
    Closed(T),
}

pub struct TaskQueue<T> {
    capacity: usize,
    /// Places taken: items queued plus pushes in progress.
    reserved: AtomicUsize,
    normal: ArrayQueue<T>,
    /// Lanes for priorities other than 0, highest first (keys are negated priorities).
    lanes: Mutex<BTreeMap<i64, VecDeque<T>>>,
    in_lanes: AtomicUsize,
    closed: AtomicBool,
    /// Parking: consumers wait on `work`, producers on `room`, both under `sleep`.
    sleep: Mutex<()>,
    work: Condvar,
    room: Condvar,
    idle_consumers: AtomicUsize,
    /// A parked consumer was woken and has not looked at the queue yet: waking more would
    /// only make them queue up for the interpreter lock (see `wake_consumer`).
    wake_pending: AtomicBool,
    waiting_producers: AtomicUsize,
    /// Producers were woken and have not pushed yet (see `release`).
    room_pending: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T> TaskQueue<T> {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity >= 1, "capacity must be at least 1");
        TaskQueue {
            capacity,
            reserved: AtomicUsize::new(0),
            normal: ArrayQueue::new(capacity),
            lanes: Mutex::new(BTreeMap::new()),
            in_lanes: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            sleep: Mutex::new(()),
            work: Condvar::new(),
            room: Condvar::new(),
            idle_consumers: AtomicUsize::new(0),
            wake_pending: AtomicBool::new(false),
            waiting_producers: AtomicUsize::new(0),
            room_pending: AtomicBool::new(false),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items queued (and pushes in progress).
    pub fn len(&self) -> usize {
        self.reserved.load(SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    pub fn idle_consumers(&self) -> usize {
        self.idle_consumers.load(SeqCst)
    }

    fn reserve(&self) -> bool {
        self.reserved
            .fetch_update(SeqCst, SeqCst, |n| (n < self.capacity).then_some(n + 1))
            .is_ok()
    }

    /// Enqueues without waiting.
    pub fn try_push(&self, item: T, priority: i64) -> Result<(), Refused<T>> {
        if self.is_closed() {
            return Err(Refused::Closed(item));
        }
        if !self.reserve() {
            return Err(Refused::Full(item));
        }
        self.enqueue(item, priority);
        Ok(())
    }

    /// Enqueues, waiting for room while the queue is full, until `deadline` if one is given.
    /// Closing the queue wakes the waiter, which gets its item back.
    pub fn push_wait(
        &self,
        item: T,
        priority: i64,
        deadline: Option<Instant>,
    ) -> Result<(), Refused<T>> {
        let mut item = item;
        loop {
            match self.try_push(item, priority) {
                Err(Refused::Full(back)) => item = back,
                other => return other,
            }
            let wait = match deadline {
                None => Duration::from_millis(100),
                Some(at) => match at.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(Duration::from_millis(100)),
                    _ => return Err(Refused::Full(item)),
                },
            };
            // Announce the wait, then look again: a pop either sees the announcement (and
            // wakes us under the lock) or happened before the look (which then finds room).
            let guard = lock(&self.sleep);
            self.waiting_producers.fetch_add(1, SeqCst);
            self.room_pending.store(false, SeqCst);
            if self.len() > self.capacity / 2 && !self.is_closed() {
                drop(self.room.wait_timeout(guard, wait));
            } else {
                drop(guard);
            }
            self.waiting_producers.fetch_sub(1, SeqCst);
        }
    }

    fn enqueue(&self, item: T, priority: i64) {
        if priority == 0 {
            // A place was reserved, so the array has room.
            if self.normal.push(item).is_err() {
                unreachable!("a reserved place is always free");
            }
        } else {
            let mut lanes = lock(&self.lanes);
            lanes.entry(-priority).or_default().push_back(item);
            self.in_lanes.fetch_add(1, SeqCst);
        }
        self.wake_consumer();
    }

    /// Wakes one parked consumer, unless none is parked or one is already on its way. A
    /// consumer that finds more work queued behind the item it took wakes the next one, so
    /// tasks that block (on I/O, say) still spread over the workers.
    #[inline]
    pub fn wake_consumer(&self) {
        if self.idle_consumers.load(SeqCst) > 0 && !self.wake_pending.swap(true, SeqCst) {
            let _guard = lock(&self.sleep);
            self.work.notify_one();
        }
    }

    /// Wakes another consumer if items wait behind the one just taken.
    #[inline]
    pub fn pass_on_backlog(&self) {
        if !self.is_empty() {
            self.wake_consumer();
        }
    }

    /// Dequeues the next item without waiting: the highest priority first, FIFO within one.
    pub fn pop(&self) -> Option<T> {
        let item = self.take()?;
        self.release();
        Some(item)
    }

    fn take(&self) -> Option<T> {
        if self.in_lanes.load(SeqCst) == 0 {
            return self.normal.pop();
        }
        let mut lanes = lock(&self.lanes);
        let high = lanes.first_key_value().is_some_and(|(&key, _)| key < 0);
        if !high {
            if let Some(item) = self.normal.pop() {
                return Some(item);
            }
        }
        let mut entry = lanes.first_entry()?;
        let item = entry.get_mut().pop_front();
        if entry.get().is_empty() {
            entry.remove();
        }
        if item.is_some() {
            self.in_lanes.fetch_sub(1, SeqCst);
        }
        item.or_else(|| self.normal.pop())
    }

    /// Frees a place. Waiting producers are woken once the queue is half empty, and once
    /// until they push again: waking them for every free place would hand the interpreter
    /// lock back and forth for each task.
    fn release(&self) {
        let left = self.reserved.fetch_sub(1, SeqCst) - 1;
        if left <= self.capacity / 2
            && self.waiting_producers.load(SeqCst) > 0
            && !self.room_pending.swap(true, SeqCst)
        {
            let _guard = lock(&self.sleep);
            self.room.notify_all();
        }
    }

    /// Dequeues, parking while the queue is empty, until `timeout` passes or the queue is
    /// closed and empty (then `None`).
    pub fn pop_wait(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.pop() {
                return Some(item);
            }
            if self.is_closed() && self.is_empty() {
                return None;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            // Announce the wait, then look again (see `push_wait`).
            let guard = lock(&self.sleep);
            self.idle_consumers.fetch_add(1, SeqCst);
            // A wake-up announced while no consumer was waiting reached nobody: this one
            // takes over from it (under the lock, so a push after this notifies us).
            self.wake_pending.store(false, SeqCst);
            if self.is_empty() && !self.is_closed() {
                drop(self.work.wait_timeout(guard, left));
                self.wake_pending.store(false, SeqCst);
            } else {
                drop(guard);
            }
            self.idle_consumers.fetch_sub(1, SeqCst);
        }
    }

    /// Takes the item that has waited longest in the lowest lane that has one (for the
    /// "drop oldest" policy): the one that would otherwise run last among the oldest.
    pub fn pop_oldest(&self) -> Option<T> {
        let item = if self.in_lanes.load(SeqCst) == 0 {
            self.normal.pop()
        } else {
            let mut lanes = lock(&self.lanes);
            let low = lanes.last_key_value().is_some_and(|(&key, _)| key > 0);
            let from_lane = if low || self.normal.is_empty() {
                lanes.last_entry().and_then(|mut entry| {
                    let item = entry.get_mut().pop_front();
                    if entry.get().is_empty() {
                        entry.remove();
                    }
                    item
                })
            } else {
                None
            };
            match from_lane {
                Some(item) => {
                    self.in_lanes.fetch_sub(1, SeqCst);
                    Some(item)
                }
                None => self.normal.pop(),
            }
        }?;
        self.release();
        Some(item)
    }

    /// Takes every queued item, in the order they would have run.
    pub fn drain(&self) -> Vec<T> {
        let mut items = Vec::new();
        while let Some(item) = self.pop() {
            items.push(item);
        }
        items
    }

    /// Refuses further pushes and wakes every parked consumer and producer. Items already
    /// queued stay, for consumers to finish or for `drain`.
    pub fn close(&self) {
        self.closed.store(true, SeqCst);
        let _guard = lock(&self.sleep);
        self.work.notify_all();
        self.room.notify_all();
    }

    /// Refuses further pushes without waking anyone or taking any lock: for a child process
    /// after `fork()`, where a lock may have been copied while held.
    pub fn mark_closed(&self) {
        self.closed.store(true, SeqCst);
    }
}

/// A histogram of durations with buckets a quarter of a power of two wide, for a mean and a
/// p99 that cost two atomic adds per sample.
pub struct Histogram {
    buckets: [AtomicU64; 256],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn bucket(nanos: u64) -> usize {
        if nanos < 4 {
            return nanos as usize;
        }
        let exponent = 63 - nanos.leading_zeros() as usize; // >= 2
        let quarter = ((nanos >> (exponent - 2)) & 3) as usize;
        (exponent * 4 + quarter).min(255)
    }

    fn lower_bound(bucket: usize) -> u64 {
        if bucket < 8 {
            return bucket as u64; // 0..=3 hold those nanoseconds; 4..=7 stay empty
        }
        let (exponent, quarter) = (bucket / 4, bucket % 4);
        (1u64 << exponent) + ((quarter as u64) << (exponent - 2))
    }

    pub fn record(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[Self::bucket(nanos)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// (mean, p99) in seconds; zeros before the first sample. The p99 is the lower bound of
    /// its bucket: within 25% below the true value.
    pub fn summary(&self) -> (f64, f64) {
        let count = self.count.load(Relaxed);
        if count == 0 {
            return (0.0, 0.0);
        }
        let mean = self.sum_nanos.load(Relaxed) as f64 / count as f64 / 1e9;
        let rank = count - count / 100; // the sample 99% of the way up
        let mut seen = 0;
        for (bucket, n) in self.buckets.iter().enumerate() {
            seen += n.load(Relaxed);
            if seen >= rank {
                return (mean, Self::lower_bound(bucket) as f64 / 1e9);
            }
        }
        (mean, f64::NAN)
    }
}

/// The pool's counters; every field only grows. Statistics only: updated with relaxed
/// ordering, read as a snapshot that may be a moment old.
#[derive(Default)]
pub struct Counters {
    pub submitted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    pub cancelled: AtomicU64,
    pub timed_out: AtomicU64,
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
