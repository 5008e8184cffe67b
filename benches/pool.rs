//! Benchmarks of the worker pool's task queue, without Python: `cargo bench --bench pool`.
//!
//! Items are u64. The threaded benches move a batch of items from producer threads
//! (`push_wait`) to consumer threads (`pop_wait`) through a queue of capacity 1024; each
//! iteration starts its threads in a scope, so the figure includes starting and joining
//! them (tens of microseconds against a batch of milliseconds).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use _core::pool::TaskQueue;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

const CAPACITY: usize = 1024;

fn short(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// One thread: a `try_push` and a `pop` per item, so the queue never holds more than one.
fn bench_single_thread(c: &mut Criterion) {
    const ITEMS: u64 = 100_000;
    let mut group = c.benchmark_group("pool");
    short(&mut group);
    group.throughput(Throughput::Elements(ITEMS));
    for priority in [0i64, 1] {
        let queue = TaskQueue::new(CAPACITY);
        group.bench_function(
            BenchmarkId::new("try_push_pop_1_thread_priority", priority),
            |b| {
                b.iter(|| {
                    let mut sum = 0u64;
                    for item in 0..ITEMS {
                        queue.try_push(black_box(item), priority).unwrap();
                        sum = sum.wrapping_add(queue.pop().unwrap());
                    }
                    sum
                });
            },
        );
        assert!(queue.is_empty());
    }
    group.finish();
}

/// Moves `items` from `producers` threads to `consumers` threads through a fresh queue;
/// returns the sum of the items taken.
fn transfer(producers: u64, consumers: usize, items: u64) -> u64 {
    let queue = TaskQueue::new(CAPACITY);
    let total = AtomicU64::new(0);
    let per_producer = items / producers;
    thread::scope(|scope| {
        for _ in 0..consumers {
            scope.spawn(|| {
                let mut sum = 0u64;
                // `None` once the queue is closed and empty (or after a second of nothing,
                // which would be a lost wake-up: the count check below catches that).
                while let Some(item) = queue.pop_wait(Duration::from_secs(1)) {
                    sum = sum.wrapping_add(item);
                }
                total.fetch_add(sum, Ordering::Relaxed);
            });
        }
        let producer_threads: Vec<_> = (0..producers)
            .map(|p| {
                let queue = &queue;
                scope.spawn(move || {
                    for i in 0..per_producer {
                        if queue.push_wait(p * per_producer + i, 0, None).is_err() {
                            unreachable!("the queue is open until the producers are done");
                        }
                    }
                })
            })
            .collect();
        for producer in producer_threads {
            producer.join().unwrap();
        }
        queue.close();
    });
    let sum = total.into_inner();
    let n = per_producer * producers;
    assert_eq!(sum, n * (n - 1) / 2, "items lost or duplicated");
    sum
}

fn bench_threads(c: &mut Criterion) {
    const ITEMS: u64 = 100_000;
    let mut group = c.benchmark_group("pool");
    short(&mut group);
    group.throughput(Throughput::Elements(ITEMS));
    for (producers, consumers) in [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2), (4, 2)] {
        group.bench_function(
            BenchmarkId::new("push_wait_pop_wait", format!("{producers}p_{consumers}c")),
            |b| b.iter(|| transfer(producers, consumers, ITEMS)),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_single_thread, bench_threads);
criterion_main!(benches);
