//! Tests of the event bus core: pattern and topic syntax, NATS matching (against an independent
//! reference matcher, on random patterns), the router's trie and route cache, and the mailbox's
//! policies, wake-up protocol and blocking publishers. As a child module of `bus`, they may look
//! at the private state (the trie root), but check behaviour through the public methods.
//!
//! The threaded tests never wait without a bound: blocking calls use deadlines or are released
//! by the test itself, and polling loops run under a global deadline, so a lost wake-up shows up
//! as a failed assertion, not as a hung test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

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

    /// Uniform in [0, n).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn pattern(text: &str) -> Pattern {
    Pattern::parse(text).unwrap_or_else(|err| panic!("{text:?} should parse: {err}"))
}

fn parse_error(text: &str) -> String {
    match Pattern::parse(text) {
        Ok(parsed) => panic!("{text:?} should be refused, parsed as {parsed:?}"),
        Err(Error::InvalidArgument(msg)) => msg,
        Err(other) => panic!("{text:?}: expected InvalidArgument, got {other:?}"),
    }
}

fn topic_error(text: &str) -> String {
    match check_topic(text) {
        Ok(()) => panic!("topic {text:?} should be refused"),
        Err(Error::InvalidArgument(msg)) => msg,
        Err(other) => panic!("topic {text:?}: expected InvalidArgument, got {other:?}"),
    }
}

/// Checks an error message quotes the pattern or topic it refuses.
fn assert_names(msg: &str, text: &str) {
    let quoted = format!("{text:?}");
    assert!(
        msg.contains(&quoted),
        "the message should name {quoted}: {msg}"
    );
}

fn route(router: &mut Router<u64>, topic: &str) -> Vec<u64> {
    router
        .route(topic)
        .unwrap_or_else(|err| panic!("route({topic:?}): {err}"))
        .to_vec()
}

/// The reference NATS matcher, over token slices, independent of `Pattern::matches` and of the
/// trie: `*` takes exactly one token, `>` (last) one or more.
fn reference_matches(pattern: &[&str], topic: &[&str]) -> bool {
    match (pattern.split_first(), topic.split_first()) {
        (None, None) => true,
        (Some((&">", rest)), Some(_)) => {
            assert!(rest.is_empty(), "'>' must be last in {pattern:?}");
            true
        }
        (Some((&"*", p_rest)), Some((_, t_rest))) => reference_matches(p_rest, t_rest),
        (Some((lit, p_rest)), Some((tok, t_rest))) => {
            lit == tok && reference_matches(p_rest, t_rest)
        }
        _ => false,
    }
}

fn reference(pattern: &str, topic: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    reference_matches(&p, &t)
}

// --- Syntax -------------------------------------------------------------------------------

#[test]
fn parse_accepts_valid_patterns() {
    for text in [
        "a",
        "a.b.c",
        "*",
        ">",
        "a.*",
        "a.>",
        "*.b.*",
        "*.*.>",
        "cache.l2.miss",
        "svc-1.x_y.Z9",
        "ünï.cödé",
    ] {
        let parsed = pattern(text);
        assert_eq!(parsed.tokens().len(), text.split('.').count(), "{text:?}");
    }
    assert_eq!(
        pattern("a.*.>").tokens(),
        &[Token::Literal("a".into()), Token::One, Token::Rest]
    );
    assert_eq!(pattern(">").tokens(), &[Token::Rest]);
}

#[test]
fn parse_refuses_empty_patterns_and_tokens() {
    assert!(parse_error("").contains("empty"));
    for text in ["a..b", ".a", "a.", ".", "..", "a.b.", ".>", "*..>"] {
        let msg = parse_error(text);
        assert!(msg.contains("empty token"), "{text:?}: {msg}");
        assert_names(&msg, text);
    }
}

#[test]
fn parse_refuses_whitespace() {
    for text in ["a b", " a", "a ", "a.b c", "a.\tb", "a\n", "\u{00a0}x", " "] {
        let msg = parse_error(text);
        assert!(msg.contains("whitespace"), "{text:?}: {msg}");
        assert_names(&msg, text);
    }
}

#[test]
fn parse_refuses_misplaced_and_partial_wildcards() {
    for text in [">.a", "a.>.b", ">.>", "a.>.*"] {
        let msg = parse_error(text);
        assert!(msg.contains("last"), "{text:?}: {msg}");
        assert_names(&msg, text);
    }
    for text in [
        "a*", "*a", "a>b", "a>", ">a", "**", ">>", "a.b*.c", "a.*>", "x.y>",
    ] {
        let msg = parse_error(text);
        assert!(msg.contains("whole tokens"), "{text:?}: {msg}");
        assert_names(&msg, text);
    }
}

#[test]
fn check_topic_accepts_literals_only() {
    for text in [
        "a",
        "a.b.c",
        "cache.l2.miss",
        "request.12345.completed",
        "ünï",
    ] {
        check_topic(text).unwrap_or_else(|err| panic!("{text:?}: {err}"));
    }
    assert!(topic_error("").contains("empty"));
    for text in ["*", ">", "a.*", "a.>", "a*", "a.b>c", "*.b"] {
        let msg = topic_error(text);
        assert!(msg.contains("wildcard"), "{text:?}: {msg}");
        assert_names(&msg, text);
    }
    for text in ["a..b", ".a", "a.", "."] {
        let msg = topic_error(text);
        assert!(msg.contains("empty token"), "{text:?}: {msg}");
        assert_names(&msg, text);
    }
    for text in ["a b", "a.b ", "\ta"] {
        assert!(topic_error(text).contains("whitespace"), "{text:?}");
    }
}

#[test]
fn on_full_parses_the_three_policies() {
    assert_eq!(OnFull::parse("drop_oldest").unwrap(), OnFull::DropOldest);
    assert_eq!(OnFull::parse("drop_newest").unwrap(), OnFull::DropNewest);
    assert_eq!(OnFull::parse("block").unwrap(), OnFull::Block);
    for bad in ["", "Block", "drop", "drop-oldest"] {
        match OnFull::parse(bad) {
            Err(Error::InvalidArgument(msg)) => assert!(msg.contains(&format!("{bad:?}")), "{msg}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

// --- Matching -----------------------------------------------------------------------------

/// Checks `Pattern::matches`, the reference, and a one-pattern router agree on `expected`.
fn check_match(pattern_text: &str, topic: &str, expected: bool) {
    let parsed = pattern(pattern_text);
    assert_eq!(
        parsed.matches(topic),
        expected,
        "Pattern::matches({pattern_text:?}, {topic:?})"
    );
    assert_eq!(
        reference(pattern_text, topic),
        expected,
        "reference({pattern_text:?}, {topic:?})"
    );
    let mut router = Router::new();
    router.insert(&parsed, 7, 7u64);
    let want: Vec<u64> = if expected { vec![7] } else { vec![] };
    assert_eq!(
        route(&mut router, topic),
        want,
        "route of {topic:?} under {pattern_text:?}"
    );
    assert_eq!(
        router.resolve(topic),
        want,
        "resolve of {topic:?} under {pattern_text:?}"
    );
}

#[test]
fn nats_semantics() {
    let cases: &[(&str, &str, bool)] = &[
        ("cache.>", "cache.hit", true),
        ("cache.>", "cache.l2.miss", true),
        ("cache.>", "cache", false),
        ("cache.>", "cached.hit", false),
        ("cache.>", "other.cache.hit", false),
        ("cache.*", "cache.hit", true),
        ("cache.*", "cache", false),
        ("cache.*", "cache.l2.miss", false),
        ("*", "a", true),
        ("*", "a.b", false),
        ("*.*", "a.b", true),
        ("*.*", "a", false),
        ("*.*", "a.b.c", false),
        (">", "a", true),
        (">", "a.b", true),
        (">", "a.b.c.d.e", true),
        ("a.*.c", "a.b.c", true),
        ("a.*.c", "a.x.c", true),
        ("a.*.c", "a.c", false),
        ("a.*.c", "a.b.b.c", false),
        ("a.*.c", "a.b.d", false),
        ("a.*.>", "a.b.c", true),
        ("a.*.>", "a.b.c.d", true),
        ("a.*.>", "a.b", false),
        ("*.>", "a", false),
        ("*.>", "a.b", true),
        ("a.b", "a.b", true),
        ("a.b", "a.b.c", false),
        ("a.b", "a", false),
        ("a.b", "A.b", false),
        ("a", "a", true),
        ("a", "b", false),
    ];
    for &(p, t, expected) in cases {
        check_match(p, t, expected);
    }
}

#[test]
fn route_delivers_in_id_order_whatever_the_insertion_order() {
    let mut router = Router::new();
    let subs = [
        (50, ">"),
        (10, "a.b"),
        (40, "a.*"),
        (20, "*.b"),
        (30, "a.>"),
        (5, "x.>"),
        (1, "a.b.c"),
    ];
    for &(id, p) in &subs {
        router.insert(&pattern(p), id, id * 100);
    }
    assert_eq!(
        route(&mut router, "a.b"),
        vec![1000, 2000, 3000, 4000, 5000]
    );
    assert_eq!(router.resolve("a.b"), vec![1000, 2000, 3000, 4000, 5000]);
    assert_eq!(route(&mut router, "a.b.c"), vec![100, 3000, 5000]);
    assert_eq!(route(&mut router, "q"), vec![5000]);
    assert_eq!(router.len(), subs.len());
}

#[test]
fn route_refuses_invalid_topics_and_does_not_remember_them() {
    let mut router = Router::new();
    router.insert(&pattern(">"), 1, 1u64);
    for bad in ["", "a.*", "a.>", "a..b", "a b", ".a"] {
        assert!(
            router.route(bad).is_err(),
            "route({bad:?}) should be refused"
        );
    }
    assert_eq!(router.cached_topics(), 0);
}

/// A random pattern of 1-4 tokens from {a, b, c, *, >}, with '>' only last.
fn random_pattern(rng: &mut Rng) -> Vec<&'static str> {
    const ALPHABET: [&str; 5] = ["a", "b", "c", "*", ">"];
    let n = 1 + rng.below(4);
    (0..n)
        .map(|i| ALPHABET[rng.below(if i + 1 == n { 5 } else { 4 })])
        .collect()
}

/// A random topic of 1-4 tokens from {a, b, c}.
fn random_topic(rng: &mut Rng) -> Vec<&'static str> {
    const ALPHABET: [&str; 3] = ["a", "b", "c"];
    let n = 1 + rng.below(4);
    (0..n).map(|_| ALPHABET[rng.below(3)]).collect()
}

/// A subscription of the random test: its pattern as tokens (for the reference), as text, and
/// parsed.
#[derive(Debug)]
struct Sub {
    id: u64,
    tokens: Vec<&'static str>,
    text: String,
    parsed: Pattern,
}

impl Sub {
    fn new(id: u64, tokens: Vec<&'static str>) -> Sub {
        let text = tokens.join(".");
        let parsed = pattern(&text);
        Sub {
            id,
            tokens,
            text,
            parsed,
        }
    }
}

/// Routes `topic` twice (computed, then remembered) and resolves it, checking all three against
/// the reference over `subs`, which is in id order; checks `Pattern::matches` on the way.
fn check_router(router: &mut Router<u64>, subs: &[Sub], topic: &[&str], case: usize) {
    let text = topic.join(".");
    let mut want = Vec::new();
    for sub in subs {
        let expected = reference_matches(&sub.tokens, topic);
        assert_eq!(
            sub.parsed.matches(&text),
            expected,
            "case {case}: Pattern::matches({:?}, {text:?})",
            sub.text
        );
        if expected {
            want.push(sub.id);
        }
    }
    let first = router.route(&text).expect("valid topic");
    let second = router.route(&text).expect("valid topic");
    assert_eq!(
        &*first,
        &want[..],
        "case {case}: route({text:?}), subs {subs:?}"
    );
    assert_eq!(
        &*second,
        &want[..],
        "case {case}: cached route({text:?}), subs {subs:?}"
    );
    assert!(
        Arc::ptr_eq(&first, &second),
        "case {case}: the second route should be remembered"
    );
    assert_eq!(
        router.resolve(&text),
        want,
        "case {case}: resolve({text:?}), subs {subs:?}"
    );
}

#[test]
fn router_matches_the_reference_on_random_patterns() {
    const CASES: usize = 3000;
    let mut rng = Rng(0x5EED_B055_1234_5678);
    for case in 0..CASES {
        let mut router = Router::new();
        let count = 1 + rng.below(24);
        let mut subs: Vec<Sub> = Vec::with_capacity(count);
        let mut next_id = rng.below(1000) as u64;
        for _ in 0..count {
            let sub = Sub::new(next_id, random_pattern(&mut rng));
            router.insert(&sub.parsed, sub.id, sub.id);
            subs.push(sub);
            next_id += 1 + rng.below(3) as u64;
        }
        assert_eq!(router.len(), count);
        let all: Vec<u64> = subs.iter().map(|sub| sub.id).collect();
        assert_eq!(router.resolve_all(), all, "case {case}: resolve_all");
        let topics: Vec<Vec<&str>> = (0..10).map(|_| random_topic(&mut rng)).collect();
        for topic in &topics {
            check_router(&mut router, &subs, topic, case);
        }

        // Remove a random half; absent ids and wrong patterns remove nothing.
        let mut kept = Vec::with_capacity(subs.len());
        for sub in subs {
            if rng.below(2) == 0 {
                kept.push(sub);
                continue;
            }
            let wrong = random_pattern(&mut rng);
            if wrong != sub.tokens {
                let wrong = pattern(&wrong.join("."));
                assert_eq!(
                    router.remove(&wrong, sub.id),
                    None,
                    "case {case}: {sub:?} under {wrong:?}"
                );
            }
            assert_eq!(
                router.remove(&sub.parsed, sub.id),
                Some(sub.id),
                "case {case}: remove {sub:?}"
            );
            assert_eq!(
                router.remove(&sub.parsed, sub.id),
                None,
                "case {case}: {sub:?} removed twice"
            );
        }
        assert_eq!(router.remove(&pattern(">"), next_id + 1), None);
        assert_eq!(router.len(), kept.len(), "case {case}");
        assert_eq!(router.is_empty(), kept.is_empty(), "case {case}");
        let all: Vec<u64> = kept.iter().map(|sub| sub.id).collect();
        assert_eq!(
            router.resolve_all(),
            all,
            "case {case}: resolve_all after removals"
        );
        for topic in &topics {
            check_router(&mut router, &kept, topic, case);
        }
        let topic = random_topic(&mut rng);
        check_router(&mut router, &kept, &topic, case);

        // Remove the rest: the trie is back to an empty root.
        for sub in &kept {
            assert_eq!(
                router.remove(&sub.parsed, sub.id),
                Some(sub.id),
                "case {case}"
            );
        }
        assert!(router.is_empty());
        assert!(router.resolve_all().is_empty());
        assert!(
            router.root.is_empty(),
            "case {case}: empty trie nodes are left behind"
        );
        check_router(&mut router, &[], &topic, case);
    }
}

// --- Router state ---------------------------------------------------------------------------

#[test]
fn route_cache_follows_subscription_changes() {
    let mut router = Router::new();
    assert_eq!(route(&mut router, "a.b"), Vec::<u64>::new());
    assert_eq!(router.cached_topics(), 1);

    router.insert(&pattern("a.b"), 1, 1);
    assert_eq!(
        route(&mut router, "a.b"),
        vec![1],
        "stale result after insert"
    );
    router.insert(&pattern("a.*"), 2, 2);
    assert_eq!(
        route(&mut router, "a.b"),
        vec![1, 2],
        "stale result after insert"
    );
    router.insert(&pattern(">"), 3, 3);
    assert_eq!(
        route(&mut router, "a.b"),
        vec![1, 2, 3],
        "stale result after insert of '>'"
    );
    assert_eq!(route(&mut router, "z"), vec![3]);

    assert_eq!(router.remove(&pattern("a.b"), 1), Some(1));
    assert_eq!(
        route(&mut router, "a.b"),
        vec![2, 3],
        "stale result after remove"
    );
    assert_eq!(router.remove(&pattern(">"), 3), Some(3));
    assert_eq!(
        route(&mut router, "a.b"),
        vec![2],
        "stale result after remove of '>'"
    );
    assert_eq!(
        route(&mut router, "z"),
        Vec::<u64>::new(),
        "stale result after remove of '>'"
    );

    // A failed remove changes nothing, and a remembered result stays valid.
    let before = router.route("a.b").unwrap();
    assert_eq!(router.remove(&pattern("a.b"), 2), None);
    assert_eq!(router.remove(&pattern("a.*"), 99), None);
    assert_eq!(&*router.route("a.b").unwrap(), &*before);
}

#[test]
fn route_cache_is_bounded() {
    let mut router = Router::new();
    router.insert(&pattern("request.*.completed"), 1, 1u64);
    router.insert(&pattern("request.>"), 2, 2u64);
    let topics = ROUTE_CACHE_LIMIT * 2 + 123;
    for i in 0..topics {
        let topic = format!("request.{i}.completed");
        assert_eq!(route(&mut router, &topic), vec![1, 2], "{topic}");
        assert!(
            router.cached_topics() <= ROUTE_CACHE_LIMIT,
            "{} topics remembered after {} routed",
            router.cached_topics(),
            i + 1
        );
    }
    assert!(router.cached_topics() > 0);
    // Topics forgotten by a reset route correctly again.
    assert_eq!(route(&mut router, "request.0.completed"), vec![1, 2]);
    assert_eq!(route(&mut router, "request.0"), vec![2]);
}

#[test]
fn router_removes_empty_trie_nodes() {
    let mut router = Router::new();
    let mut subs = Vec::new();
    for i in 0..500u64 {
        let p = match i % 4 {
            0 => format!("svc{i}.events.created"),
            1 => format!("svc{i}.*.created"),
            2 => format!("svc{i}.>"),
            _ => format!("*.deep{i}.x.y.>"),
        };
        router.insert(&pattern(&p), i, i);
        subs.push((i, p));
    }
    assert_eq!(router.len(), 500);
    assert_eq!(route(&mut router, "svc0.events.created"), vec![0]);
    assert_eq!(route(&mut router, "svc1.events.created"), vec![1]);
    assert_eq!(route(&mut router, "svc2.events.created"), vec![2]);
    assert_eq!(route(&mut router, "svc3.deep3.x.y.z"), vec![3]);
    for (id, p) in &subs {
        assert_eq!(router.remove(&pattern(p), *id), Some(*id), "{p}");
    }
    assert_eq!(router.len(), 0);
    assert!(router.is_empty());
    assert!(
        router.root.literal.is_empty(),
        "literal children left behind"
    );
    assert!(router.root.one.is_none(), "'*' child left behind");
    assert!(router.root.is_empty());
    for topic in ["svc0.events.created", "svc2.a", "svc3.deep3.x.y.z", "a"] {
        assert_eq!(route(&mut router, topic), Vec::<u64>::new(), "{topic}");
        assert_eq!(router.resolve(topic), Vec::<u64>::new(), "{topic}");
    }
    // And the emptied router works as new.
    router.insert(&pattern("svc0.>"), 1000, 1000);
    assert_eq!(route(&mut router, "svc0.events.created"), vec![1000]);
}

#[test]
fn removing_one_of_several_keeps_the_shared_path() {
    let mut router = Router::new();
    router.insert(&pattern("a.b.c"), 1, 1u64);
    router.insert(&pattern("a.b"), 2, 2u64);
    router.insert(&pattern("a.b.>"), 3, 3u64);
    router.insert(&pattern("a.b.c"), 4, 4u64);
    assert_eq!(router.remove(&pattern("a.b.c"), 1), Some(1));
    assert_eq!(route(&mut router, "a.b.c"), vec![3, 4]);
    assert_eq!(router.remove(&pattern("a.b"), 2), Some(2));
    assert_eq!(route(&mut router, "a.b.c"), vec![3, 4]);
    assert_eq!(route(&mut router, "a.b"), Vec::<u64>::new());
    assert_eq!(router.remove(&pattern("a.b.>"), 3), Some(3));
    assert_eq!(route(&mut router, "a.b.c"), vec![4]);
    assert_eq!(route(&mut router, "a.b.c.d"), Vec::<u64>::new());
    assert_eq!(router.remove(&pattern("a.b.c"), 4), Some(4));
    assert!(router.root.is_empty());
}

// --- Mailbox --------------------------------------------------------------------------------

type Box8 = Mailbox<u64, &'static str>;

fn queued(offer: Offer<u64, &'static str>) -> (bool, Option<&'static str>) {
    match offer {
        Offer::Queued { wake, waker } => (wake, waker),
        other => panic!("expected Queued, got {other:?}"),
    }
}

fn is_queued(offer: Offer<u64, &'static str>) {
    queued(offer);
}

#[test]
fn capacity_zero_is_one() {
    let mailbox = Box8::new(0, OnFull::DropNewest);
    assert_eq!(mailbox.capacity(), 1);
    is_queued(mailbox.offer(1));
    assert!(matches!(mailbox.offer(2), Offer::Dropped(2)));
    assert_eq!(mailbox.counts(), (0, 1, 1));
    assert_eq!(mailbox.take(10, None), vec![1]);
}

#[test]
fn drop_oldest_keeps_the_newest() {
    let mailbox = Box8::new(3, OnFull::DropOldest);
    assert_eq!(mailbox.on_full(), OnFull::DropOldest);
    for i in 0..3 {
        is_queued(mailbox.offer(i));
    }
    for i in 3..10 {
        match mailbox.offer(i) {
            Offer::Dropped(oldest) => assert_eq!(oldest, i - 3),
            other => panic!("offer {i}: expected Dropped, got {other:?}"),
        }
        assert_eq!(mailbox.oldest(|&x| x), Some(i - 2));
    }
    assert_eq!(mailbox.counts(), (0, 7, 3));
    assert_eq!(mailbox.take(2, None), vec![7, 8]);
    assert_eq!(mailbox.counts(), (2, 7, 1));
    assert_eq!(mailbox.take(10, None), vec![9]);
    assert_eq!(mailbox.counts(), (3, 7, 0));
    assert_eq!(mailbox.oldest(|&x| x), None);
}

#[test]
fn drop_newest_drops_the_new_item() {
    let mailbox = Box8::new(2, OnFull::DropNewest);
    is_queued(mailbox.offer(1));
    is_queued(mailbox.offer(2));
    for i in 3..6 {
        assert!(matches!(mailbox.offer(i), Offer::Dropped(x) if x == i));
    }
    assert_eq!(mailbox.counts(), (0, 3, 2));
    assert_eq!(mailbox.take(10, None), vec![1, 2]);
    is_queued(mailbox.offer(6));
    assert_eq!(mailbox.counts(), (2, 3, 1));
}

#[test]
fn block_reports_full_and_offer_over_exceeds_capacity() {
    let mailbox = Box8::new(2, OnFull::Block);
    is_queued(mailbox.offer(1));
    is_queued(mailbox.offer(2));
    assert!(matches!(mailbox.offer(3), Offer::Full(3)));
    assert_eq!(mailbox.counts(), (0, 0, 2), "Full drops nothing");
    for i in 3..6 {
        is_queued(mailbox.offer_over(i));
    }
    assert_eq!(mailbox.counts(), (0, 0, 5));
    assert!(matches!(mailbox.offer(6), Offer::Full(6)));
    assert_eq!(mailbox.take(3, None), vec![1, 2, 3]);
    assert!(
        matches!(mailbox.offer(6), Offer::Full(6)),
        "still at capacity"
    );
    assert_eq!(mailbox.take(1, None), vec![4]);
    is_queued(mailbox.offer(6));
    assert_eq!(mailbox.take(10, None), vec![5, 6]);
    assert_eq!(mailbox.counts(), (6, 0, 0));
}

#[test]
fn offer_over_exceeds_capacity_under_every_policy() {
    for policy in [OnFull::DropOldest, OnFull::DropNewest, OnFull::Block] {
        let mailbox = Box8::new(1, policy);
        is_queued(mailbox.offer_over(1));
        is_queued(mailbox.offer_over(2));
        is_queued(mailbox.offer_over(3));
        assert_eq!(mailbox.counts(), (0, 0, 3), "{policy:?}");
        assert_eq!(mailbox.take(10, None), vec![1, 2, 3], "{policy:?}");
    }
}

#[test]
fn wakes_once_until_the_consumer_finds_it_empty() {
    let mailbox = Box8::new(10, OnFull::Block);
    assert!(mailbox.is_idle());
    assert_eq!(queued(mailbox.offer(1)), (true, None));
    assert!(!mailbox.is_idle());
    assert_eq!(queued(mailbox.offer(2)), (false, None));
    assert_eq!(queued(mailbox.offer_over(3)), (false, None));

    // A batch that leaves items: still scheduled, no wake.
    assert_eq!(mailbox.take(2, None), vec![1, 2]);
    assert!(mailbox.more());
    assert_eq!(queued(mailbox.offer(4)), (false, None));
    // Emptied but not yet found empty: still scheduled.
    assert_eq!(mailbox.take(10, None), vec![3, 4]);
    assert!(
        !mailbox.is_idle(),
        "the consumer has not yet found it empty"
    );
    assert_eq!(queued(mailbox.offer(5)), (false, None));
    assert_eq!(mailbox.take(10, None), vec![5]);

    // Found empty by take(): idle, the next offer wakes.
    assert_eq!(mailbox.take(10, None), Vec::<u64>::new());
    assert!(mailbox.is_idle());
    assert_eq!(queued(mailbox.offer(6)), (true, None));
    assert_eq!(queued(mailbox.offer(7)), (false, None));

    // Found empty by more(): idle, the next offer wakes.
    assert_eq!(mailbox.take(10, None), vec![6, 7]);
    assert!(!mailbox.more());
    assert!(mailbox.is_idle());
    assert_eq!(queued(mailbox.offer(8)), (true, None));
    assert_eq!(queued(mailbox.offer(9)), (false, None));
    assert_eq!(mailbox.counts(), (7, 0, 2));
}

#[test]
fn a_parked_waker_goes_to_the_next_publisher() {
    let mailbox = Box8::new(10, OnFull::DropNewest);
    assert_eq!(mailbox.take(10, Some("w1")), Vec::<u64>::new());
    assert_eq!(queued(mailbox.offer(1)), (true, Some("w1")));
    assert_eq!(
        queued(mailbox.offer(2)),
        (false, None),
        "the waker is handed out once"
    );
    assert_eq!(mailbox.take(10, None), vec![1, 2]);
    assert!(!mailbox.more());
    // No waker left: the next wake carries none.
    assert_eq!(queued(mailbox.offer(3)), (true, None));
    assert_eq!(
        mailbox.take(10, Some("unused")),
        vec![3],
        "a non-empty take parks no waker"
    );
    assert_eq!(mailbox.take(10, Some("w2")), Vec::<u64>::new());
    // offer_over and offer_wait hand it out too.
    assert_eq!(queued(mailbox.offer_over(4)), (true, Some("w2")));
    assert_eq!(mailbox.take(10, None), vec![4]);
    assert_eq!(mailbox.take(10, Some("w3")), Vec::<u64>::new());
    assert_eq!(queued(mailbox.offer_wait(5, None)), (true, Some("w3")));
}

#[test]
fn close_returns_pending_items_and_the_waker() {
    let mailbox = Box8::new(10, OnFull::Block);
    is_queued(mailbox.offer(1));
    is_queued(mailbox.offer(2));
    assert_eq!(mailbox.take(1, None), vec![1]);
    assert!(!mailbox.is_closed());
    let (left, waker) = mailbox.close();
    assert_eq!(left, vec![2]);
    assert_eq!(waker, None);
    assert!(mailbox.is_closed());
    assert_eq!(mailbox.counts(), (1, 1, 0));
    assert!(matches!(mailbox.offer(3), Offer::Closed(3)));
    assert!(matches!(mailbox.offer_over(4), Offer::Closed(4)));
    assert!(matches!(mailbox.offer_wait(5, None), Offer::Closed(5)));
    assert_eq!(
        mailbox.counts(),
        (1, 1, 0),
        "refused offers are not counted dropped"
    );
    assert_eq!(mailbox.take(10, Some("late")), Vec::<u64>::new());
    assert_eq!(
        mailbox.close(),
        (vec![], None),
        "no waker is parked once closed"
    );

    let parked = Box8::new(10, OnFull::DropOldest);
    assert_eq!(parked.take(10, Some("w")), Vec::<u64>::new());
    assert_eq!(parked.close(), (vec![], Some("w")));
    assert!(matches!(parked.offer(1), Offer::Closed(1)));
}

#[test]
fn offer_wait_times_out_when_nobody_takes() {
    let mailbox = Box8::new(1, OnFull::Block);
    is_queued(mailbox.offer_wait(1, None));
    let started = Instant::now();
    let wait = Duration::from_millis(50);
    assert!(matches!(
        mailbox.offer_wait(2, Some(started + wait)),
        Offer::Full(2)
    ));
    let waited = started.elapsed();
    assert!(
        waited >= wait,
        "returned after {waited:?}, before the deadline"
    );
    assert!(waited < Duration::from_secs(2), "returned after {waited:?}");
    // A deadline already past returns at once.
    assert!(matches!(
        mailbox.offer_wait(3, Some(Instant::now())),
        Offer::Full(3)
    ));
    assert_eq!(mailbox.counts(), (0, 0, 1));
    // With room, a deadline does not matter.
    assert_eq!(mailbox.take(1, None), vec![1]);
    is_queued(mailbox.offer_wait(4, Some(Instant::now())));
}

#[test]
fn take_releases_a_blocked_offer_wait() {
    let mailbox = Box8::new(1, OnFull::Block);
    is_queued(mailbox.offer(1));
    let started = AtomicBool::new(false);
    thread::scope(|s| {
        let publisher = s.spawn(|| {
            started.store(true, Ordering::SeqCst);
            mailbox.offer_wait(2, Some(Instant::now() + Duration::from_secs(10)))
        });
        while !started.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        thread::sleep(Duration::from_millis(30));
        assert!(
            !publisher.is_finished(),
            "offer_wait returned on a full mailbox"
        );
        let t0 = Instant::now();
        assert_eq!(mailbox.take(1, None), vec![1]);
        let (wake, _) = queued(publisher.join().unwrap());
        assert!(!wake, "the consumer had not found the mailbox empty");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the publisher was not released by take()"
        );
    });
    assert_eq!(mailbox.take(10, None), vec![2]);
    assert_eq!(mailbox.counts(), (2, 0, 0));
}

#[test]
fn close_releases_a_blocked_offer_wait() {
    let mailbox = Box8::new(1, OnFull::Block);
    is_queued(mailbox.offer(1));
    let started = AtomicBool::new(false);
    thread::scope(|s| {
        let publishers: Vec<_> = (0..3u64)
            .map(|i| {
                let (mailbox, started) = (&mailbox, &started);
                s.spawn(move || {
                    started.store(true, Ordering::SeqCst);
                    // No deadline: only close() can release it.
                    mailbox.offer_wait(10 + i, None)
                })
            })
            .collect();
        while !started.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        thread::sleep(Duration::from_millis(30));
        let (left, waker) = mailbox.close();
        assert_eq!(left, vec![1]);
        assert_eq!(waker, None);
        for (i, publisher) in publishers.into_iter().enumerate() {
            match publisher.join().unwrap() {
                Offer::Closed(item) => assert_eq!(item, 10 + i as u64),
                other => panic!("expected Closed, got {other:?}"),
            }
        }
    });
    assert_eq!(mailbox.counts(), (0, 1, 0));
}

#[test]
fn producers_and_a_consumer_lose_nothing_under_block() {
    const PRODUCERS: u64 = 4;
    const N: u64 = 5_000;
    let mailbox: Mailbox<(u64, u64), ()> = Mailbox::new(8, OnFull::Block);
    let deadline = Instant::now() + Duration::from_secs(30);
    thread::scope(|s| {
        for p in 0..PRODUCERS {
            let mailbox = &mailbox;
            s.spawn(move || {
                for i in 0..N {
                    match mailbox.offer_wait((p, i), Some(deadline)) {
                        Offer::Queued { .. } => {}
                        other => panic!("producer {p} item {i}: {other:?}"),
                    }
                }
            });
        }
        let consumer = s.spawn(|| {
            let mut next = [0u64; PRODUCERS as usize];
            let mut received = 0u64;
            let mut max_batch = 0usize;
            while received < PRODUCERS * N {
                assert!(
                    Instant::now() < deadline,
                    "consumer timed out at {received} items"
                );
                let batch = mailbox.take(16, None);
                if batch.is_empty() {
                    thread::yield_now();
                    continue;
                }
                max_batch = max_batch.max(batch.len());
                for (p, i) in batch {
                    assert_eq!(i, next[p as usize], "producer {p}: out of order");
                    next[p as usize] += 1;
                    received += 1;
                }
                if !mailbox.more() {
                    thread::yield_now();
                }
            }
            assert!(
                max_batch <= 8,
                "a batch of {max_batch} from a mailbox of capacity 8"
            );
            next
        });
        let next = consumer.join().unwrap();
        assert_eq!(next, [N; PRODUCERS as usize]);
    });
    assert_eq!(mailbox.counts(), (PRODUCERS * N, 0, 0));
    assert!(mailbox.take(16, None).is_empty());
    assert!(mailbox.is_idle());
}
