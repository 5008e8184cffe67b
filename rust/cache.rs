//! The L1 cache's data structure: a bounded map with per-entry TTL, time-to-idle, tags, weights
//! and S3-FIFO eviction with a frequency-sketch admission check.
//!
//! It knows nothing of Python. Keys and values are generic; the caller hashes keys itself and
//! says per call what "the same key" means (a closure that may answer "cannot tell here", see
//! `Match`), and everything that leaves the cache is handed back in a `Graveyard`, so that the
//! caller can drop it after releasing its lock (dropping a Python object can run arbitrary code).
//!
//! S3-FIFO (Yang et al., SOSP 2023): new entries go to a small FIFO queue; an entry hit again
//! while there moves to the main queue when it reaches the front, the others leave and their
//! hashes are remembered in a ghost queue; a key that comes back while its ghost is remembered
//! goes to main. Main is a CLOCK-like FIFO that gives each hit entry another lap. One-hit
//! wonders and scans pass through the small queue without displacing the hot set, and a hit only
//! bumps a counter in the entry: no list is reordered on the read path.
//!
//! The ghost alone lets any key asked for twice within its window into main, and on a long-tailed
//! workload those keys push out better ones. So a key back from the ghost must also have been
//! inserted more often, lately, than main's next victim, by a count-min sketch of insertions
//! (TinyLFU's admission test, after Einziger et al. and Caffeine); otherwise it starts over in
//! the small queue. The sketch counts misses only (each one inserts), so reads never touch it,
//! and its counts are halved now and then so that they follow the workload. When the popular keys
//! change at once, halving is too slow: yesterday's favourites would keep out today's. A sharp
//! fall of the hit ratio is taken as that sign, and the sketch forgets everything.
//!
//! Memory: entries live in one slab (`slots`) found through a table of 4-byte slot indices; the
//! two queues are linked through 4-byte slot indices inside the entries, and tags live in side
//! tables, so an untagged entry costs 56 bytes in the slab plus 5 to 10 bytes of table. Once the
//! cache is full, the sketch adds 4 to 8 bytes per entry (and the ghost up to 9 hashes per 10).

use std::collections::{HashMap, HashSet, VecDeque};

use hashbrown::HashTable;

pub use crate::clock::{Tick, NEVER};

/// What leaves the cache: (key, value) pairs for the caller to drop outside its lock.
pub type Graveyard<K, V> = Vec<(K, V)>;

/// The answer of a key comparison supplied by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    Yes,
    No,
    /// The comparison needs work the caller cannot do here (for Python keys: running a user's
    /// `__eq__`, which must not happen under the cache's lock).
    Unknown,
}

/// An operation met a key it could not compare; nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Undecided;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Most entries held at once; at least 1.
    pub max_size: usize,
    /// Most total weight held at once, when entries are weighed.
    pub max_weight: Option<u64>,
    /// Default time to live of an entry (`NEVER` for none).
    pub ttl: Tick,
    /// Time to idle: an entry not read for this long expires (`NEVER` for none).
    pub tti: Tick,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub updates: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// Entries removed by the user: delete, pop, clear, invalidate_tag.
    pub invalidations: u64,
}

/// What `insert` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    New,
    Updated,
    /// The entry alone weighs more than `max_weight`: not stored (counted as an eviction).
    TooHeavy,
}

/// Options of one `insert`.
#[derive(Debug, Default)]
pub struct Insert {
    /// Time to live; `None` takes the cache's.
    pub ttl: Option<Tick>,
    pub weight: u64,
    pub tags: Option<Box<[Box<str>]>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Evicted,
    Expired,
    Invalidated,
}

/// A hit counter saturates here: a hot entry survives this many laps of the main queue unread.
/// 2 lets stale entries go sooner when the hot set moves; 4 and up keep more of a Zipf head. 3 is
/// the best compromise on the traces `helixrt bench` replays.
const MAX_FREQ: u8 = 3;
/// Hits needed while in the small queue to move to main. The paper promotes on two; one gave
/// higher hit ratios on every trace `helixrt bench` replays (Zipf 0.8/1.0, scans, shifts).
const PROMOTE_AT: u8 = 1;

struct Entry<K, V> {
    key: K,
    value: V,
    hash: u64,
    /// Absolute deadline from the TTL.
    expires: Tick,
    /// Absolute deadline from the TTI, moved on each read.
    idle_expires: Tick,
    weight: u32,
    /// Neighbours in its queue: towards the front (older) and the back (newer).
    prev: u32,
    next: u32,
    freq: u8,
    in_main: bool,
    /// Whether `Cache::entry_tags` holds this entry's tags.
    tagged: bool,
}

impl<K, V> Entry<K, V> {
    #[inline]
    fn deadline(&self) -> Tick {
        self.expires.min(self.idle_expires)
    }
}

/// No slot: the end of a queue.
const NIL: u32 = u32::MAX;

/// A FIFO queue of slots, linked through `Entry::prev` and `Entry::next`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Queue {
    /// The oldest entry, the next to leave.
    front: u32,
    back: u32,
}

impl Queue {
    const EMPTY: Queue = Queue {
        front: NIL,
        back: NIL,
    };

    fn is_empty(&self) -> bool {
        self.front == NIL
    }
}

/// A hasher for keys that are already well-mixed 64-bit hashes: passes them through.
#[derive(Default)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type HashCounts = HashMap<u64, u32, std::hash::BuildHasherDefault<PassThrough>>;

/// Hashes of entries recently evicted from the small queue, oldest first.
struct Ghost {
    order: VecDeque<u64>,
    counts: HashCounts,
    capacity: usize,
}

impl Ghost {
    fn new(capacity: usize) -> Self {
        Ghost {
            order: VecDeque::new(),
            counts: HashCounts::default(),
            capacity,
        }
    }

    fn contains(&self, hash: u64) -> bool {
        self.counts.contains_key(&hash)
    }

    fn remember(&mut self, hash: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                if let Some(count) = self.counts.get_mut(&old) {
                    *count -= 1;
                    if *count == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.order.push_back(hash);
        *self.counts.entry(hash).or_insert(0) += 1;
    }

    fn clear(&mut self) {
        self.order.clear();
        self.counts.clear();
    }
}

/// Insertions counted between two halvings of the sketch, per entry it is sized for. The sketch
/// counts misses only, so this is a long memory (20 misses per entry is about a million requests
/// for a 10%-of-keys cache at a 80% hit ratio): halving more often lets one-off keys tie with
/// hot ones and cost hit ratio on every Zipf trace; a shift of the hot set is caught by the
/// hit-ratio watch instead.
const SKETCH_SAMPLE: u64 = 20;

/// A count-min sketch of 4-bit counters (TinyLFU's): four counters per key, all in one 64-byte
/// block so that a count costs one cache line, and halved every `sample` additions. Half a u64
/// (8 counters) per entry of the cache: 16 gained at most 0.3 points of hit ratio on the traces
/// `helixrt bench` replays, 4 lost up to 1 point.
struct Sketch {
    /// The entries it was sized for: 0 until the cache first fills (a cache that never fills needs
    /// no admission test, and `max_size` may be far above what fits when entries are weighed).
    entries: usize,
    /// 64-byte blocks of 16 counters per u64; a key's counters are all in one block.
    table: Box<[[u64; 8]]>,
    /// Blocks in the table, minus one (a power of two minus one).
    block_mask: usize,
    additions: u64,
    sample: u64,
}

impl Sketch {
    fn new(entries: usize) -> Self {
        let blocks = (entries.next_power_of_two() / 16).max(1);
        Sketch {
            entries,
            table: vec![[0; 8]; blocks].into_boxed_slice(),
            block_mask: blocks - 1,
            additions: 0,
            sample: (entries as u64).saturating_mul(SKETCH_SAMPLE).max(16),
        }
    }

    /// The key's block, and where its four counters are in it: (word, bit shift), one word of
    /// a pair per row.
    #[inline]
    fn counters(&self, hash: u64) -> (usize, [(usize, u32); 4]) {
        let mixed = hash.wrapping_mul(0x94D0_49BB_1331_11EB);
        let block = (mixed >> 40) as usize & self.block_mask;
        let bits = (mixed ^ (mixed >> 29)) as u32;
        let counters = std::array::from_fn(|row| {
            let byte = bits >> (row * 8);
            ((row * 2 + (byte & 1) as usize) & 7, ((byte >> 1) & 15) * 4)
        });
        (block, counters)
    }

    /// The key's estimated count: at least its true count since the counts were last halved.
    #[inline]
    fn frequency(&self, hash: u64) -> u8 {
        let (block, counters) = self.counters(hash);
        let block = &self.table[block];
        counters
            .iter()
            .map(|&(word, shift)| ((block[word] >> shift) & 15) as u8)
            .min()
            .unwrap_or(0)
    }

    #[inline]
    fn increment(&mut self, hash: u64) {
        let (block, counters) = self.counters(hash);
        let block = &mut self.table[block];
        let mut added = false;
        for (word, shift) in counters {
            let below_max = (block[word] >> shift) & 15 != 15;
            block[word] += u64::from(below_max) << shift;
            added |= below_max;
        }
        if added {
            self.additions += 1;
            if self.additions >= self.sample {
                self.halve();
            }
        }
    }

    fn halve(&mut self) {
        for word in self.table.iter_mut().flatten() {
            *word = (*word >> 1) & 0x7777_7777_7777_7777;
        }
        self.additions /= 2;
    }

    fn clear(&mut self) {
        self.table.fill([0; 8]);
        self.additions = 0;
    }
}

/// Requests (hits and misses) per hit-ratio reading, per entry the cache holds: long enough for a
/// steady workload to read the same ratio each time, short enough to see a shift soon.
const WATCH_PERIOD: u64 = 2;
/// A fall of the hit ratio this far below its running average means the popular keys changed.
/// The steady Zipf traces `helixrt bench` replays never trip it; their one-pass scans do, at a
/// cost of 0.2 points of hit ratio at most.
const WATCH_DROP: f64 = 0.05;

/// Reads the hit ratio once a period and says when it falls sharply.
struct Watch {
    /// Requests and hits at the start of the current period.
    requests: u64,
    hits: u64,
    /// Running average of the periods' hit ratios; `None` before the first period ends.
    average: Option<f64>,
}

impl Watch {
    const NEW: Watch = Watch {
        requests: 0,
        hits: 0,
        average: None,
    };

    /// Whether the period that just ended (if one did) fell sharply below the average.
    fn fell(&mut self, stats: &Stats, period: u64) -> bool {
        let requests = stats.hits + stats.misses;
        let elapsed = requests.saturating_sub(self.requests);
        if elapsed < period.max(1) {
            return false;
        }
        let ratio = stats.hits.saturating_sub(self.hits) as f64 / elapsed as f64;
        self.requests = requests;
        self.hits = stats.hits;
        match self.average {
            Some(average) if ratio < average - WATCH_DROP => {
                self.average = Some(ratio);
                true
            }
            Some(average) => {
                self.average = Some(0.75 * average + 0.25 * ratio);
                false
            }
            None => {
                self.average = Some(ratio);
                false
            }
        }
    }
}

pub struct Cache<K, V> {
    config: Config,
    /// Size of the small queue the policy aims for, in units (entries, or weight when weighed).
    small_target: u64,
    table: HashTable<u32>,
    slots: Vec<Option<Entry<K, V>>>,
    free: Vec<u32>,
    small: Queue,
    main: Queue,
    ghost: Ghost,
    /// How often each key was inserted lately: the admission test of keys back from the ghost.
    sketch: Sketch,
    watch: Watch,
    /// Tag -> slots of the entries that carry it.
    tags: HashMap<Box<str>, HashSet<u32>>,
    /// Slot -> its entry's tags (only for tagged entries).
    entry_tags: HashMap<u32, Box<[Box<str>]>>,
    len: usize,
    weight: u64,
    small_units: u64,
    stats: Stats,
    /// No live entry expires before this: `purge_expired` has nothing to do until then.
    earliest_deadline: Tick,
}

impl<K, V> Cache<K, V> {
    pub fn new(config: Config) -> Self {
        assert!(config.max_size >= 1, "max_size must be at least 1");
        let units = config.max_weight.unwrap_or(config.max_size as u64);
        Cache {
            config,
            // The paper's small queue is 10%; 3% gave higher hit ratios on every Zipf trace
            // `helixrt bench` replays, at a small cost when the hot set shifts.
            small_target: (units / 33).max(1),
            table: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            small: Queue::EMPTY,
            main: Queue::EMPTY,
            ghost: Ghost::new(config.max_size - (config.max_size / 10)),
            sketch: Sketch::new(0),
            watch: Watch::NEW,
            tags: HashMap::new(),
            entry_tags: HashMap::new(),
            len: 0,
            weight: 0,
            small_units: 0,
            stats: Stats::default(),
            earliest_deadline: NEVER,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Entries held, including expired ones not yet purged (see `purge_expired`).
    pub fn len_unpurged(&self) -> usize {
        self.len
    }

    pub fn weight(&self) -> u64 {
        self.weight
    }

    #[inline]
    fn entry(&self, index: u32) -> &Entry<K, V> {
        self.slots[index as usize]
            .as_ref()
            .expect("the table and the queues only hold occupied slots")
    }

    #[inline]
    fn entry_mut(&mut self, index: u32) -> &mut Entry<K, V> {
        self.slots[index as usize]
            .as_mut()
            .expect("the table and the queues only hold occupied slots")
    }

    #[inline]
    fn units(&self, entry: &Entry<K, V>) -> u64 {
        if self.config.max_weight.is_some() {
            u64::from(entry.weight)
        } else {
            1
        }
    }

    /// The slot index of the entry for this key, expired or not.
    #[inline]
    fn find(&self, hash: u64, mut eq: impl FnMut(&K) -> Match) -> Result<Option<u32>, Undecided> {
        let mut undecided = false;
        let slots = &self.slots;
        let found = self.table.find(hash, |&index| {
            let Some(entry) = slots[index as usize].as_ref() else {
                return false;
            };
            if entry.hash != hash {
                return false;
            }
            match eq(&entry.key) {
                Match::Yes => true,
                Match::No => false,
                Match::Unknown => {
                    undecided = true;
                    false
                }
            }
        });
        match found {
            Some(&index) => Ok(Some(index)),
            None if undecided => Err(Undecided),
            None => Ok(None),
        }
    }

    /// The live entry's slot for this key; an expired one is removed on the way.
    #[inline]
    fn find_live(
        &mut self,
        hash: u64,
        eq: impl FnMut(&K) -> Match,
        now: Tick,
        graveyard: &mut Graveyard<K, V>,
    ) -> Result<Option<u32>, Undecided> {
        let Some(index) = self.find(hash, eq)? else {
            return Ok(None);
        };
        if self.entry(index).deadline() <= now {
            self.remove_at(index, Cause::Expired, graveyard);
            return Ok(None);
        }
        Ok(Some(index))
    }

    /// Keys stored under `hash`, for a caller that must compare them outside its lock.
    pub fn keys_with_hash(&self, hash: u64) -> impl Iterator<Item = &K> + '_ {
        self.table.iter_hash(hash).filter_map(move |&index| {
            let entry = self.slots[index as usize].as_ref()?;
            (entry.hash == hash).then_some(&entry.key)
        })
    }

    /// Looks a key up as a read: counts a hit or a miss, marks the entry used.
    #[inline]
    pub fn get(
        &mut self,
        hash: u64,
        eq: impl FnMut(&K) -> Match,
        now: Tick,
        graveyard: &mut Graveyard<K, V>,
    ) -> Result<Option<&V>, Undecided> {
        match self.find_live(hash, eq, now, graveyard)? {
            None => {
                self.stats.misses += 1;
                Ok(None)
            }
            Some(index) => {
                self.stats.hits += 1;
                let tti = self.config.tti;
                let entry = self.entry_mut(index);
                entry.freq = (entry.freq + 1).min(MAX_FREQ);
                if tti != NEVER {
                    entry.idle_expires = now.saturating_add(tti);
                }
                Ok(Some(&entry.value))
            }
        }
    }

    /// Whether a live entry exists; not a read (no hit, no miss, no TTI refresh).
    pub fn contains(
        &mut self,
        hash: u64,
        eq: impl FnMut(&K) -> Match,
        now: Tick,
        graveyard: &mut Graveyard<K, V>,
    ) -> Result<bool, Undecided> {
        Ok(self.find_live(hash, eq, now, graveyard)?.is_some())
    }

    /// Ticks until the entry expires (`NEVER` if it does not), or `None` if it is absent.
    pub fn remaining(
        &mut self,
        hash: u64,
        eq: impl FnMut(&K) -> Match,
        now: Tick,
        graveyard: &mut Graveyard<K, V>,
    ) -> Result<Option<Tick>, Undecided> {
        Ok(self.find_live(hash, eq, now, graveyard)?.map(|index| {
            let deadline = self.entry(index).deadline();
            if deadline == NEVER {
                NEVER
            } else {
                deadline - now
            }
        }))
    }

    /// Inserts or updates. An update keeps the stored key and the entry's place in the queues.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        eq: impl FnMut(&K) -> Match,
        options: Insert,
        now: Tick,
        graveyard: &mut Graveyard<K, V>,
    ) -> Result<Inserted, Undecided> {
        let existing = self.find_live(hash, eq, now, graveyard)?;
        let ttl = options.ttl.unwrap_or(self.config.ttl);
        let expires = now.saturating_add(ttl);
        let idle_expires = now.saturating_add(self.config.tti);
        // An entry's own weight is stored in 32 bits; heavier ones could never fit a real bound.
        let weight = u32::try_from(options.weight).ok();
        let bound = self.config.max_weight.unwrap_or(u64::MAX);
        let Some(weight) = weight.filter(|&w| u64::from(w) <= bound) else {
            if let Some(index) = existing {
                self.remove_at(index, Cause::Evicted, graveyard);
            } else {
                self.stats.evictions += 1;
            }
            graveyard.push((key, value));
            return Ok(Inserted::TooHeavy);
        };
        let outcome = match existing {
            Some(index) => {
                self.untag(index);
                let weighed = self.config.max_weight.is_some();
                let entry = self.entry_mut(index);
                let old_value = std::mem::replace(&mut entry.value, value);
                let old_weight = u64::from(std::mem::replace(&mut entry.weight, weight));
                let in_small = !entry.in_main;
                entry.expires = expires;
                entry.idle_expires = idle_expires;
                self.weight = self.weight - old_weight + u64::from(weight);
                if in_small && weighed {
                    self.small_units = self.small_units - old_weight + u64::from(weight);
                }
                self.tag(index, options.tags);
                graveyard.push((key, old_value));
                self.stats.updates += 1;
                Inserted::Updated
            }
            None => {
                let full = self.len >= self.config.max_size
                    || self
                        .config
                        .max_weight
                        .is_some_and(|max| self.weight + u64::from(weight) > max);
                if full && self.len / 2 > self.sketch.entries {
                    // The first fill, or entries got much lighter: size the sketch to what fits.
                    self.sketch = Sketch::new(self.len);
                }
                self.sketch.increment(hash);
                let period = self.len.max(self.sketch.entries) as u64 * WATCH_PERIOD;
                if self.watch.fell(&self.stats, period) {
                    self.sketch.clear();
                }
                let in_main = self.ghost.contains(hash) && self.admits(hash, full);
                let entry = Entry {
                    key,
                    value,
                    hash,
                    expires,
                    idle_expires,
                    weight,
                    prev: NIL,
                    next: NIL,
                    freq: 0,
                    in_main,
                    tagged: false,
                };
                let units = self.units(&entry);
                let index = self.occupy(entry);
                let slots = &self.slots;
                self.table.insert_unique(hash, index, |&i| {
                    slots[i as usize].as_ref().map_or(0, |e| e.hash)
                });
                self.push_back(index);
                if !in_main {
                    self.small_units += units;
                }
                self.len += 1;
                self.weight += u64::from(weight);
                self.tag(index, options.tags);
                self.stats.inserts += 1;
                Inserted::New
            }
        };
        self.earliest_deadline = self.earliest_deadline.min(expires.min(idle_expires));
        self.enforce_bounds(graveyard);
        Ok(outcome)
    }

    /// Removes the entry for a key (the user's delete) and gives it back.
    pub fn remove(
        &mut self,
        hash: u64,
        eq: impl FnMut(&K) -> Match,
        now: Tick,
        graveyard: &mut Graveyard<K, V>,
    ) -> Result<Option<(K, V)>, Undecided> {
        let Some(index) = self.find_live(hash, eq, now, graveyard)? else {
            return Ok(None);
        };
        Ok(Some(self.take_at(index, Cause::Invalidated)))
    }

    /// Removes every entry tagged `tag`; returns how many.
    pub fn invalidate_tag(
        &mut self,
        tag: &str,
        now: Tick,
        graveyard: &mut Graveyard<K, V>,
    ) -> usize {
        let Some(members) = self.tags.remove(tag) else {
            return 0;
        };
        let mut removed = 0;
        for index in members {
            let expired = self.entry(index).deadline() <= now;
            let cause = if expired {
                Cause::Expired
            } else {
                removed += 1;
                Cause::Invalidated
            };
            self.remove_at(index, cause, graveyard);
        }
        removed
    }

    /// Removes every entry (the expired ones count as expirations, as everywhere else).
    pub fn clear(&mut self, now: Tick, graveyard: &mut Graveyard<K, V>) {
        for entry in self.slots.drain(..).flatten() {
            if entry.deadline() <= now {
                self.stats.expirations += 1;
            } else {
                self.stats.invalidations += 1;
            }
            graveyard.push((entry.key, entry.value));
        }
        self.free.clear();
        self.table.clear();
        self.small = Queue::EMPTY;
        self.main = Queue::EMPTY;
        self.ghost.clear();
        self.sketch = Sketch::new(0);
        self.watch = Watch::NEW;
        self.tags.clear();
        self.entry_tags.clear();
        self.len = 0;
        self.weight = 0;
        self.small_units = 0;
        self.earliest_deadline = NEVER;
    }

    /// Removes every expired entry; returns how many. Free when nothing can have expired yet.
    pub fn purge_expired(&mut self, now: Tick, graveyard: &mut Graveyard<K, V>) -> usize {
        if now < self.earliest_deadline {
            return 0;
        }
        let mut removed = 0;
        let mut earliest = NEVER;
        for index in 0..self.slots.len() as u32 {
            let Some(entry) = self.slots[index as usize].as_ref() else {
                continue;
            };
            let deadline = entry.deadline();
            if deadline <= now {
                self.remove_at(index, Cause::Expired, graveyard);
                removed += 1;
            } else {
                earliest = earliest.min(deadline);
            }
        }
        self.earliest_deadline = earliest;
        self.shrink_if_sparse();
        removed
    }

    /// The live entries, in no particular order (purge first to leave out expired ones).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.slots
            .iter()
            .filter_map(|slot| slot.as_ref().map(|e| (&e.key, &e.value)))
    }

    fn occupy(&mut self, entry: Entry<K, V>) -> u32 {
        if let Some(index) = self.free.pop() {
            self.slots[index as usize] = Some(entry);
            return index;
        }
        let index = u32::try_from(self.slots.len())
            .ok()
            .filter(|&index| index != NIL)
            .expect("fewer than 2^32 - 1 entries");
        self.slots.push(Some(entry));
        index
    }

    fn queue_mut(&mut self, in_main: bool) -> &mut Queue {
        if in_main {
            &mut self.main
        } else {
            &mut self.small
        }
    }

    /// Appends the entry at `index` to the back of its queue (`Entry::in_main` says which).
    fn push_back(&mut self, index: u32) {
        let in_main = self.entry(index).in_main;
        let back = self.queue_mut(in_main).back;
        let entry = self.entry_mut(index);
        entry.prev = back;
        entry.next = NIL;
        if back == NIL {
            self.queue_mut(in_main).front = index;
        } else {
            self.entry_mut(back).next = index;
        }
        self.queue_mut(in_main).back = index;
    }

    /// Takes the entry at `index` out of its queue.
    fn unlink(&mut self, index: u32) {
        let entry = self.entry(index);
        let (prev, next, in_main) = (entry.prev, entry.next, entry.in_main);
        if prev == NIL {
            self.queue_mut(in_main).front = next;
        } else {
            self.entry_mut(prev).next = next;
        }
        if next == NIL {
            self.queue_mut(in_main).back = prev;
        } else {
            self.entry_mut(next).prev = prev;
        }
    }

    fn tag(&mut self, index: u32, tags: Option<Box<[Box<str>]>>) {
        let Some(tags) = tags else {
            return;
        };
        for tag in tags.iter() {
            if let Some(members) = self.tags.get_mut(tag) {
                members.insert(index);
            } else {
                self.tags.insert(tag.clone(), HashSet::from([index]));
            }
        }
        self.entry_tags.insert(index, tags);
        self.entry_mut(index).tagged = true;
    }

    fn untag(&mut self, index: u32) {
        if !std::mem::replace(&mut self.entry_mut(index).tagged, false) {
            return;
        }
        let Some(tags) = self.entry_tags.remove(&index) else {
            return;
        };
        for tag in tags.iter() {
            if let Some(members) = self.tags.get_mut(tag) {
                members.remove(&index);
                if members.is_empty() {
                    self.tags.remove(tag);
                }
            }
        }
    }

    fn remove_at(&mut self, index: u32, cause: Cause, graveyard: &mut Graveyard<K, V>) {
        let removed = self.take_at(index, cause);
        graveyard.push(removed);
    }

    fn take_at(&mut self, index: u32, cause: Cause) -> (K, V) {
        self.untag(index);
        self.unlink(index);
        let entry = self.slots[index as usize]
            .take()
            .expect("removing an occupied slot");
        self.free.push(index);
        if let Ok(found) = self.table.find_entry(entry.hash, |&i| i == index) {
            found.remove();
        }
        self.len -= 1;
        self.weight -= u64::from(entry.weight);
        if !entry.in_main {
            self.small_units -= self.units(&entry);
        }
        match cause {
            Cause::Evicted => self.stats.evictions += 1,
            Cause::Expired => self.stats.expirations += 1,
            Cause::Invalidated => self.stats.invalidations += 1,
        }
        (entry.key, entry.value)
    }

    fn over_bounds(&self) -> bool {
        self.len > self.config.max_size
            || self.config.max_weight.is_some_and(|max| self.weight > max)
    }

    fn enforce_bounds(&mut self, graveyard: &mut Graveyard<K, V>) {
        while self.over_bounds() && self.evict_one(graveyard) {}
    }

    /// Evicts one entry by S3-FIFO; false if there was nothing to evict.
    fn evict_one(&mut self, graveyard: &mut Graveyard<K, V>) -> bool {
        loop {
            if self.small.is_empty() && self.main.is_empty() {
                return false;
            }
            let from_small = !self.small.is_empty()
                && (self.small_units > self.small_target || self.main.is_empty());
            if from_small {
                let index = self.small.front;
                if self.entry(index).freq >= PROMOTE_AT {
                    self.unlink(index);
                    let units = self.units(self.entry(index));
                    let entry = self.entry_mut(index);
                    entry.freq = 0;
                    entry.in_main = true;
                    self.small_units -= units;
                    self.push_back(index);
                } else {
                    self.ghost.remember(self.entry(index).hash);
                    self.remove_at(index, Cause::Evicted, graveyard);
                    return true;
                }
            } else {
                let index = self.main_victim();
                self.remove_at(index, Cause::Evicted, graveyard);
                return true;
            }
        }
    }

    /// Whether a key back from the ghost goes to main: yes while main has room, then only if it
    /// was inserted more often lately than the entry main would evict next.
    fn admits(&mut self, hash: u64, full: bool) -> bool {
        if !full || self.main.is_empty() {
            return true;
        }
        let victim = self.main_victim();
        self.sketch.frequency(hash) > self.sketch.frequency(self.entry(victim).hash)
    }

    /// Turns main's clock until its front was not read since its last lap; returns that front,
    /// the entry an eviction from main would take. Main must not be empty.
    fn main_victim(&mut self) -> u32 {
        loop {
            let index = self.main.front;
            let entry = self.entry_mut(index);
            if entry.freq == 0 {
                return index;
            }
            entry.freq -= 1;
            self.unlink(index);
            self.push_back(index);
        }
    }

    /// Gives memory back after a cache shrank to a small part of its peak (a mass expiry).
    fn shrink_if_sparse(&mut self) {
        if self.slots.len() < 1024 || self.len * 4 > self.slots.len() {
            return;
        }
        // Slots are addressed by index, so only a tail of free slots can be released.
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        let kept = self.slots.len() as u32;
        self.free.retain(|&index| index < kept);
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
        self.entry_tags.shrink_to_fit();
        let slots = &self.slots;
        self.table
            .shrink_to_fit(|&i| slots[i as usize].as_ref().map_or(0, |e| e.hash));
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
