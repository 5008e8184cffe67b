//! The event bus core: NATS-style subject patterns, a topic router, and the bounded mailbox each
//! subscriber reads from. Nothing here knows Python; `bindings::bus` puts events in.
//!
//! Topics are tokens split on `.`. A pattern token `*` matches exactly one token; `>` stands last
//! and matches one or more trailing tokens. The router keeps subscriptions in a token trie (a
//! literal child map plus `*` and `>` slots per node) and remembers, per literal topic, the
//! subscribers it resolved to, so a publish to a known topic is one hash lookup whatever the
//! number of subscriptions. Any subscription change forgets the remembered results.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use hashbrown::HashMap;

use crate::errors::Error;

/// One token of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Literal(Box<str>),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more trailing tokens.
    Rest,
}

/// A parsed subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
}

fn check_token(token: &str, what: &str, whole: &str) -> Result<(), Error> {
    if token.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{what} {whole:?} has an empty token: tokens are separated by single dots, \
             with none at the start or end"
        )));
    }
    if token.chars().any(char::is_whitespace) {
        return Err(Error::InvalidArgument(format!(
            "{what} {whole:?} contains whitespace"
        )));
    }
    Ok(())
}

impl Pattern {
    pub fn parse(pattern: &str) -> Result<Pattern, Error> {
        if pattern.is_empty() {
            return Err(Error::InvalidArgument(
                "the pattern is empty: use '>' to match every topic".into(),
            ));
        }
        let parts: Vec<&str> = pattern.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            check_token(part, "pattern", pattern)?;
            tokens.push(match *part {
                "*" => Token::One,
                ">" if i + 1 == parts.len() => Token::Rest,
                ">" => {
                    return Err(Error::InvalidArgument(format!(
                        "pattern {pattern:?}: '>' may only stand as the last token"
                    )))
                }
                p if p.contains(['*', '>']) => {
                    return Err(Error::InvalidArgument(format!(
                        "pattern {pattern:?}: the wildcards '*' and '>' must be whole tokens, \
                         not part of {p:?}"
                    )))
                }
                p => Token::Literal(p.into()),
            });
        }
        Ok(Pattern { tokens })
    }

    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Whether `topic` (a valid literal topic) matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for (i, token) in self.tokens.iter().enumerate() {
            match (token, parts.next()) {
                (_, None) => return false,
                (Token::Rest, Some(_)) => {
                    debug_assert_eq!(i + 1, self.tokens.len());
                    return true;
                }
                (Token::One, Some(_)) => {}
                (Token::Literal(lit), Some(part)) if **lit == *part => {}
                (Token::Literal(_), Some(_)) => return false,
            }
        }
        parts.next().is_none()
    }
}

/// Checks that `topic` is a literal topic that events can be published on.
pub fn check_topic(topic: &str) -> Result<(), Error> {
    if topic.is_empty() {
        return Err(Error::InvalidArgument("the topic is empty".into()));
    }
    for part in topic.split('.') {
        check_token(part, "topic", topic)?;
        if part.contains(['*', '>']) {
            return Err(Error::InvalidArgument(format!(
                "topic {topic:?} contains a wildcard: events are published on literal topics; \
                 '*' and '>' belong in subscription patterns"
            )));
        }
    }
    Ok(())
}

struct Node<T> {
    literal: HashMap<Box<str>, Node<T>>,
    one: Option<Box<Node<T>>>,
    /// Subscribers whose pattern ends here.
    here: Vec<(u64, T)>,
    /// Subscribers whose pattern is this node's path followed by `>`.
    rest: Vec<(u64, T)>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            one: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.one.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

impl<T: Clone> Node<T> {
    fn collect(&self, parts: &[&str], out: &mut Vec<(u64, T)>) {
        let Some((first, rest)) = parts.split_first() else {
            out.extend(self.here.iter().cloned());
            return;
        };
        out.extend(self.rest.iter().cloned());
        if let Some(child) = self.literal.get(*first) {
            child.collect(rest, out);
        }
        if let Some(child) = &self.one {
            child.collect(rest, out);
        }
    }
}

/// How many literal topics the router remembers before it starts over: topics that carry ids
/// (`request.<id>.completed`) must not grow it without bound.
pub const ROUTE_CACHE_LIMIT: usize = 4096;

/// Subscriptions by pattern, and the subscribers each literal topic resolves to.
pub struct Router<T> {
    root: Node<T>,
    cache: HashMap<Box<str>, Arc<[T]>>,
    len: usize,
}

impl<T: Clone> Default for Router<T> {
    fn default() -> Self {
        Router {
            root: Node::default(),
            cache: HashMap::new(),
            len: 0,
        }
    }
}

impl<T: Clone> Router<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds subscriber `id` (ids order delivery: lower first) under `pattern`.
    pub fn insert(&mut self, pattern: &Pattern, id: u64, value: T) {
        let mut node = &mut self.root;
        for token in &pattern.tokens {
            node = match token {
                Token::Literal(lit) => node.literal.entry(lit.clone()).or_default(),
                Token::One => node.one.get_or_insert_with(Default::default),
                Token::Rest => {
                    node.rest.push((id, value));
                    self.len += 1;
                    self.cache.clear();
                    return;
                }
            };
        }
        node.here.push((id, value));
        self.len += 1;
        self.cache.clear();
    }

    /// Removes subscriber `id` from under `pattern`; returns it if it was there.
    pub fn remove(&mut self, pattern: &Pattern, id: u64) -> Option<T> {
        let removed = remove_from(&mut self.root, &pattern.tokens, id);
        if removed.is_some() {
            self.len -= 1;
            self.cache.clear();
        }
        removed
    }

    /// The subscribers of `topic`, in subscription order. `topic` is checked the first time it
    /// is seen; after that this is one hash lookup.
    pub fn route(&mut self, topic: &str) -> Result<Arc<[T]>, Error> {
        if let Some(found) = self.cache.get(topic) {
            return Ok(found.clone());
        }
        check_topic(topic)?;
        let found: Arc<[T]> = self.resolve(topic).into();
        if self.cache.len() >= ROUTE_CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(topic.into(), found.clone());
        Ok(found)
    }

    /// The subscribers of `topic` found by walking the trie (no cache).
    pub fn resolve(&self, topic: &str) -> Vec<T> {
        let parts: Vec<&str> = topic.split('.').collect();
        let mut found = Vec::new();
        self.root.collect(&parts, &mut found);
        found.sort_unstable_by_key(|(id, _)| *id);
        found.into_iter().map(|(_, value)| value).collect()
    }

    /// Every subscriber, in subscription order.
    pub fn resolve_all(&self) -> Vec<T> {
        fn walk<T: Clone>(node: &Node<T>, out: &mut Vec<(u64, T)>) {
            out.extend(node.here.iter().cloned());
            out.extend(node.rest.iter().cloned());
            node.literal.values().for_each(|child| walk(child, out));
            if let Some(child) = &node.one {
                walk(child, out);
            }
        }
        let mut found = Vec::with_capacity(self.len);
        walk(&self.root, &mut found);
        found.sort_unstable_by_key(|(id, _)| *id);
        found.into_iter().map(|(_, value)| value).collect()
    }

    /// Literal topics remembered.
    pub fn cached_topics(&self) -> usize {
        self.cache.len()
    }
}

fn remove_from<T>(node: &mut Node<T>, tokens: &[Token], id: u64) -> Option<T> {
    fn take<T>(list: &mut Vec<(u64, T)>, id: u64) -> Option<T> {
        let at = list.iter().position(|(i, _)| *i == id)?;
        Some(list.remove(at).1)
    }
    let Some((first, rest)) = tokens.split_first() else {
        return take(&mut node.here, id);
    };
    match first {
        Token::Rest => take(&mut node.rest, id),
        Token::Literal(lit) => {
            let child = node.literal.get_mut(lit)?;
            let removed = remove_from(child, rest, id);
            if child.is_empty() {
                node.literal.remove(lit);
            }
            removed
        }
        Token::One => {
            let child = node.one.as_mut()?;
            let removed = remove_from(child, rest, id);
            if child.is_empty() {
                node.one = None;
            }
            removed
        }
    }
}

/// What a subscriber's mailbox does with an event when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Make room by dropping the oldest pending event.
    DropOldest,
    /// Drop the new event.
    DropNewest,
    /// The publisher waits for room: nothing is lost.
    Block,
}

impl OnFull {
    pub fn parse(value: &str) -> Result<OnFull, Error> {
        match value {
            "drop_oldest" => Ok(OnFull::DropOldest),
            "drop_newest" => Ok(OnFull::DropNewest),
            "block" => Ok(OnFull::Block),
            other => Err(Error::InvalidArgument(format!(
                "on_full must be 'drop_oldest', 'drop_newest' or 'block', got {other:?}"
            ))),
        }
    }
}

/// The outcome of offering an item to a mailbox.
#[derive(Debug)]
pub enum Offer<T, W> {
    /// Queued. `wake` is true when the consumer was idle and must be woken (once); `waker` is
    /// the waker it left when it parked, if any.
    Queued { wake: bool, waker: Option<W> },
    /// Not queued, or queued in place of an older item: this one was dropped.
    Dropped(T),
    /// Full, and the policy is to wait: try again with `offer_wait`.
    Full(T),
    /// The mailbox is closed (its subscription ended).
    Closed(T),
}

struct State<T, W> {
    items: VecDeque<T>,
    /// The consumer was told there is work and has not yet found the mailbox empty.
    scheduled: bool,
    closed: bool,
    /// Publishers waiting for room.
    waiting: usize,
    /// Left by a consumer that parked on an empty mailbox; handed to the next publisher.
    waker: Option<W>,
    delivered: u64,
    dropped: u64,
}

/// A subscriber's bounded queue of pending items, with the hand-off between publishers and the
/// one consumer: a consumer is woken only when the mailbox goes from idle to busy, and only it
/// marks the mailbox idle, by finding it empty. So one consumer runs at a time, in order.
pub struct Mailbox<T, W> {
    state: Mutex<State<T, W>>,
    room: Condvar,
    /// `closed`, readable without the lock (a consumer checks it before each item).
    ended: AtomicBool,
    capacity: usize,
    on_full: OnFull,
}

impl<T, W> Mailbox<T, W> {
    pub fn new(capacity: usize, on_full: OnFull) -> Self {
        Mailbox {
            state: Mutex::new(State {
                items: VecDeque::new(),
                scheduled: false,
                closed: false,
                waiting: 0,
                waker: None,
                delivered: 0,
                dropped: 0,
            }),
            room: Condvar::new(),
            ended: AtomicBool::new(false),
            capacity: capacity.max(1),
            on_full,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T, W>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn on_full(&self) -> OnFull {
        self.on_full
    }

    fn queue(state: &mut State<T, W>, item: T) -> Offer<T, W> {
        state.items.push_back(item);
        if state.scheduled {
            Offer::Queued {
                wake: false,
                waker: None,
            }
        } else {
            state.scheduled = true;
            Offer::Queued {
                wake: true,
                waker: state.waker.take(),
            }
        }
    }

    /// Offers `item` without waiting.
    pub fn offer(&self, item: T) -> Offer<T, W> {
        let mut state = self.lock();
        if state.closed {
            return Offer::Closed(item);
        }
        if state.items.len() < self.capacity {
            return Self::queue(&mut state, item);
        }
        match self.on_full {
            OnFull::DropNewest => {
                state.dropped += 1;
                Offer::Dropped(item)
            }
            OnFull::DropOldest => {
                state.dropped += 1;
                let oldest = state.items.pop_front().expect("a full mailbox holds items");
                state.items.push_back(item);
                Offer::Dropped(oldest)
            }
            OnFull::Block => Offer::Full(item),
        }
    }

    /// Queues `item` even when full: for a publisher that would otherwise wait for itself
    /// (it is the consumer's own thread).
    pub fn offer_over(&self, item: T) -> Offer<T, W> {
        let mut state = self.lock();
        if state.closed {
            return Offer::Closed(item);
        }
        Self::queue(&mut state, item)
    }

    /// Waits for room, until `deadline` if given; never drops. Returns `Full` on timeout.
    pub fn offer_wait(&self, item: T, deadline: Option<Instant>) -> Offer<T, W> {
        let mut state = self.lock();
        state.waiting += 1;
        let outcome = loop {
            if state.closed {
                break Offer::Closed(item);
            }
            if state.items.len() < self.capacity {
                break Self::queue(&mut state, item);
            }
            state = match deadline {
                None => self
                    .room
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break Offer::Full(item);
                    }
                    self.room
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        };
        state.waiting -= 1;
        outcome
    }

    /// Takes up to `max` items, counting them delivered. Finding the mailbox empty marks it
    /// idle, and parks `waker` (if given) for the next publisher to hand back.
    pub fn take(&self, max: usize, waker: Option<W>) -> Vec<T> {
        let mut state = self.lock();
        let n = state.items.len().min(max);
        if state.items.is_empty() {
            state.scheduled = false;
            if !state.closed {
                state.waker = waker;
            }
            return Vec::new();
        }
        let batch: Vec<T> = state.items.drain(..n).collect();
        state.delivered += n as u64;
        if state.waiting > 0 {
            self.room.notify_all();
        }
        batch
    }

    /// After a batch: marks the mailbox idle if it is empty (returns false), or keeps it
    /// scheduled for the same consumer (returns true).
    pub fn more(&self) -> bool {
        let mut state = self.lock();
        if state.items.is_empty() {
            state.scheduled = false;
            false
        } else {
            true
        }
    }

    /// Ends the mailbox: pending items are dropped (returned, and counted) and waiting
    /// publishers are released. Returns the items and the parked waker.
    pub fn close(&self) -> (Vec<T>, Option<W>) {
        let mut state = self.lock();
        state.closed = true;
        self.ended.store(true, Ordering::Release);
        let left: Vec<T> = state.items.drain(..).collect();
        state.dropped += left.len() as u64;
        self.room.notify_all();
        (left, state.waker.take())
    }

    /// Refuses further items but keeps the pending ones for the consumer to take; returns the
    /// parked waker, so the consumer learns of the end once it has taken the rest.
    pub fn seal(&self) -> Option<W> {
        let mut state = self.lock();
        state.closed = true;
        self.ended.store(true, Ordering::Release);
        self.room.notify_all();
        state.waker.take()
    }

    /// Counts `n` taken items as dropped instead of delivered: the subscription ended before
    /// its consumer got to them.
    pub fn untake(&self, n: usize) {
        let mut state = self.lock();
        state.delivered -= n as u64;
        state.dropped += n as u64;
    }

    pub fn is_closed(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Nothing pending and no consumer busy with a batch.
    pub fn is_idle(&self) -> bool {
        let state = self.lock();
        state.items.is_empty() && !state.scheduled
    }

    /// (delivered, dropped, pending).
    pub fn counts(&self) -> (u64, u64, usize) {
        let state = self.lock();
        (state.delivered, state.dropped, state.items.len())
    }

    /// `f` of the oldest pending item.
    pub fn oldest<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.lock().items.front().map(f)
    }
}

#[cfg(test)]
#[path = "bus_tests.rs"]
mod tests;
