//! Benchmarks of the L1 cache's Rust core, without Python: `cargo bench --bench cache`.
//!
//! Keys are u64 hashed by a multiplicative mixer, values u64, no TTL: what is measured is the
//! table, the queues and the eviction policy, not key hashing or comparison.

use std::hint::black_box;
use std::time::Duration;

use _core::cache::{Cache, Config, Graveyard, Insert, Match};
use _core::clock::NEVER;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

const NOW: u64 = 1_000_000_000;

#[inline]
fn hash(key: u64) -> u64 {
    key.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[inline]
fn eq(key: u64) -> impl FnMut(&u64) -> Match {
    move |k: &u64| if *k == key { Match::Yes } else { Match::No }
}

fn config(max_size: usize) -> Config {
    Config {
        max_size,
        max_weight: None,
        ttl: NEVER,
        tti: NEVER,
    }
}

#[inline]
fn insert(cache: &mut Cache<u64, u64>, key: u64, value: u64, graveyard: &mut Graveyard<u64, u64>) {
    cache
        .insert(
            hash(key),
            key,
            value,
            eq(key),
            Insert::default(),
            NOW,
            graveyard,
        )
        .expect("u64 keys always compare");
}

#[inline]
fn get<'a>(
    cache: &'a mut Cache<u64, u64>,
    key: u64,
    graveyard: &mut Graveyard<u64, u64>,
) -> Option<&'a u64> {
    cache
        .get(hash(key), eq(key), NOW, graveyard)
        .expect("u64 keys always compare")
}

fn filled(max_size: usize, keys: u64) -> Cache<u64, u64> {
    let mut cache = Cache::new(config(max_size));
    let mut graveyard = Vec::new();
    for key in 0..keys {
        insert(&mut cache, key, key, &mut graveyard);
    }
    cache
}

/// Fixed-seed xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(s) over ranks 0..n, sampled by binary search in the precomputed CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u64
    }
}

fn short(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

/// Hits: every key read once per iteration, all present.
fn bench_get(c: &mut Criterion) {
    const KEYS: u64 = 10_000;
    let mut cache = filled(KEYS as usize, KEYS);
    let mut graveyard = Vec::new();
    let mut group = c.benchmark_group("cache");
    short(&mut group);
    group.throughput(Throughput::Elements(KEYS));
    group.bench_function("get_hit_10k", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for key in 0..KEYS {
                sum = sum.wrapping_add(*get(&mut cache, black_box(key), &mut graveyard).unwrap());
            }
            sum
        });
    });
    group.finish();
    assert!(graveyard.is_empty());
}

/// Updates of present keys: the old value goes to the graveyard, emptied each iteration.
fn bench_update(c: &mut Criterion) {
    const KEYS: u64 = 10_000;
    let mut cache = filled(KEYS as usize, KEYS);
    let mut graveyard = Vec::with_capacity(KEYS as usize);
    let mut group = c.benchmark_group("cache");
    short(&mut group);
    group.throughput(Throughput::Elements(KEYS));
    group.bench_function("insert_update_10k", |b| {
        b.iter(|| {
            for key in 0..KEYS {
                insert(&mut cache, black_box(key), key + 1, &mut graveyard);
            }
            graveyard.clear();
        });
    });
    group.finish();
    assert_eq!(cache.len_unpurged(), KEYS as usize);
}

/// Inserts of new keys into a full cache: each one evicts. Keys never repeat across
/// iterations, so the cache stays in its steady state (full, no ghost hits).
fn bench_insert_evict(c: &mut Criterion) {
    const MAX: usize = 10_000;
    const KEYS: u64 = 100_000;
    let mut cache = filled(MAX, MAX as u64);
    let mut graveyard = Vec::with_capacity(KEYS as usize);
    let mut next = MAX as u64;
    let mut group = c.benchmark_group("cache");
    short(&mut group);
    group.throughput(Throughput::Elements(KEYS));
    group.bench_function("insert_evict_100k_into_10k", |b| {
        b.iter(|| {
            for key in next..next + KEYS {
                insert(&mut cache, black_box(key), key, &mut graveyard);
            }
            next += KEYS;
            graveyard.clear();
        });
    });
    group.finish();
    assert_eq!(cache.len_unpurged(), MAX);
}

/// Get, and insert on a miss, with keys drawn from Zipf(1.0) over 100k keys; 10k fit.
fn bench_zipf(c: &mut Criterion) {
    const UNIVERSE: usize = 100_000;
    const MAX: usize = 10_000;
    const REQUESTS: usize = 100_000;
    let zipf = Zipf::new(UNIVERSE, 1.0);
    let mut rng = Rng(0x5EED_1234_ABCD_EF01);
    let requests: Vec<u64> = (0..REQUESTS).map(|_| zipf.sample(&mut rng)).collect();
    let mut cache = Cache::new(config(MAX));
    let mut graveyard = Vec::with_capacity(REQUESTS);
    let run = |cache: &mut Cache<u64, u64>, graveyard: &mut Graveyard<u64, u64>| {
        let mut hits = 0u64;
        for &key in &requests {
            if get(cache, black_box(key), graveyard).is_some() {
                hits += 1;
            } else {
                insert(cache, key, key, graveyard);
            }
        }
        graveyard.clear();
        hits
    };
    // Warm up to the steady state, and report the hit ratio once.
    run(&mut cache, &mut graveyard);
    let hits = run(&mut cache, &mut graveyard);
    eprintln!(
        "cache/zipf: hit ratio {:.3} (Zipf 1.0, {UNIVERSE} keys, max_size {MAX})",
        hits as f64 / REQUESTS as f64
    );
    let mut group = c.benchmark_group("cache");
    short(&mut group);
    group.throughput(Throughput::Elements(REQUESTS as u64));
    group.bench_function("zipf_get_or_insert_100k_keys_10k_size", |b| {
        b.iter(|| run(&mut cache, &mut graveyard));
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_get,
    bench_update,
    bench_insert_evict,
    bench_zipf
);
criterion_main!(benches);
