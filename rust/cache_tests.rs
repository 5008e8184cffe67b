//! Unit tests of `Cache`, with u64 keys hashed by a multiplicative mixer. As a child module of
//! `cache`, they can look at the private state (queues, slots, tag index) and check it is
//! consistent and bounded.

use std::collections::{HashMap, HashSet, VecDeque};

use super::*;

fn hash(key: u64) -> u64 {
    key.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

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

fn weighed(max_size: usize, max_weight: u64) -> Config {
    Config {
        max_weight: Some(max_weight),
        ..config(max_size)
    }
}

fn with_ttl(ttl: Tick) -> Insert {
    Insert {
        ttl: Some(ttl),
        ..Insert::default()
    }
}

fn with_weight(weight: u64) -> Insert {
    Insert {
        weight,
        ..Insert::default()
    }
}

fn with_tags(tags: &[&str]) -> Insert {
    Insert {
        tags: Some(tags.iter().map(|&t| Box::from(t)).collect()),
        ..Insert::default()
    }
}

/// The cache under test with its graveyard and a manual "now".
struct Harness<V> {
    cache: Cache<u64, V>,
    graveyard: Graveyard<u64, V>,
    now: Tick,
}

impl<V: Clone> Harness<V> {
    fn new(config: Config) -> Self {
        Harness {
            cache: Cache::new(config),
            graveyard: Vec::new(),
            now: 0,
        }
    }

    fn insert_with(&mut self, key: u64, value: V, options: Insert) -> Inserted {
        self.cache
            .insert(
                hash(key),
                key,
                value,
                eq(key),
                options,
                self.now,
                &mut self.graveyard,
            )
            .expect("u64 keys always compare")
    }

    fn insert(&mut self, key: u64, value: V) -> Inserted {
        self.insert_with(key, value, Insert::default())
    }

    fn get(&mut self, key: u64) -> Option<V> {
        self.cache
            .get(hash(key), eq(key), self.now, &mut self.graveyard)
            .expect("u64 keys always compare")
            .cloned()
    }

    fn contains(&mut self, key: u64) -> bool {
        self.cache
            .contains(hash(key), eq(key), self.now, &mut self.graveyard)
            .expect("u64 keys always compare")
    }

    fn remaining(&mut self, key: u64) -> Option<Tick> {
        self.cache
            .remaining(hash(key), eq(key), self.now, &mut self.graveyard)
            .expect("u64 keys always compare")
    }

    fn remove(&mut self, key: u64) -> Option<(u64, V)> {
        self.cache
            .remove(hash(key), eq(key), self.now, &mut self.graveyard)
            .expect("u64 keys always compare")
    }

    fn purge(&mut self) -> usize {
        self.cache.purge_expired(self.now, &mut self.graveyard)
    }

    fn invalidate(&mut self, tag: &str) -> usize {
        self.cache
            .invalidate_tag(tag, self.now, &mut self.graveyard)
    }

    fn len(&self) -> usize {
        self.cache.len_unpurged()
    }

    fn keys(&self) -> HashSet<u64> {
        self.cache.iter().map(|(k, _)| *k).collect()
    }

    fn graveyard_keys(&self) -> Vec<u64> {
        self.graveyard.iter().map(|(k, _)| *k).collect()
    }
}

/// The slots of a queue from front to back, checking its links both ways.
fn walk<K, V>(cache: &Cache<K, V>, queue: Queue) -> Vec<u32> {
    let mut order = Vec::new();
    let mut prev = NIL;
    let mut at = queue.front;
    while at != NIL {
        let entry = cache.slots[at as usize]
            .as_ref()
            .expect("queued slot is occupied");
        assert_eq!(entry.prev, prev, "slot {at}: prev link");
        order.push(at);
        assert!(order.len() <= cache.slots.len(), "queue has a cycle");
        prev = at;
        at = entry.next;
    }
    assert_eq!(queue.back, prev, "queue back");
    order
}

/// Checks the private bookkeeping against the slots: counts, weights, the hash table, each
/// entry linked exactly once in the right queue, the free list, the tag index, the bounds.
fn check_invariants<K, V>(cache: &Cache<K, V>) {
    let small = walk(cache, cache.small);
    let main = walk(cache, cache.main);
    let mut live = 0;
    let mut weight = 0;
    let mut small_units = 0;
    let mut tagged: HashMap<&str, HashSet<u32>> = HashMap::new();
    for (index, slot) in cache.slots.iter().enumerate() {
        let index = index as u32;
        let Some(entry) = slot.as_ref() else {
            continue;
        };
        live += 1;
        weight += u64::from(entry.weight);
        if !entry.in_main {
            small_units += cache.units(entry);
        }
        assert!(
            cache.table.find(entry.hash, |&i| i == index).is_some(),
            "entry {index} missing from the table"
        );
        let (in_small, in_main) = (
            small.iter().filter(|&&i| i == index).count(),
            main.iter().filter(|&&i| i == index).count(),
        );
        if entry.in_main {
            assert_eq!((in_small, in_main), (0, 1), "entry {index} queued wrongly");
        } else {
            assert_eq!((in_small, in_main), (1, 0), "entry {index} queued wrongly");
        }
        assert_eq!(
            entry.tagged,
            cache.entry_tags.contains_key(&index),
            "entry {index} tagged"
        );
        for tag in cache
            .entry_tags
            .get(&index)
            .iter()
            .flat_map(|tags| tags.iter())
        {
            tagged.entry(tag).or_default().insert(index);
        }
    }
    assert_eq!(small.len() + main.len(), live, "queued entries");
    assert_eq!(live, cache.len, "len");
    assert_eq!(cache.table.len(), cache.len, "table size");
    assert_eq!(weight, cache.weight, "weight");
    assert_eq!(small_units, cache.small_units, "small_units");
    assert_eq!(live + cache.free.len(), cache.slots.len(), "free list");
    let free: HashSet<u32> = cache.free.iter().copied().collect();
    assert_eq!(free.len(), cache.free.len(), "free list duplicates");
    for &index in &free {
        assert!(cache.slots[index as usize].is_none(), "free slot used");
    }
    assert_eq!(tagged.len(), cache.tags.len(), "tag index has other tags");
    for (tag, members) in &cache.tags {
        assert_eq!(Some(members), tagged.get(&**tag), "tag {tag}");
    }
    assert!(cache.len <= cache.config.max_size, "count bound");
    if let Some(max) = cache.config.max_weight {
        assert!(cache.weight <= max, "weight bound");
    }
    assert!(cache.ghost.order.len() <= cache.ghost.capacity);
    assert!(cache.sketch.additions < cache.sketch.sample.max(1));
}

/// Fixed-seed xorshift64*, for reproducible workloads without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(s) over ranks 0..n by inverse CDF.
struct Zipf(Vec<f64>);

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
        Zipf(cdf)
    }

    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1) as u64
    }
}

/// The baseline: a plain FIFO of the same capacity, no promotion.
struct Fifo {
    order: VecDeque<u64>,
    present: HashSet<u64>,
    capacity: usize,
}

impl Fifo {
    fn new(capacity: usize) -> Self {
        Fifo {
            order: VecDeque::new(),
            present: HashSet::new(),
            capacity,
        }
    }

    /// Get-or-insert; true on a hit.
    fn access(&mut self, key: u64) -> bool {
        if self.present.contains(&key) {
            return true;
        }
        if self.order.len() == self.capacity {
            let old = self.order.pop_front().expect("full");
            self.present.remove(&old);
        }
        self.order.push_back(key);
        self.present.insert(key);
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Basics

#[test]
fn insert_get_and_miss() {
    let mut t = Harness::new(config(10));
    assert_eq!(t.insert(1, "one".to_string()), Inserted::New);
    assert_eq!(t.insert(2, "two".to_string()), Inserted::New);
    assert_eq!(t.get(1).as_deref(), Some("one"));
    assert_eq!(t.get(2).as_deref(), Some("two"));
    assert_eq!(t.get(3), None);
    assert!(t.contains(1));
    assert!(!t.contains(3));
    assert_eq!(t.len(), 2);
    let stats = t.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.inserts), (2, 1, 2));
    assert_eq!(stats.updates + stats.evictions + stats.expirations, 0);
    assert!(t.graveyard.is_empty());
    check_invariants(&t.cache);
}

#[test]
fn update_keeps_one_entry_and_its_place() {
    let mut t = Harness::new(config(10));
    t.insert(1, "a".to_string());
    t.insert(2, "b".to_string());
    let small_before = walk(&t.cache, t.cache.small);
    assert_eq!(t.insert(1, "a2".to_string()), Inserted::Updated);
    assert_eq!(t.len(), 1 + 1);
    assert_eq!(t.get(1).as_deref(), Some("a2"));
    let stats = t.cache.stats();
    assert_eq!((stats.inserts, stats.updates), (2, 1));
    // The old value is handed back for dropping, the queue is untouched.
    assert_eq!(t.graveyard, vec![(1, "a".to_string())]);
    assert_eq!(walk(&t.cache, t.cache.small), small_before);
    assert_eq!(t.keys(), HashSet::from([1, 2]));
    check_invariants(&t.cache);
}

#[test]
fn remove_returns_the_pair() {
    let mut t = Harness::new(config(10));
    t.insert(7, "seven".to_string());
    t.insert(8, "eight".to_string());
    assert_eq!(t.remove(7), Some((7, "seven".to_string())));
    assert_eq!(t.remove(7), None);
    assert_eq!(t.get(7), None);
    assert_eq!(t.len(), 1);
    assert_eq!(t.cache.stats().invalidations, 1);
    // Given back to the caller, not put in the graveyard.
    assert!(t.graveyard.is_empty());
    check_invariants(&t.cache);
    // The freed slot is reused.
    t.insert(9, "nine".to_string());
    assert_eq!(t.cache.slots.len(), 2);
    assert_eq!(t.get(9).as_deref(), Some("nine"));
    check_invariants(&t.cache);
}

#[test]
fn clear_hands_everything_back() {
    let mut t = Harness::new(config(10));
    for key in 0..5 {
        t.insert_with(key, key * 10, with_tags(&["t"]));
    }
    t.cache.clear(t.now, &mut t.graveyard);
    assert_eq!(t.len(), 0);
    assert_eq!(t.cache.stats().invalidations, 5);
    let mut gone = t.graveyard_keys();
    gone.sort_unstable();
    assert_eq!(gone, vec![0, 1, 2, 3, 4]);
    assert_eq!(t.invalidate("t"), 0);
    check_invariants(&t.cache);
    t.insert(3, 30);
    assert_eq!(t.get(3), Some(30));
    check_invariants(&t.cache);
}

// ---------------------------------------------------------------------------------------------
// Bounds and eviction

#[test]
fn count_bound_never_exceeded() {
    let mut t = Harness::new(config(100));
    let mut rng = Rng(0x1234_5678);
    for key in 0..10_000u64 {
        assert_eq!(t.insert(key, key), Inserted::New);
        assert!(t.len() <= 100, "len {} after inserting {key}", t.len());
        // Reads of recent keys, so that some entries are promoted and main is exercised too.
        let back = rng.below(150);
        let _ = t.get(key.saturating_sub(back));
        if key % 97 == 0 {
            check_invariants(&t.cache);
        }
    }
    assert_eq!(t.len(), 100);
    let stats = t.cache.stats();
    assert_eq!(stats.inserts, 10_000);
    assert_eq!(stats.evictions, 10_000 - 100);
    assert_eq!(t.graveyard.len() as u64, stats.evictions);
    check_invariants(&t.cache);
}

#[test]
fn max_size_one() {
    let mut t = Harness::new(config(1));
    for key in 0..100 {
        t.insert(key, key);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(key), Some(key));
        check_invariants(&t.cache);
    }
    assert_eq!(t.cache.stats().evictions, 99);
}

#[test]
fn evicted_keys_reach_the_graveyard_exactly_once() {
    let mut t = Harness::new(config(100));
    let mut rng = Rng(42);
    for key in 0..5_000u64 {
        t.insert(key, key * 3);
        // Some reads, so entries leave from both queues.
        for _ in 0..2 {
            let k = key.saturating_sub(rng.below(120));
            if let Some(v) = t.get(k) {
                assert_eq!(v, k * 3);
            }
        }
    }
    let stats = t.cache.stats();
    assert_eq!(t.graveyard.len() as u64, stats.evictions);
    let mut seen = HashMap::new();
    for (key, value) in &t.graveyard {
        assert_eq!(
            *value,
            key * 3,
            "graveyard pairs key {key} with a wrong value"
        );
        *seen.entry(*key).or_insert(0) += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "a key was buried twice");
    let resident = t.keys();
    assert!(
        resident.iter().all(|k| !seen.contains_key(k)),
        "resident and buried"
    );
    assert_eq!(seen.len() + resident.len(), 5_000, "a key vanished");
    check_invariants(&t.cache);
}

#[test]
fn weight_bound_never_exceeded() {
    let mut t = Harness::new(weighed(10_000, 1_000));
    let mut rng = Rng(7);
    let mut weights = HashMap::new();
    for key in 0..3_000u64 {
        let weight = 1 + rng.below(200);
        weights.insert(key, weight);
        assert_eq!(t.insert_with(key, key, with_weight(weight)), Inserted::New);
        assert!(t.cache.weight() <= 1_000, "weight {}", t.cache.weight());
        if rng.below(3) == 0 {
            let _ = t.get(key.saturating_sub(rng.below(20)));
        }
        if key % 50 == 0 {
            // A weight-changing update of a resident key.
            let k = *t.keys().iter().next().expect("not empty");
            let weight = 1 + rng.below(300);
            weights.insert(k, weight);
            assert_eq!(t.insert_with(k, k, with_weight(weight)), Inserted::Updated);
            assert!(t.cache.weight() <= 1_000, "weight {}", t.cache.weight());
        }
        check_invariants(&t.cache);
    }
    let resident: u64 = t.keys().iter().map(|k| weights[k]).sum();
    assert_eq!(resident, t.cache.weight());
    let stats = t.cache.stats();
    assert_eq!(stats.evictions, stats.inserts - t.len() as u64);
}

#[test]
fn too_heavy_is_not_stored() {
    let mut t = Harness::new(weighed(100, 1_000));
    t.insert_with(1, "light".to_string(), with_weight(10));
    let before = t.cache.stats();
    assert_eq!(
        t.insert_with(2, "heavy".to_string(), with_weight(1_001)),
        Inserted::TooHeavy
    );
    assert!(!t.contains(2));
    assert_eq!(t.len(), 1);
    assert_eq!(t.cache.weight(), 10);
    assert_eq!(t.graveyard, vec![(2, "heavy".to_string())]);
    let after = t.cache.stats();
    assert_eq!(after.evictions, before.evictions + 1);
    assert_eq!(after.inserts, before.inserts);
    check_invariants(&t.cache);

    // An update that makes a stored entry too heavy drops it.
    t.graveyard.clear();
    assert_eq!(
        t.insert_with(1, "fat".to_string(), with_weight(5_000)),
        Inserted::TooHeavy
    );
    assert!(!t.contains(1));
    assert_eq!((t.len(), t.cache.weight()), (0, 0));
    let mut buried = t.graveyard.clone();
    buried.sort();
    assert_eq!(
        buried,
        vec![(1, "fat".to_string()), (1, "light".to_string())]
    );
    check_invariants(&t.cache);

    // Exactly max_weight fits, pushing out the (unread) rest.
    for key in 10..20 {
        t.insert_with(key, "x".to_string(), with_weight(50));
    }
    assert_eq!(
        t.insert_with(99, "full".to_string(), with_weight(1_000)),
        Inserted::New
    );
    assert_eq!(t.get(99).as_deref(), Some("full"));
    assert_eq!((t.len(), t.cache.weight()), (1, 1_000));
    check_invariants(&t.cache);
}

// ---------------------------------------------------------------------------------------------
// Expiry

#[test]
fn ttl_expires_exactly_at_the_deadline() {
    let mut t = Harness::new(Config {
        ttl: 100,
        ..config(10)
    });
    t.insert(1, 1u64);
    t.now = 99;
    assert_eq!(t.remaining(1), Some(1));
    assert_eq!(t.get(1), Some(1));
    t.now = 100;
    assert_eq!(t.get(1), None);
    assert_eq!(t.len(), 0, "an expired entry met on lookup is removed");
    assert_eq!(t.graveyard, vec![(1, 1)]);
    let stats = t.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.expirations), (1, 1, 1));
    assert_eq!(stats.evictions, 0);
    check_invariants(&t.cache);
}

#[test]
fn ttl_per_entry_override() {
    let mut t = Harness::new(Config {
        ttl: 100,
        ..config(10)
    });
    t.insert_with(1, 1u64, with_ttl(10));
    t.insert_with(2, 2, with_ttl(NEVER));
    t.insert(3, 3);
    assert_eq!(t.remaining(1), Some(10));
    assert_eq!(t.remaining(2), Some(NEVER));
    assert_eq!(t.remaining(3), Some(100));
    t.now = 9;
    assert!(t.contains(1));
    t.now = 10;
    assert!(!t.contains(1));
    assert!(t.contains(3));
    t.now = 100;
    assert!(!t.contains(3));
    t.now = u64::MAX - 1;
    assert_eq!(t.get(2), Some(2));
    assert_eq!(t.remaining(2), Some(NEVER));
    check_invariants(&t.cache);

    // A cache without a default TTL still honours a per-entry one.
    let mut t = Harness::new(config(10));
    t.insert_with(1, 1u64, with_ttl(5));
    t.insert(2, 2);
    t.now = 5;
    assert!(!t.contains(1));
    assert!(t.contains(2));
    assert_eq!(t.remaining(2), Some(NEVER));
}

#[test]
fn update_resets_the_ttl_and_an_expired_key_is_inserted_anew() {
    let mut t = Harness::new(Config {
        ttl: 100,
        ..config(10)
    });
    t.insert(1, 1u64);
    t.now = 50;
    assert_eq!(t.insert(1, 2), Inserted::Updated);
    t.now = 149;
    assert_eq!(t.get(1), Some(2));
    t.now = 150;
    assert_eq!(t.insert(1, 3), Inserted::New);
    let stats = t.cache.stats();
    assert_eq!((stats.inserts, stats.updates, stats.expirations), (2, 1, 1));
    assert_eq!(t.len(), 1);
    check_invariants(&t.cache);
}

#[test]
fn tti_is_refreshed_by_get_not_by_contains() {
    let mut t = Harness::new(Config {
        tti: 100,
        ..config(10)
    });
    t.insert(1, 1u64);
    t.insert(2, 2);
    t.now = 60;
    assert_eq!(t.get(1), Some(1)); // idle deadline of 1 moves to 160
    assert!(t.contains(2)); // 2 stays at 100
    assert_eq!(t.remaining(2), Some(40)); // remaining is not a read either
    t.now = 99;
    assert!(t.contains(2));
    t.now = 100;
    assert!(!t.contains(2));
    assert!(t.contains(1));
    t.now = 159;
    assert!(t.contains(1));
    t.now = 160;
    assert_eq!(t.get(1), None);
    assert_eq!(t.cache.stats().expirations, 2);
    check_invariants(&t.cache);
}

#[test]
fn ttl_and_tti_together_take_the_earlier_deadline() {
    let mut t = Harness::new(Config {
        ttl: 150,
        tti: 100,
        ..config(10)
    });
    t.insert(1, 1u64);
    t.now = 90;
    assert_eq!(t.get(1), Some(1)); // TTI would allow 190, TTL stops it at 150
    assert_eq!(t.remaining(1), Some(60));
    t.now = 150;
    assert!(!t.contains(1));
}

#[test]
fn purge_removes_expired_entries_only() {
    let mut t = Harness::new(config(1_000));
    for key in 0..200u64 {
        let ttl = if key % 2 == 0 { 10 } else { NEVER };
        t.insert_with(key, key, with_ttl(ttl));
    }
    t.now = 9;
    assert_eq!(t.purge(), 0);
    assert!(t.graveyard.is_empty());
    t.now = 10;
    assert_eq!(t.purge(), 100);
    assert_eq!(t.len(), 100);
    assert_eq!(t.cache.stats().expirations, 100);
    assert!(t.graveyard.iter().all(|(k, _)| k % 2 == 0));
    assert!(t.keys().iter().all(|k| k % 2 == 1));
    assert_eq!(t.purge(), 0);
    check_invariants(&t.cache);
    for key in (1..200).step_by(2) {
        assert_eq!(t.get(key), Some(key));
    }
}

#[test]
fn purge_after_mass_expiry_gives_memory_back() {
    let mut t = Harness::new(Config {
        ttl: 1_000,
        ..config(10_000)
    });
    for key in 0..5_000u64 {
        t.insert_with(key, key, with_tags(&["all"]));
    }
    assert_eq!(t.cache.slots.len(), 5_000);
    t.now = 999;
    assert_eq!(t.purge(), 0);
    t.now = 1_000;
    assert_eq!(t.purge(), 5_000);
    assert_eq!(t.len_unpurged_for_test(), 0);
    assert_eq!(t.cache.stats().expirations, 5_000);
    assert_eq!(t.graveyard.len(), 5_000);
    assert!(
        t.cache.slots.capacity() < 1_024,
        "slots {}",
        t.cache.slots.capacity()
    );
    assert!(
        t.cache.free.capacity() < 1_024,
        "free {}",
        t.cache.free.capacity()
    );
    assert!(
        t.cache.table.capacity() < 1_024,
        "table {}",
        t.cache.table.capacity()
    );
    assert!(t.cache.tags.is_empty());
    check_invariants(&t.cache);
    // Still works afterwards, eviction included.
    let mut t2 = t;
    t2.cache.config.max_size = 10;
    for key in 0..50u64 {
        t2.insert(key + 10_000, key);
        check_invariants(&t2.cache);
    }
    assert_eq!(t2.len(), 10);
    assert_eq!(t2.get(10_049), Some(49));
}

impl<V> Harness<V> {
    fn len_unpurged_for_test(&self) -> usize {
        self.cache.len_unpurged()
    }
}

#[test]
fn purge_with_a_live_tail_keeps_only_live_entries_queued() {
    let mut t = Harness::new(config(10_000));
    for key in 0..5_000u64 {
        let ttl = if key < 4_990 { 10 } else { NEVER };
        t.insert_with(key, key, with_ttl(ttl));
    }
    t.now = 10;
    assert_eq!(t.purge(), 4_990);
    assert_eq!(t.len(), 10);
    assert_eq!(
        walk(&t.cache, t.cache.small).len() + walk(&t.cache, t.cache.main).len(),
        10
    );
    check_invariants(&t.cache);
    for key in 4_990..5_000 {
        assert_eq!(t.get(key), Some(key));
    }
}

// ---------------------------------------------------------------------------------------------
// Tags

#[test]
fn invalidate_tag_removes_its_entries() {
    let mut t = Harness::new(config(100));
    for key in 0..10u64 {
        let tags: &[&str] = match key % 3 {
            0 => &["a"],
            1 => &["a", "b"],
            _ => &[],
        };
        t.insert_with(key, key, with_tags(tags));
    }
    assert_eq!(t.invalidate("b"), 3); // 1, 4, 7
    assert_eq!(t.keys(), HashSet::from([0, 2, 3, 5, 6, 8, 9]));
    assert_eq!(t.invalidate("a"), 4); // 0, 3, 6, 9
    assert_eq!(t.keys(), HashSet::from([2, 5, 8]));
    assert_eq!(t.invalidate("a"), 0);
    assert_eq!(t.invalidate("nope"), 0);
    assert_eq!(t.cache.stats().invalidations, 7);
    assert_eq!(t.graveyard.len(), 7);
    assert!(t.cache.tags.is_empty());
    check_invariants(&t.cache);
}

#[test]
fn update_replaces_the_tags() {
    let mut t = Harness::new(config(100));
    t.insert_with(1, 1u64, with_tags(&["a"]));
    t.insert_with(2, 2, with_tags(&["a"]));
    t.insert_with(1, 10, with_tags(&["b"]));
    check_invariants(&t.cache);
    assert_eq!(t.invalidate("a"), 1);
    assert_eq!(t.keys(), HashSet::from([1]));
    // The same tag used again after an update.
    t.insert_with(1, 11, with_tags(&["b", "c"]));
    t.insert_with(1, 12, with_tags(&["b"]));
    check_invariants(&t.cache);
    assert_eq!(t.invalidate("c"), 0);
    assert!(t.contains(1));
    // An update without tags drops them.
    t.insert_with(3, 3, with_tags(&["b"]));
    t.insert(3, 30);
    assert_eq!(t.invalidate("b"), 1);
    assert_eq!(t.keys(), HashSet::from([3]));
    // A tag reused after its entries were invalidated.
    t.insert_with(4, 4, with_tags(&["b"]));
    assert_eq!(t.invalidate("b"), 1);
    assert!(t.cache.tags.is_empty());
    check_invariants(&t.cache);
}

#[test]
fn invalidate_tag_counts_only_live_entries() {
    let mut t = Harness::new(config(100));
    t.insert_with(
        1,
        1u64,
        Insert {
            ttl: Some(10),
            ..with_tags(&["t"])
        },
    );
    t.insert_with(2, 2, with_tags(&["t"]));
    t.now = 10;
    assert_eq!(t.invalidate("t"), 1);
    assert_eq!(t.len(), 0);
    let stats = t.cache.stats();
    assert_eq!((stats.invalidations, stats.expirations), (1, 1));
}

#[test]
fn evicted_entries_leave_the_tag_index() {
    let mut t = Harness::new(config(10));
    for key in 0..1_000u64 {
        t.insert_with(
            key,
            key,
            with_tags(&["x", if key % 2 == 0 { "even" } else { "odd" }]),
        );
        check_invariants(&t.cache);
    }
    assert_eq!(t.cache.tags["x"].len(), 10);
    assert_eq!(t.invalidate("x"), 10);
    assert!(t.cache.tags.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Keys that cannot be compared

/// Two keys sharing one hash; `other` is the stored one and cannot be compared.
fn undecided(key: u64, other: u64) -> impl FnMut(&u64) -> Match {
    move |k: &u64| {
        if *k == key {
            Match::Yes
        } else if *k == other {
            Match::Unknown
        } else {
            Match::No
        }
    }
}

const SHARED: u64 = 0xDEAD_BEEF;

#[test]
fn unknown_match_changes_nothing() {
    let mut t = Harness::new(config(2));
    let mut graveyard = Vec::new();
    t.cache
        .insert(SHARED, 1, 1u64, eq(1), Insert::default(), 0, &mut graveyard)
        .unwrap();
    t.insert(5, 5);
    // The cache is full: an insert would evict, if it went ahead.
    let stats = t.cache.stats();
    let slots = t.cache.slots.len();
    let r = t.cache.insert(
        SHARED,
        2,
        2,
        undecided(2, 1),
        with_tags(&["t"]),
        0,
        &mut graveyard,
    );
    assert_eq!(r, Err(Undecided));
    assert_eq!(
        t.cache.get(SHARED, undecided(2, 1), 0, &mut graveyard),
        Err(Undecided)
    );
    assert_eq!(
        t.cache.contains(SHARED, undecided(2, 1), 0, &mut graveyard),
        Err(Undecided)
    );
    assert_eq!(
        t.cache
            .remaining(SHARED, undecided(2, 1), 0, &mut graveyard),
        Err(Undecided)
    );
    assert_eq!(
        t.cache.remove(SHARED, undecided(2, 1), 0, &mut graveyard),
        Err(Undecided)
    );
    assert_eq!(t.cache.stats(), stats);
    assert_eq!(t.len(), 2);
    assert_eq!(t.cache.slots.len(), slots);
    assert!(graveyard.is_empty());
    assert!(t.cache.tags.is_empty());
    assert_eq!(t.keys(), HashSet::from([1, 5]));
    // The stored key can still be found by a comparison that can tell.
    assert_eq!(t.cache.get(SHARED, eq(1), 0, &mut graveyard), Ok(Some(&1)));
    // Its key is offered for comparison outside the lock.
    assert_eq!(
        t.cache.keys_with_hash(SHARED).copied().collect::<Vec<_>>(),
        vec![1]
    );
    check_invariants(&t.cache);
}

#[test]
fn unknown_match_on_update_changes_nothing() {
    let mut t = Harness::new(config(10));
    let mut graveyard = Vec::new();
    t.cache
        .insert(SHARED, 1, 1u64, eq(1), Insert::default(), 0, &mut graveyard)
        .unwrap();
    // Updating key 1 with a comparison that cannot tell for the stored key 1.
    let unknown = |_: &u64| Match::Unknown;
    let r = t.cache.insert(
        SHARED,
        1,
        100,
        unknown,
        Insert::default(),
        0,
        &mut graveyard,
    );
    assert_eq!(r, Err(Undecided));
    assert_eq!(t.cache.get(SHARED, eq(1), 0, &mut graveyard), Ok(Some(&1)));
    assert_eq!(t.cache.stats().updates, 0);
    assert!(graveyard.is_empty());
}

#[test]
fn unknown_match_does_not_hide_an_exact_match() {
    let mut t = Harness::new(config(10));
    let mut graveyard = Vec::new();
    for key in [1, 2] {
        t.cache
            .insert(
                SHARED,
                key,
                key * 10,
                eq(key),
                Insert::default(),
                0,
                &mut graveyard,
            )
            .unwrap();
    }
    assert_eq!(t.cache.keys_with_hash(SHARED).count(), 2);
    assert_eq!(
        t.cache.get(SHARED, undecided(2, 1), 0, &mut graveyard),
        Ok(Some(&20))
    );
    assert_eq!(
        t.cache.get(SHARED, undecided(1, 2), 0, &mut graveyard),
        Ok(Some(&10))
    );
    check_invariants(&t.cache);
}

#[test]
fn colliding_hashes_are_told_apart_by_eq() {
    let mut t = Harness::new(config(100));
    let mut graveyard = Vec::new();
    for key in 0..20u64 {
        t.cache
            .insert(
                SHARED,
                key,
                key,
                eq(key),
                Insert::default(),
                0,
                &mut graveyard,
            )
            .unwrap();
    }
    for key in 0..20u64 {
        assert_eq!(
            t.cache.get(SHARED, eq(key), 0, &mut graveyard),
            Ok(Some(&key))
        );
    }
    assert_eq!(
        t.cache.remove(SHARED, eq(7), 0, &mut graveyard),
        Ok(Some((7, 7)))
    );
    assert_eq!(t.cache.get(SHARED, eq(7), 0, &mut graveyard), Ok(None));
    assert_eq!(t.cache.get(SHARED, eq(8), 0, &mut graveyard), Ok(Some(&8)));
    check_invariants(&t.cache);
}

// ---------------------------------------------------------------------------------------------
// Memory stays bounded

#[test]
fn insert_remove_cycles_do_not_grow_the_queues() {
    let mut t = Harness::new(config(1_000));
    for cycle in 0..100_000u64 {
        let tags: &[&str] = if cycle % 3 == 0 { &["t"] } else { &[] };
        t.insert_with(cycle, cycle, with_tags(tags));
        assert_eq!(t.remove(cycle), Some((cycle, cycle)));
        assert!(
            t.cache.small.is_empty() && t.cache.main.is_empty(),
            "cycle {cycle}"
        );
    }
    assert_eq!(t.len(), 0);
    assert_eq!(t.cache.slots.len(), 1);
    assert!(t.cache.free.len() <= 1);
    assert!(t.cache.tags.is_empty());
    assert!(t.cache.table.capacity() <= 16);
    assert_eq!(t.cache.stats().evictions, 0);
    check_invariants(&t.cache);
}

#[test]
fn churn_beside_resident_entries_does_not_grow_the_queues() {
    // 500 entries stay; others come and go, some via the ghost into main.
    let mut t = Harness::new(config(600));
    for key in 0..500u64 {
        t.insert(key, key);
        let _ = t.get(key);
    }
    let mut rng = Rng(99);
    for cycle in 0..20_000u64 {
        let key = 1_000_000 + rng.below(300);
        t.insert(key, cycle);
        if rng.below(4) != 0 {
            t.remove(key);
        }
        if cycle % 7 == 0 {
            let _ = t.get(rng.below(500));
        }
        let queued = walk(&t.cache, t.cache.small).len() + walk(&t.cache, t.cache.main).len();
        assert_eq!(queued, t.len());
        assert!(t.cache.slots.len() <= 601 + 1);
    }
    check_invariants(&t.cache);
}

// ---------------------------------------------------------------------------------------------
// Policy

#[test]
fn a_key_evicted_from_small_comes_back_to_main() {
    let mut t = Harness::new(config(10));
    for key in 0..11u64 {
        t.insert(key, key);
    }
    assert!(!t.contains(0));
    assert!(t.cache.ghost.contains(hash(0)));
    t.insert(0, 0);
    let index = t.cache.find(hash(0), eq(0)).unwrap().unwrap();
    assert!(t.cache.entry(index).in_main);
    check_invariants(&t.cache);
}

#[test]
fn a_read_entry_in_main_gets_another_lap() {
    // max_size 4: the small queue aims for 1 entry, the ghost remembers 4 hashes.
    let mut t = Harness::new(config(4));
    for key in 0..4u64 {
        t.insert(key, key);
        assert_eq!(t.get(key), Some(key));
    }
    // 0..4 were read in small: they move to main, and main's front (0, unread since) leaves.
    t.insert(4, 4);
    assert_eq!(t.graveyard_keys(), vec![0]);
    // 4 leaves small unread, so its hash is remembered; it comes back straight into main.
    t.insert(5, 5);
    assert_eq!(t.graveyard_keys(), vec![0, 4]);
    t.insert(4, 4);
    assert_eq!(t.graveyard_keys(), vec![0, 4, 1]);
    // Main is now 2, 3, 4. 2 is read: when it reaches the front it is passed over once.
    assert_eq!(t.get(2), Some(2));
    t.insert(6, 6);
    t.insert(5, 5);
    assert_eq!(t.graveyard_keys(), vec![0, 4, 1, 5, 3]);
    assert!(t.contains(2));
    check_invariants(&t.cache);
}

#[test]
fn a_ghost_key_goes_to_main_only_if_inserted_more_often_than_mains_victim() {
    // max_size 4: the small queue aims for 1 entry.
    let mut t = Harness::new(config(4));
    for key in 0..4u64 {
        t.insert(key, key);
        assert_eq!(t.get(key), Some(key));
    }
    // 0..4 move to main and 0 leaves it; 4 leaves small unread and is remembered.
    t.insert(4, 4);
    t.insert(5, 5);
    assert_eq!(t.graveyard_keys(), vec![0, 4]);
    let in_main = |t: &Harness<u64>, key: u64| {
        let index = t.cache.find(hash(key), eq(key)).unwrap().unwrap();
        t.cache.entry(index).in_main
    };
    // Main's next victim, 1, looks inserted 4 times; 4 has been twice: it starts over in small,
    // and 5 leaves small unread.
    for _ in 0..3 {
        t.cache.sketch.increment(hash(1));
    }
    t.insert(4, 4);
    assert!(!in_main(&t, 4));
    assert_eq!(t.graveyard_keys(), vec![0, 4, 5]);
    // 5 back with 5 insertions against 4: it goes to main, and 1 leaves.
    for _ in 0..3 {
        t.cache.sketch.increment(hash(5));
    }
    t.insert(5, 5);
    assert!(in_main(&t, 5));
    assert_eq!(t.graveyard_keys(), vec![0, 4, 5, 1]);
    check_invariants(&t.cache);
}

#[test]
fn sketch_counts_never_under_and_halve() {
    let mut sketch = Sketch::new(1_000);
    assert_eq!(sketch.table.len(), 64);
    assert_eq!(sketch.sample, 20_000);
    // 1 000 keys inserted 1 to 5 times: estimates are at least the truth and mostly exact.
    for key in 0..1_000u64 {
        for _ in 0..=key % 5 {
            sketch.increment(hash(key));
        }
    }
    let mut exact = 0;
    for key in 0..1_000u64 {
        let truth = (key % 5 + 1) as u8;
        let estimate = sketch.frequency(hash(key));
        assert!(estimate >= truth, "key {key}: {estimate} < {truth}");
        exact += usize::from(estimate == truth);
    }
    assert!(exact > 900, "{exact} of 1000 exact");
    assert_eq!(sketch.frequency(hash(5_000)), 0);
    // Counters saturate at 15; halving halves them, and the count of additions with them.
    for _ in 0..40 {
        sketch.increment(hash(7));
    }
    assert_eq!(sketch.frequency(hash(7)), 15);
    let additions = sketch.additions;
    sketch.halve();
    assert_eq!(sketch.frequency(hash(7)), 7);
    assert_eq!(sketch.additions, additions / 2);
    sketch.clear();
    assert_eq!(sketch.frequency(hash(7)), 0);
}

#[test]
fn the_sketch_halves_after_its_sample() {
    let mut sketch = Sketch::new(8);
    assert_eq!(sketch.sample, 160);
    for _ in 0..10 {
        sketch.increment(hash(1));
    }
    // Distinct keys fill the sample: at the 160th addition every counter is halved.
    let mut key = 100;
    while sketch.additions < 159 {
        sketch.increment(hash(key));
        key += 1;
    }
    assert_eq!(sketch.frequency(hash(1)), 10);
    sketch.increment(hash(key));
    assert_eq!(sketch.frequency(hash(1)), 5);
    assert!(sketch.additions < sketch.sample);
}

#[test]
fn the_sketch_is_sized_when_the_cache_first_fills() {
    let mut t = Harness::new(config(1_000_000));
    for key in 0..1_000u64 {
        t.insert(key, key);
    }
    assert_eq!(t.cache.sketch.entries, 0);
    assert_eq!(t.cache.sketch.table.len(), 1);
    // Weighed: 100 entries fill it, whatever max_size says.
    let mut t = Harness::new(weighed(1_000_000, 1_000));
    for key in 0..=100u64 {
        t.insert_with(key, key, with_weight(10));
    }
    assert_eq!(t.cache.sketch.entries, 100);
    assert_eq!(t.cache.sketch.table.len(), 8);
    // Entries ten times lighter: the sketch grows with them.
    for key in 1_000..=2_000u64 {
        t.insert_with(key, key, with_weight(1));
    }
    assert!(
        t.cache.sketch.entries * 2 >= t.len(),
        "{}",
        t.cache.sketch.entries
    );
    check_invariants(&t.cache);
}

#[test]
fn a_sharp_fall_of_the_hit_ratio_clears_the_sketch() {
    // max_size 100: once full, the hit ratio is read every 200 requests, at the next insert.
    let request = |t: &mut Harness<u64>, key: u64| {
        if t.get(key).is_none() {
            t.insert(key, key);
        }
    };
    let steady = |shift: bool| {
        let mut t = Harness::new(config(100));
        for key in 0..=100u64 {
            t.insert(key, key);
        }
        assert_eq!(t.cache.sketch.entries, 100);
        // A key inserted 3 times is remembered...
        for _ in 0..3 {
            t.insert(9_999, 0);
            t.remove(9_999);
        }
        // ...while 50 hot keys are read in turn, nearly always hits...
        for i in 0..5_000u64 {
            request(&mut t, i % 50);
        }
        assert_eq!(t.cache.sketch.frequency(hash(9_999)), 3);
        // ...until the hot set moves: requests for other keys, all missing.
        if shift {
            for i in 0..400u64 {
                request(&mut t, 1_000 + i);
            }
        }
        check_invariants(&t.cache);
        t.cache.sketch.frequency(hash(9_999))
    };
    assert_eq!(steady(false), 3);
    assert_eq!(steady(true), 0);
}

#[test]
fn hot_set_survives_a_scan() {
    let hot = 50u64;
    let mut t = Harness::new(config(100));
    let mut fifo = Fifo::new(100);
    for key in 0..hot {
        t.insert(key, key);
        fifo.access(key);
        assert_eq!(t.get(key), Some(key));
    }
    let mut hot_misses = 0;
    let mut fifo_hot_misses = 0;
    for (i, key) in (1_000..21_000u64).enumerate() {
        // A one-pass scan: every key is new and never read again.
        assert_eq!(t.get(key), None);
        t.insert(key, key);
        fifo.access(key);
        // The hot set keeps being read, one key per scan step.
        let hot_key = i as u64 % hot;
        if t.get(hot_key).is_none() {
            hot_misses += 1;
            t.insert(hot_key, hot_key);
        }
        if !fifo.access(hot_key) {
            fifo_hot_misses += 1;
        }
    }
    assert_eq!(hot_misses, 0, "the scan pushed out hot keys");
    for key in 0..hot {
        assert!(t.contains(key), "hot key {key} lost");
    }
    // A plain FIFO of the same size loses them over and over.
    assert!(fifo_hot_misses > 1_000, "fifo missed {fifo_hot_misses}");
    check_invariants(&t.cache);
}

#[test]
fn beats_fifo_on_a_skewed_workload() {
    let zipf = Zipf::new(10_000, 1.0);
    let mut rng = Rng(0xC0FFEE);
    let requests: Vec<u64> = (0..60_000).map(|_| zipf.sample(&mut rng)).collect();
    let mut t = Harness::new(config(200));
    let mut fifo = Fifo::new(200);
    let (mut hits, mut fifo_hits) = (0u32, 0u32);
    for &key in &requests {
        if t.get(key).is_some() {
            hits += 1;
        } else {
            t.insert(key, key);
        }
        if fifo.access(key) {
            fifo_hits += 1;
        }
    }
    let n = requests.len() as f64;
    let (ratio, fifo_ratio) = (f64::from(hits) / n, f64::from(fifo_hits) / n);
    eprintln!("hit ratio: s3-fifo {ratio:.3}, fifo {fifo_ratio:.3}");
    assert!(
        ratio > fifo_ratio + 0.03,
        "s3-fifo {ratio:.3} vs fifo {fifo_ratio:.3}"
    );
    assert_eq!(u64::from(hits), t.cache.stats().hits);
    check_invariants(&t.cache);
}

// ---------------------------------------------------------------------------------------------
// Everything at once

/// Random operations against a model of what must hold: a hit returns the last value written,
/// a removed key is gone, and every value handed in leaves exactly once (or stays).
fn random_operations(config: Config, seed: u64, steps: u32) {
    let max_weight = config.max_weight;
    let mut t = Harness::new(config);
    let mut rng = Rng(seed);
    let mut written: HashMap<u64, u64> = HashMap::new();
    let mut returned: Vec<(u64, u64)> = Vec::new();
    let mut next_value = 0u64;
    // Too-heavy inserts of absent keys: counted as evictions, never inserted.
    let mut refused = 0u64;
    let tag_names = ["a", "b", "c"];
    for step in 0..steps {
        t.now += rng.below(3);
        let key = rng.below(300);
        match rng.below(10) {
            0..=3 => {
                next_value += 1;
                let ttl = match rng.below(3) {
                    0 => Some(1 + rng.below(200)),
                    1 => Some(NEVER),
                    _ => None,
                };
                let tags: Option<Box<[Box<str>]>> = match rng.below(3) {
                    0 => Some(Box::new([Box::from(tag_names[rng.below(3) as usize])])),
                    1 => Some(Box::new([Box::from("a"), Box::from("c")])),
                    _ => None,
                };
                let weight = match max_weight {
                    Some(max) if rng.below(40) == 0 => max + 1 + rng.below(10),
                    Some(_) => rng.below(60),
                    None => rng.below(1_000), // ignored when unweighed
                };
                let heavy = max_weight.is_some_and(|max| weight > max);
                if heavy && !t.contains(key) {
                    refused += 1;
                }
                let options = Insert { ttl, weight, tags };
                match t.insert_with(key, next_value, options) {
                    Inserted::New | Inserted::Updated => {
                        assert!(!heavy);
                        written.insert(key, next_value);
                    }
                    Inserted::TooHeavy => {
                        assert!(heavy);
                        written.remove(&key);
                    }
                }
            }
            4..=6 => {
                if let Some(v) = t.get(key) {
                    assert_eq!(Some(&v), written.get(&key), "step {step}: stale value");
                }
            }
            7 => {
                if let Some(pair) = t.remove(key) {
                    assert_eq!(Some(&pair.1), written.get(&key), "step {step}: removed");
                    returned.push(pair);
                }
                written.remove(&key);
            }
            8 => {
                if rng.below(20) == 0 {
                    let name = tag_names[rng.below(3) as usize];
                    t.invalidate(name);
                } else if rng.below(10) == 0 {
                    t.purge();
                } else {
                    let _ = t.contains(key);
                }
            }
            _ => {
                if let Some(left) = t.remaining(key) {
                    assert!(left > 0);
                }
            }
        }
        if !written.contains_key(&key) {
            assert!(!t.contains(key), "step {step}: key {key} should be gone");
        }
        check_invariants(&t.cache);
    }
    // Conservation: values 1..=next_value each left exactly once or are still held.
    let mut all: Vec<u64> = t.graveyard.iter().map(|&(_, v)| v).collect();
    all.extend(returned.iter().map(|&(_, v)| v));
    all.extend(t.cache.iter().map(|(_, &v)| v));
    all.sort_unstable();
    assert_eq!(all, (1..=next_value).collect::<Vec<_>>());
    // The counters add up: every inserted entry is still held or left one way.
    let s = t.cache.stats();
    assert_eq!(
        s.inserts + refused,
        t.len() as u64 + s.evictions + s.expirations + s.invalidations,
        "{s:?}"
    );
    assert_eq!(
        t.graveyard.len() as u64 + returned.len() as u64 + t.len() as u64,
        next_value
    );
}

#[test]
fn random_operations_by_count() {
    random_operations(config(100), 1, 4_000);
    random_operations(
        Config {
            ttl: 150,
            tti: 80,
            ..config(37)
        },
        2,
        6_000,
    );
}

#[test]
fn random_operations_by_weight() {
    random_operations(weighed(1_000, 500), 3, 6_000);
    random_operations(
        Config {
            ttl: 300,
            ..weighed(50, 2_000)
        },
        4,
        6_000,
    );
}

#[test]
fn an_entry_of_pointer_keys_and_values_takes_56_bytes() {
    // Python keys and values are non-null pointers, so `Option` costs nothing on top.
    assert_eq!(std::mem::size_of::<Option<Entry<Box<u8>, Box<u8>>>>(), 56);
}
