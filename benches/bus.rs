//! Benchmarks of the event bus's Rust core, without Python: `cargo bench --bench bus`.
//!
//! Routers hold u64 subscribers under a mix of patterns: about 70% literal
//! (`svc{i}.events.created`), 20% one-token wildcards (`svc{i}.*.created`) and 10% trailing
//! wildcards (`svc{i}.>`), plus a few that match the routed topic. What is measured is the route
//! cache (a publish to a known topic), the trie walk behind it, and the mailbox hand-off.

use std::hint::black_box;
use std::time::Duration;

use _core::bus::{Mailbox, Offer, OnFull, Pattern, Router};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};

/// The topic routed: it matches `svc0.events.created`, `svc0.*.created`, `svc0.>`, and the
/// extra `*.events.created` and `>` subscriptions.
const TOPIC: &str = "svc0.events.created";
const MATCHES: usize = 5;

fn pattern(text: &str) -> Pattern {
    Pattern::parse(text).expect("valid pattern")
}

/// A router of `n` subscriptions; `TOPIC` matches `MATCHES` of them.
fn router(n: usize) -> Router<u64> {
    assert!(n >= 10);
    let mut router = Router::new();
    router.insert(&pattern("*.events.created"), 0, 0);
    router.insert(&pattern(">"), 1, 1);
    router.insert(&pattern("svc0.events.created"), 2, 2);
    router.insert(&pattern("svc0.*.created"), 3, 3);
    router.insert(&pattern("svc0.>"), 4, 4);
    for i in 5..n as u64 {
        // Services other than svc0, so the topic matches no more than the five above.
        let text = match i % 10 {
            0..=6 => format!("svc{i}.events.created"),
            7 | 8 => format!("svc{i}.*.created"),
            _ => format!("svc{i}.>"),
        };
        router.insert(&pattern(&text), i, i);
    }
    assert_eq!(router.len(), n);
    assert_eq!(router.resolve(TOPIC).len(), MATCHES);
    router
}

fn short(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// `route` of a remembered literal topic (one hash lookup), and `resolve` (the trie walk).
fn bench_route(c: &mut Criterion) {
    let mut group = c.benchmark_group("bus_route");
    short(&mut group);
    for n in [10usize, 10_000] {
        let mut router = router(n);
        assert_eq!(router.route(TOPIC).unwrap().len(), MATCHES);
        group.bench_function(format!("route_cached_{n}_subs"), |b| {
            b.iter(|| router.route(black_box(TOPIC)).expect("valid topic"));
        });
        assert_eq!(router.cached_topics(), 1);
        group.bench_function(format!("resolve_{n}_subs"), |b| {
            b.iter(|| router.resolve(black_box(TOPIC)));
        });
    }
    group.finish();
}

/// One item offered to and taken from a mailbox of capacity 1000.
fn bench_mailbox(c: &mut Criterion) {
    let mut group = c.benchmark_group("bus_mailbox");
    short(&mut group);
    let mailbox: Mailbox<u64, ()> = Mailbox::new(1000, OnFull::DropOldest);
    group.bench_function("offer_take_1", |b| {
        b.iter(|| {
            match mailbox.offer(black_box(7)) {
                Offer::Queued { .. } => {}
                other => panic!("expected Queued, got {other:?}"),
            }
            mailbox.take(1, None)
        });
    });
    group.finish();
    let (delivered, dropped, pending) = mailbox.counts();
    assert!(delivered > 0);
    assert_eq!((dropped, pending), (0, 0));
}

criterion_group!(benches, bench_route, bench_mailbox);
criterion_main!(benches);
