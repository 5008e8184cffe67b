//! Tests of the task queue and the histogram. As a child module of `pool`, they may look at
//! the private state (the wake-up flags), but check behaviour through the public methods.
//!
//! The threaded tests never wait without a bound: consumers use `pop_wait` with short
//! timeouts under a global deadline, so a lost wake-up shows up as a failed assertion on
//! latency or on the items received, not as a hung test.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::thread;

use super::*;

/// Fixed-seed xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Waits (briefly sleeping) until `ready` holds, failing the test after `limit`.
fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

fn push(queue: &TaskQueue<u64>, item: u64, priority: i64) {
    queue
        .try_push(item, priority)
        .unwrap_or_else(|refused| panic!("push of {item} refused: {refused:?}"));
}

// ---------------------------------------------------------------------------------------
// Order.

#[test]
fn priority_zero_is_fifo() {
    let queue = TaskQueue::new(100);
    for item in 0..100 {
        push(&queue, item, 0);
    }
    assert_eq!(queue.len(), 100);
    for item in 0..100 {
        assert_eq!(queue.pop(), Some(item));
    }
    assert_eq!(queue.pop(), None);
    assert!(queue.is_empty());
}

#[test]
fn fifo_survives_wrapping_around_the_ring() {
    let queue = TaskQueue::new(3);
    let mut next_in = 0;
    let mut next_out = 0;
    for round in 0..50 {
        while queue.try_push(next_in, 0).is_ok() {
            next_in += 1;
        }
        for _ in 0..(1 + round % 3) {
            assert_eq!(queue.pop(), Some(next_out));
            next_out += 1;
        }
    }
    while let Some(item) = queue.pop() {
        assert_eq!(item, next_out);
        next_out += 1;
    }
    assert_eq!(next_in, next_out);
}

#[test]
fn higher_priority_first_fifo_within_a_priority() {
    let queue = TaskQueue::new(100);
    // (priority, sequence) pairs, interleaved.
    let pushes = [
        (0, 0),
        (5, 1),
        (-3, 2),
        (1, 3),
        (0, 4),
        (5, 5),
        (-3, 6),
        (-1, 7),
        (1, 8),
        (0, 9),
        (5, 10),
        (-1, 11),
    ];
    for &(priority, seq) in &pushes {
        push(&queue, seq, priority);
    }
    let order: Vec<u64> = std::iter::from_fn(|| queue.pop()).collect();
    assert_eq!(order, [1, 5, 10, 3, 8, 0, 4, 9, 7, 11, 2, 6]);
}

#[test]
fn negative_priorities_run_after_priority_zero_positive_before() {
    let queue = TaskQueue::new(10);
    push(&queue, 1, -1);
    push(&queue, 2, 0);
    push(&queue, 3, 1);
    assert_eq!(queue.pop(), Some(3));
    assert_eq!(queue.pop(), Some(2));
    assert_eq!(queue.pop(), Some(1));
    assert_eq!(queue.pop(), None);

    // Only lanes below zero, then priority 0 arrives later: it still goes first.
    push(&queue, 10, -5);
    push(&queue, 11, -5);
    push(&queue, 12, 0);
    assert_eq!(queue.pop(), Some(12));
    assert_eq!(queue.pop(), Some(10));
    // Only lanes above zero, and priority 0 waiting.
    push(&queue, 13, 0);
    push(&queue, 14, 7);
    assert_eq!(queue.pop(), Some(14));
    assert_eq!(queue.pop(), Some(13));
    assert_eq!(queue.pop(), Some(11));
    assert_eq!(queue.pop(), None);
}

#[test]
fn extreme_priorities() {
    let queue = TaskQueue::new(10);
    push(&queue, 1, i64::MIN + 1);
    push(&queue, 2, i64::MAX);
    push(&queue, 3, 0);
    push(&queue, 4, -i64::MAX);
    assert_eq!(queue.drain(), [2, 3, 1, 4]);
}

#[test]
fn many_priorities_mixed() {
    const N: u64 = 2_000;
    let queue = TaskQueue::new(N as usize);
    let mut rng = Rng(0x5EED_0BAD_CAFE_F00D);
    let mut expected: Vec<(i64, u64)> = Vec::new();
    for seq in 0..N {
        let priority = (rng.next() % 21) as i64 - 10;
        push(&queue, seq, priority);
        expected.push((priority, seq));
    }
    assert_eq!(queue.len(), N as usize);
    // Highest priority first, then pushing order.
    expected.sort_by_key(|&(priority, seq)| (-priority, seq));
    let expected: Vec<u64> = expected.into_iter().map(|(_, seq)| seq).collect();
    assert_eq!(queue.drain(), expected);
    assert!(queue.is_empty());
}

#[test]
fn pops_interleaved_with_pushes_keep_the_order() {
    let queue = TaskQueue::new(1_000);
    let mut rng = Rng(42);
    let mut model: Vec<(i64, u64)> = Vec::new(); // what should be queued
    for seq in 0..3_000u64 {
        if rng.next() % 3 == 0 {
            let best = model
                .iter()
                .enumerate()
                .min_by_key(|&(_, &(priority, seq))| (-priority, seq))
                .map(|(index, _)| index);
            let want = best.map(|index| model.remove(index).1);
            assert_eq!(queue.pop(), want);
        } else {
            let priority = (rng.next() % 5) as i64 - 2;
            if queue.try_push(seq, priority).is_ok() {
                model.push((priority, seq));
            }
        }
        assert_eq!(queue.len(), model.len());
    }
}

// ---------------------------------------------------------------------------------------
// The bound.

#[test]
fn capacity_is_shared_by_all_lanes() {
    let queue = TaskQueue::new(6);
    assert_eq!(queue.capacity(), 6);
    for (item, priority) in [(0, 0), (1, 3), (2, -3), (3, 0), (4, 1), (5, -1)] {
        push(&queue, item, priority);
        assert_eq!(queue.len(), item as usize + 1);
    }
    for priority in [0, 1, -1, 100] {
        assert_eq!(queue.try_push(99, priority), Err(Refused::Full(99)));
    }
    assert_eq!(queue.len(), 6);
    assert_eq!(queue.pop(), Some(1));
    assert_eq!(queue.len(), 5);
    push(&queue, 7, 0);
    assert_eq!(queue.len(), 6);
    assert_eq!(queue.try_push(8, 2), Err(Refused::Full(8)));
    assert_eq!(queue.drain(), [4, 0, 3, 7, 5, 2]);
    assert_eq!(queue.len(), 0);
}

#[test]
fn full_of_priority_zero_refuses_lane_pushes_too() {
    let queue = TaskQueue::new(4);
    for item in 0..4 {
        push(&queue, item, 0);
    }
    assert_eq!(queue.try_push(10, 5), Err(Refused::Full(10)));
    assert_eq!(queue.try_push(11, -5), Err(Refused::Full(11)));
    assert_eq!(queue.pop(), Some(0));
    push(&queue, 12, 5);
    assert_eq!(queue.drain(), [12, 1, 2, 3]);
}

#[test]
fn full_of_lanes_refuses_priority_zero() {
    let queue = TaskQueue::new(4);
    for item in 0..4 {
        push(&queue, item, 1);
    }
    assert_eq!(queue.try_push(10, 0), Err(Refused::Full(10)));
    assert_eq!(queue.pop(), Some(0));
    push(&queue, 11, 0);
    assert_eq!(queue.drain(), [1, 2, 3, 11]);
}

#[test]
fn capacity_one() {
    let queue = TaskQueue::new(1);
    push(&queue, 1, 0);
    assert_eq!(queue.try_push(2, 0), Err(Refused::Full(2)));
    assert_eq!(queue.try_push(3, 1), Err(Refused::Full(3)));
    assert_eq!(queue.pop(), Some(1));
    push(&queue, 4, -1);
    assert_eq!(queue.try_push(5, 0), Err(Refused::Full(5)));
    assert_eq!(queue.pop(), Some(4));
    assert!(queue.is_empty());
}

#[test]
#[should_panic(expected = "capacity must be at least 1")]
fn capacity_zero_panics() {
    let _ = TaskQueue::<u64>::new(0);
}

#[test]
fn refused_items_come_back_unharmed() {
    // Items with a destructor: nothing is dropped or duplicated by a refusal.
    let queue = TaskQueue::new(1);
    let first = Arc::new(1);
    let second = Arc::new(2);
    queue.try_push(Arc::clone(&first), 0).unwrap();
    match queue.try_push(Arc::clone(&second), 0) {
        Err(Refused::Full(back)) => assert!(Arc::ptr_eq(&back, &second)),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(Arc::strong_count(&second), 1);
    queue.close();
    match queue.try_push(Arc::clone(&second), 0) {
        Err(Refused::Closed(back)) => assert!(Arc::ptr_eq(&back, &second)),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert_eq!(Arc::strong_count(&first), 2);
    drop(queue);
    assert_eq!(
        Arc::strong_count(&first),
        1,
        "queued items are dropped with the queue"
    );
}

// ---------------------------------------------------------------------------------------
// Closing.

#[test]
fn close_refuses_pushes_but_keeps_the_queued_items() {
    let queue = TaskQueue::new(8);
    push(&queue, 1, 0);
    push(&queue, 2, 3);
    push(&queue, 3, -3);
    assert!(!queue.is_closed());
    queue.close();
    assert!(queue.is_closed());
    assert_eq!(queue.try_push(4, 0), Err(Refused::Closed(4)));
    assert_eq!(queue.try_push(5, 1), Err(Refused::Closed(5)));
    assert_eq!(
        queue.push_wait(6, 0, Some(Instant::now() + Duration::from_secs(5))),
        Err(Refused::Closed(6))
    );
    assert_eq!(queue.push_wait(7, -1, None), Err(Refused::Closed(7)));
    assert_eq!(queue.len(), 3);
    assert_eq!(queue.pop(), Some(2));
    assert_eq!(queue.pop_wait(Duration::from_secs(5)), Some(1));
    assert_eq!(queue.drain(), [3]);
    let started = Instant::now();
    assert_eq!(queue.pop_wait(Duration::from_secs(5)), None);
    assert!(started.elapsed() < Duration::from_millis(100));
    queue.close(); // twice is harmless
    assert_eq!(queue.pop(), None);
}

#[test]
fn closed_wins_over_full() {
    let queue = TaskQueue::new(1);
    push(&queue, 1, 0);
    queue.close();
    assert_eq!(queue.try_push(2, 0), Err(Refused::Closed(2)));
    assert_eq!(queue.push_wait(3, 0, None), Err(Refused::Closed(3)));
}

#[test]
fn mark_closed_refuses_pushes() {
    let queue = TaskQueue::new(4);
    push(&queue, 1, 0);
    push(&queue, 2, 1);
    queue.mark_closed();
    assert!(queue.is_closed());
    assert_eq!(queue.try_push(3, 0), Err(Refused::Closed(3)));
    assert_eq!(queue.push_wait(4, 2, None), Err(Refused::Closed(4)));
    assert_eq!(queue.drain(), [2, 1]);
    let started = Instant::now();
    assert_eq!(queue.pop_wait(Duration::from_secs(5)), None);
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[test]
fn pop_wait_times_out_on_an_empty_open_queue() {
    let queue = TaskQueue::<u64>::new(4);
    let started = Instant::now();
    assert_eq!(queue.pop_wait(Duration::from_millis(30)), None);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(29), "returned after {took:?}");
    assert!(took < Duration::from_millis(500), "returned after {took:?}");
    assert_eq!(queue.pop_wait(Duration::ZERO), None);
    assert_eq!(queue.idle_consumers(), 0);
}

// ---------------------------------------------------------------------------------------
// Dropping the oldest.

#[test]
fn pop_oldest_without_lanes_is_fifo() {
    let queue = TaskQueue::new(4);
    for item in 0..4 {
        push(&queue, item, 0);
    }
    assert_eq!(queue.pop_oldest(), Some(0));
    assert_eq!(queue.len(), 3);
    push(&queue, 4, 0);
    assert_eq!(queue.pop_oldest(), Some(1));
    assert_eq!(queue.pop(), Some(2));
    assert_eq!(queue.pop_oldest(), Some(3));
    assert_eq!(queue.pop_oldest(), Some(4));
    assert_eq!(queue.pop_oldest(), None);
    assert!(queue.is_empty());
}

#[test]
fn pop_oldest_takes_from_the_lowest_lane() {
    let queue = TaskQueue::new(16);
    push(&queue, 1, 0);
    push(&queue, 2, 2);
    push(&queue, 3, -1);
    push(&queue, 4, -2);
    push(&queue, 5, -2);
    push(&queue, 6, 0);
    push(&queue, 7, 2);
    // The lowest lane (-2) first, oldest first within it; then -1; then 0; then 2.
    let order: Vec<u64> = std::iter::from_fn(|| queue.pop_oldest()).collect();
    assert_eq!(order, [4, 5, 3, 1, 6, 2, 7]);
    assert!(queue.is_empty());
}

#[test]
fn pop_oldest_prefers_priority_zero_over_higher_lanes() {
    let queue = TaskQueue::new(8);
    push(&queue, 1, 3);
    push(&queue, 2, 0);
    push(&queue, 3, 1);
    push(&queue, 4, 0);
    assert_eq!(queue.pop_oldest(), Some(2));
    assert_eq!(queue.pop_oldest(), Some(4));
    // Only positive lanes left: the lowest of them.
    assert_eq!(queue.pop_oldest(), Some(3));
    assert_eq!(queue.pop_oldest(), Some(1));
    assert_eq!(queue.pop_oldest(), None);
}

#[test]
fn pop_oldest_makes_room_for_a_push() {
    let queue = TaskQueue::new(3);
    push(&queue, 1, -1);
    push(&queue, 2, 0);
    push(&queue, 3, 1);
    assert_eq!(queue.try_push(4, 0), Err(Refused::Full(4)));
    assert_eq!(queue.pop_oldest(), Some(1));
    push(&queue, 4, 0);
    assert_eq!(queue.len(), 3);
    assert_eq!(queue.drain(), [3, 2, 4]);
}

// ---------------------------------------------------------------------------------------
// Threads.

/// `producers` threads push `per_producer` distinct items each with `push_wait` (the first
/// producer with mixed priorities) into a queue of `capacity`; `consumers` threads take them
/// with `pop_wait` until the queue is closed and empty. Every item must arrive exactly once.
fn transfer(producers: u64, consumers: usize, capacity: usize, per_producer: u64) {
    let queue = Arc::new(TaskQueue::new(capacity));
    let start = Arc::new(Barrier::new(producers as usize + consumers + 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    let consumer_threads: Vec<_> = (0..consumers)
        .map(|_| {
            let queue = Arc::clone(&queue);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                let mut got = Vec::new();
                loop {
                    match queue.pop_wait(Duration::from_millis(50)) {
                        Some(item) => got.push(item),
                        None if queue.is_closed() && queue.is_empty() => return got,
                        None => assert!(Instant::now() < deadline, "consumer gave up"),
                    }
                }
            })
        })
        .collect();
    let producer_threads: Vec<_> = (0..producers)
        .map(|p| {
            let queue = Arc::clone(&queue);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                for i in 0..per_producer {
                    let item = p * per_producer + i;
                    let priority = if p == 0 { (i % 3) as i64 - 1 } else { 0 };
                    let result = queue.push_wait(item, priority, Some(deadline));
                    assert_eq!(result, Ok(()), "producer {p} could not push item {i}");
                }
            })
        })
        .collect();
    let started = Instant::now();
    start.wait();
    for producer in producer_threads {
        producer.join().expect("producer panicked");
    }
    queue.close();
    let mut seen = HashSet::new();
    let mut sum = 0u64;
    for consumer in consumer_threads {
        for item in consumer.join().expect("consumer panicked") {
            assert!(seen.insert(item), "item {item} arrived twice");
            sum += item;
        }
    }
    let total = producers * per_producer;
    assert_eq!(seen.len() as u64, total, "items lost");
    assert_eq!(sum, total * (total - 1) / 2);
    assert!(queue.is_empty());
    assert_eq!(queue.idle_consumers(), 0);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "{producers} producers x {consumers} consumers took {took:?}: a lost wake-up?"
    );
}

#[test]
fn transfer_every_item_exactly_once() {
    for (producers, consumers, capacity) in [
        (1, 1, 8),
        (1, 2, 16),
        (1, 4, 64),
        (2, 1, 8),
        (2, 2, 16),
        (2, 4, 32),
        (4, 1, 64),
        (4, 2, 8),
        (4, 4, 16),
    ] {
        transfer(producers, consumers, capacity, 2_000);
    }
}

#[test]
fn transfer_through_a_queue_of_one() {
    transfer(2, 2, 1, 500);
}

/// One producer hands items to one consumer, one at a time, each after a pause of 0 to 1 µs
/// once the previous one was taken, so that pushes land all along the consumer's way back
/// into `pop_wait` and parking. Each item is the time of its push: a wake-up that got lost
/// shows as a latency of a whole `pop_wait` timeout. Stops at the first such item.
#[test]
fn handoff_to_a_parking_consumer_is_prompt() {
    const ROUNDS: usize = 20_000;
    const TIMEOUT: Duration = Duration::from_millis(200);
    let queue = Arc::new(TaskQueue::<Instant>::new(16));
    let taken = Arc::new(AtomicUsize::new(0));
    let consumer = {
        let queue = Arc::clone(&queue);
        let taken = Arc::clone(&taken);
        thread::spawn(move || loop {
            match queue.pop_wait(TIMEOUT) {
                Some(_) => {
                    taken.fetch_add(1, SeqCst);
                }
                None if queue.is_closed() => return,
                None => {}
            }
        })
    };
    let mut rng = Rng(7);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut late = None;
    for round in 0..ROUNDS {
        let pause = Duration::from_nanos(rng.next() % 1_000);
        let spin = Instant::now();
        while spin.elapsed() < pause {
            std::hint::spin_loop();
        }
        let pushed = Instant::now();
        queue.try_push(pushed, 0).expect("room for one");
        while taken.load(SeqCst) <= round {
            assert!(
                Instant::now() < deadline,
                "the consumer stopped taking items"
            );
            thread::yield_now();
        }
        let latency = pushed.elapsed();
        if latency >= TIMEOUT / 2 {
            late = Some((round, latency));
            break;
        }
    }
    queue.close();
    consumer.join().expect("consumer panicked");
    if let Some((round, latency)) = late {
        panic!(
            "item {round} was taken {latency:?} after its push, about the pop_wait timeout: \
             the push did not wake the parked consumer"
        );
    }
    assert_eq!(taken.load(SeqCst), ROUNDS);
}

/// The interleaving that `handoff_to_a_parking_consumer_is_prompt` finds by chance, step by
/// step. A consumer in `pop_wait` announces itself (`idle_consumers` goes up, under the
/// lock), looks again, finds an item being pushed, and leaves without waiting (the count
/// goes down). A push whose `wake_consumer` runs between the two sees an idle consumer, sets
/// `wake_pending` and notifies a condvar nobody waits on. Only a consumer returning from a
/// wait clears `wake_pending`, so it stays set: the next pushes wake nobody, and every parked
/// consumer sleeps until its timeout (1 s for the pool's workers).
#[test]
fn a_push_to_a_consumer_that_did_not_park_does_not_mute_later_pushes() {
    let queue = Arc::new(TaskQueue::new(4));
    // The consumer's recheck branch in `pop_wait`, with a push in the middle.
    queue.idle_consumers.fetch_add(1, SeqCst);
    push(&queue, 1, 0);
    queue.idle_consumers.fetch_sub(1, SeqCst);
    assert_eq!(queue.pop(), Some(1));
    // From here on, the queue is idle and empty; consumers park and an item comes.
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.pop_wait(Duration::from_millis(1_000)))
        })
        .collect();
    wait_until(Duration::from_secs(2), "the consumers park", || {
        queue.idle_consumers() == 2
    });
    thread::sleep(Duration::from_millis(5));
    let pushed = Instant::now();
    push(&queue, 2, 0);
    wait_until(Duration::from_secs(3), "a consumer takes the item", || {
        queue.is_empty()
    });
    let latency = pushed.elapsed();
    queue.close();
    let mut results: Vec<_> = consumers.into_iter().map(|c| c.join().unwrap()).collect();
    results.sort_unstable();
    assert_eq!(results, [None, Some(2)]);
    assert!(
        latency < Duration::from_millis(500),
        "the push woke no parked consumer: taken after {latency:?} (the pop_wait timeout)"
    );
}

#[test]
fn pop_wait_is_woken_by_a_push() {
    let queue = Arc::new(TaskQueue::new(4));
    let consumer = {
        let queue = Arc::clone(&queue);
        thread::spawn(move || {
            let started = Instant::now();
            let item = queue.pop_wait(Duration::from_secs(5));
            (item, started.elapsed())
        })
    };
    wait_until(Duration::from_secs(2), "the consumer parks", || {
        queue.idle_consumers() == 1
    });
    thread::sleep(Duration::from_millis(20));
    let pushed = Instant::now();
    push(&queue, 42, 0);
    let (item, _) = consumer.join().unwrap();
    let latency = pushed.elapsed();
    assert_eq!(item, Some(42));
    assert!(
        latency < Duration::from_millis(500),
        "woken after {latency:?}"
    );
    assert_eq!(queue.idle_consumers(), 0);
}

#[test]
fn pop_wait_is_woken_by_a_lane_push() {
    let queue = Arc::new(TaskQueue::new(4));
    let consumer = {
        let queue = Arc::clone(&queue);
        thread::spawn(move || queue.pop_wait(Duration::from_secs(5)))
    };
    wait_until(Duration::from_secs(2), "the consumer parks", || {
        queue.idle_consumers() == 1
    });
    let pushed = Instant::now();
    push(&queue, 7, -4);
    assert_eq!(consumer.join().unwrap(), Some(7));
    let latency = pushed.elapsed();
    assert!(
        latency < Duration::from_millis(500),
        "woken after {latency:?}"
    );
}

/// Several pushes in a row, each to a parked consumer, each after the previous one was
/// taken: the second and later must wake the consumer as promptly as the first.
#[test]
fn pop_wait_is_woken_by_each_of_successive_pushes() {
    let queue = Arc::new(TaskQueue::new(4));
    let consumer = {
        let queue = Arc::clone(&queue);
        thread::spawn(move || {
            (0..5)
                .map(|_| queue.pop_wait(Duration::from_secs(2)))
                .collect::<Vec<_>>()
        })
    };
    for item in 0..5u64 {
        wait_until(Duration::from_secs(2), "the consumer parks", || {
            queue.idle_consumers() == 1
        });
        thread::sleep(Duration::from_millis(2));
        let pushed = Instant::now();
        push(&queue, item, 0);
        wait_until(Duration::from_secs(3), "the consumer takes it", || {
            queue.is_empty()
        });
        let latency = pushed.elapsed();
        assert!(
            latency < Duration::from_millis(500),
            "push {item} woke the consumer after {latency:?}"
        );
    }
    let items = consumer.join().unwrap();
    assert_eq!(items, [Some(0), Some(1), Some(2), Some(3), Some(4)]);
}

#[test]
fn pop_wait_is_woken_by_close() {
    let queue = Arc::new(TaskQueue::<u64>::new(4));
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.pop_wait(Duration::from_secs(5)))
        })
        .collect();
    wait_until(Duration::from_secs(2), "the consumers park", || {
        queue.idle_consumers() == 3
    });
    let closed = Instant::now();
    queue.close();
    for consumer in consumers {
        assert_eq!(consumer.join().unwrap(), None);
    }
    let latency = closed.elapsed();
    assert!(
        latency < Duration::from_millis(500),
        "woken after {latency:?}"
    );
    assert_eq!(queue.idle_consumers(), 0);
}

#[test]
fn push_wait_gives_up_at_the_deadline() {
    let queue = TaskQueue::new(2);
    push(&queue, 1, 0);
    push(&queue, 2, 0);
    let started = Instant::now();
    let result = queue.push_wait(3, 0, Some(started + Duration::from_millis(60)));
    let took = started.elapsed();
    assert_eq!(result, Err(Refused::Full(3)));
    assert!(took >= Duration::from_millis(59), "gave up after {took:?}");
    assert!(took < Duration::from_millis(600), "gave up after {took:?}");
    // A deadline already past: refused at once.
    let started = Instant::now();
    assert_eq!(
        queue.push_wait(4, 1, Some(Instant::now())),
        Err(Refused::Full(4))
    );
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(queue.len(), 2);
    assert_eq!(queue.drain(), [1, 2]);
}

#[test]
fn push_wait_with_room_does_not_wait() {
    let queue = TaskQueue::new(2);
    assert_eq!(queue.push_wait(1, 0, Some(Instant::now())), Ok(()));
    assert_eq!(queue.push_wait(2, 3, None), Ok(()));
    assert_eq!(queue.drain(), [2, 1]);
}

#[test]
fn push_wait_is_woken_by_pops() {
    for capacity in [1, 2, 8] {
        let queue = Arc::new(TaskQueue::new(capacity));
        for item in 0..capacity as u64 {
            push(&queue, item, 0);
        }
        let producer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(5);
                queue.push_wait(100, 0, Some(deadline))
            })
        };
        wait_until(Duration::from_secs(2), "the producer waits", || {
            queue.waiting_producers.load(SeqCst) == 1
        });
        let popped = Instant::now();
        // Pop down to half: the producer is woken then.
        for item in 0..(capacity - capacity / 2) as u64 {
            assert_eq!(queue.pop(), Some(item));
        }
        assert_eq!(producer.join().unwrap(), Ok(()));
        let latency = popped.elapsed();
        assert!(
            latency < Duration::from_millis(500),
            "capacity {capacity}: woken after {latency:?}"
        );
        assert_eq!(queue.drain().last(), Some(&100));
    }
}

#[test]
fn push_wait_is_woken_by_close() {
    let queue = Arc::new(TaskQueue::new(2));
    push(&queue, 1, 0);
    push(&queue, 2, 0);
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let queue = Arc::clone(&queue);
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(5);
                // One with a deadline, one without.
                queue.push_wait(10 + p, p as i64, (p == 0).then_some(deadline))
            })
        })
        .collect();
    wait_until(Duration::from_secs(2), "the producers wait", || {
        queue.waiting_producers.load(SeqCst) == 2
    });
    let closed = Instant::now();
    queue.close();
    let results: Vec<_> = producers.into_iter().map(|p| p.join().unwrap()).collect();
    let latency = closed.elapsed();
    assert_eq!(
        results,
        [Err(Refused::Closed(10)), Err(Refused::Closed(11))]
    );
    assert!(
        latency < Duration::from_millis(500),
        "woken after {latency:?}"
    );
    assert_eq!(queue.drain(), [1, 2]);
}

#[test]
fn consumers_drain_what_is_left_after_close() {
    let queue = Arc::new(TaskQueue::new(64));
    for item in 0..64 {
        push(&queue, item, (item % 4) as i64 - 2);
    }
    queue.close();
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let queue = Arc::clone(&queue);
            thread::spawn(move || {
                std::iter::from_fn(|| queue.pop_wait(Duration::from_secs(2))).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = consumers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..64).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// Histogram.

#[test]
fn histogram_empty_summary_is_zero() {
    assert_eq!(Histogram::default().summary(), (0.0, 0.0));
}

#[test]
fn histogram_mean_and_p99_of_known_durations() {
    let histogram = Histogram::default();
    // 1 µs .. 1000 µs: mean 500.5 µs, the 990th of 1000 is 990 µs.
    for micros in 1..=1_000 {
        histogram.record(Duration::from_micros(micros));
    }
    let (mean, p99) = histogram.summary();
    assert!((mean - 500.5e-6).abs() < 1e-12, "mean {mean}");
    let true_p99 = 990e-6;
    assert!(
        p99 <= true_p99 && p99 >= 0.75 * true_p99,
        "p99 {p99} for a true {true_p99}"
    );
}

#[test]
fn histogram_p99_ignores_the_slowest_percent() {
    let histogram = Histogram::default();
    for _ in 0..990 {
        histogram.record(Duration::from_millis(10));
    }
    for _ in 0..10 {
        histogram.record(Duration::from_secs(100));
    }
    let (mean, p99) = histogram.summary();
    let want_mean = (990.0 * 0.010 + 10.0 * 100.0) / 1000.0;
    assert!((mean - want_mean).abs() < 1e-9, "mean {mean}");
    assert!((0.0075..=0.010).contains(&p99), "p99 {p99}");

    // With one more slow sample, the 99th percentile is a slow one.
    histogram.record(Duration::from_secs(100));
    for _ in 0..89 {
        histogram.record(Duration::from_millis(10));
    }
    // 1090 samples, 11 slow: rank 1080, past the 1079 fast ones.
    let (_, p99) = histogram.summary();
    assert!((75.0..=100.0).contains(&p99), "p99 {p99}");
}

#[test]
fn histogram_p99_of_few_samples_is_the_largest() {
    let histogram = Histogram::default();
    histogram.record(Duration::from_millis(1));
    histogram.record(Duration::from_millis(3));
    histogram.record(Duration::from_millis(2));
    let (mean, p99) = histogram.summary();
    assert!((mean - 0.002).abs() < 1e-12, "mean {mean}");
    assert!((0.00225..=0.003).contains(&p99), "p99 {p99}");
}

#[test]
fn histogram_p99_within_a_quarter_below_for_any_value() {
    let mut rng = Rng(0xD1CE);
    let mut values: Vec<u64> = (0..64).flat_map(|e| [1u64 << e, (1u64 << e) - 1]).collect();
    values.extend((0..2_000).map(|_| rng.next() >> (rng.next() % 64)));
    values.push(u64::MAX);
    for nanos in values {
        let histogram = Histogram::default();
        histogram.record(Duration::from_nanos(nanos));
        let (mean, p99) = histogram.summary();
        let want = nanos as f64 / 1e9;
        assert_eq!(mean, want);
        assert!(p99 <= want && p99 >= 0.75 * want, "{nanos} ns: p99 {p99} s");
    }
}

#[test]
fn histogram_buckets_are_ordered() {
    let mut previous = 0;
    for nanos in 0..10_000 {
        let bucket = Histogram::bucket(nanos);
        assert!(bucket >= previous, "{nanos} went back a bucket");
        assert!(Histogram::lower_bound(bucket) <= nanos, "{nanos}");
        previous = bucket;
    }
    for exponent in 0..64 {
        let nanos = 1u64 << exponent;
        assert_eq!(Histogram::lower_bound(Histogram::bucket(nanos)), nanos);
    }
    assert_eq!(Histogram::bucket(u64::MAX), 255);
    // The buckets in use: 0..4 hold 0..4 ns exactly, 8.. a quarter of a power of two each
    // (4..8 would be the quarters of 2 ns, which is exact already).
    let used: Vec<usize> = (0..4).chain(8..256).collect();
    for pair in used.windows(2) {
        assert!(Histogram::lower_bound(pair[1]) > Histogram::lower_bound(pair[0]));
    }
    for bucket in used {
        assert_eq!(Histogram::bucket(Histogram::lower_bound(bucket)), bucket);
    }
}

#[test]
fn histogram_zero_and_huge_durations_do_not_panic() {
    let histogram = Histogram::default();
    histogram.record(Duration::ZERO);
    assert_eq!(histogram.summary(), (0.0, 0.0));
    histogram.record(Duration::from_nanos(1));
    histogram.record(Duration::from_nanos(3));
    histogram.record(Duration::from_nanos(4));
    histogram.record(Duration::from_secs(u64::MAX / 2));
    histogram.record(Duration::MAX);
    histogram.record(Duration::MAX);
    let (mean, p99) = histogram.summary();
    assert!(mean.is_finite() && mean >= 0.0, "mean {mean}");
    assert!(p99.is_finite() && p99 > 1e9, "p99 {p99}");
}

#[test]
fn histogram_records_from_threads() {
    let histogram = Arc::new(Histogram::default());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let histogram = Arc::clone(&histogram);
            thread::spawn(move || {
                for _ in 0..1_000 {
                    histogram.record(Duration::from_micros(100));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(histogram.count.load(Relaxed), 4_000);
    let (mean, p99) = histogram.summary();
    assert!((mean - 100e-6).abs() < 1e-12, "mean {mean}");
    assert!((75e-6..=100e-6).contains(&p99), "p99 {p99}");
}
