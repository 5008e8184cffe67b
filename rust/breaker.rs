//! The circuit breaker's state machine: closed, open, half-open.
//!
//! It knows nothing of Python or of what is being called: a caller asks for a `Permit` before a
//! call and reports the call's `Outcome` with it afterwards. Calls in flight are counted (a
//! half-open breaker never lets more trial calls through than allowed), and an outcome whose
//! permit was issued before the last state change is not counted in the new state. Times are
//! `Tick`s on a clock the caller reads.

use std::collections::VecDeque;

use crate::clock::Tick;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// Successes in half-open that close it.
    pub success_threshold: u32,
    /// How long it stays open before letting trial calls through.
    pub reset_timeout: Tick,
    /// Trial calls let through at once while half-open.
    pub half_open_max_calls: u32,
    /// Also open when the failure rate over the last `window` calls (at least `min_calls`)
    /// reaches this share (0-1).
    pub failure_rate: Option<f64>,
    pub window: usize,
    pub min_calls: usize,
    /// Calls that take at least this long count as failures.
    pub slow_call: Option<Tick>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// Leave to make one call, to be handed back with its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    generation: u64,
    trial: bool,
    started: Tick,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The call ended in a way that says nothing of the callee's health (it was cancelled):
    /// the permit is returned without counting.
    Ignored,
}

/// A change of state, for the caller to announce.
pub type Transition = (State, State);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub calls: u64,
    pub successes: u64,
    pub failures: u64,
    pub rejected: u64,
    pub state_changes: u64,
}

pub struct Breaker {
    config: Config,
    state: State,
    /// Bumped at every state change: outcomes of permits from an older one are not counted.
    generation: u64,
    consecutive_failures: u32,
    trial_successes: u32,
    trials_in_flight: u32,
    opened_at: Tick,
    /// Outcomes of the last `window` calls (true = failure), when a failure rate is set.
    recent: VecDeque<bool>,
    recent_failures: usize,
    stats: Stats,
}

impl Breaker {
    pub fn new(config: Config) -> Self {
        Breaker {
            config,
            state: State::Closed,
            generation: 0,
            consecutive_failures: 0,
            trial_successes: 0,
            trials_in_flight: 0,
            opened_at: 0,
            recent: VecDeque::new(),
            recent_failures: 0,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The state as of `now` (an open breaker whose timeout has passed reads as half-open).
    pub fn state(&mut self, now: Tick) -> (State, Option<Transition>) {
        let transition = self.expire_open(now);
        (self.state, transition)
    }

    /// Ticks until an open breaker lets a trial call through (0 unless open).
    pub fn retry_after(&self, now: Tick) -> Tick {
        match self.state {
            State::Open => (self.opened_at + self.config.reset_timeout).saturating_sub(now),
            _ => 0,
        }
    }

    fn expire_open(&mut self, now: Tick) -> Option<Transition> {
        if self.state == State::Open
            && now >= self.opened_at.saturating_add(self.config.reset_timeout)
        {
            return Some(self.move_to(State::HalfOpen, now));
        }
        None
    }

    /// Asks to make a call. `Err` carries the ticks until a trial call may be let through
    /// (0 when half-open with all trial calls taken).
    #[inline]
    pub fn acquire(&mut self, now: Tick) -> (Result<Permit, Tick>, Option<Transition>) {
        if self.state == State::Closed {
            self.stats.calls += 1;
            let permit = Permit {
                generation: self.generation,
                trial: false,
                started: now,
            };
            return (Ok(permit), None);
        }
        let transition = self.expire_open(now);
        let result = match self.state {
            State::Open => Err(self.retry_after(now)),
            State::HalfOpen if self.trials_in_flight < self.config.half_open_max_calls => {
                self.trials_in_flight += 1;
                Ok(Permit {
                    generation: self.generation,
                    trial: true,
                    started: now,
                })
            }
            State::HalfOpen => Err(0),
            State::Closed => unreachable!("handled above"),
        };
        match result {
            Ok(_) => self.stats.calls += 1,
            Err(_) => self.stats.rejected += 1,
        }
        (result, transition)
    }

    /// Reports how the call of `permit` ended.
    #[inline]
    pub fn record(&mut self, permit: Permit, outcome: Outcome, now: Tick) -> Option<Transition> {
        let slow = self
            .config
            .slow_call
            .is_some_and(|limit| now.saturating_sub(permit.started) >= limit);
        let outcome = match outcome {
            Outcome::Success if slow => Outcome::Failure,
            other => other,
        };
        match outcome {
            Outcome::Success => self.stats.successes += 1,
            Outcome::Failure => self.stats.failures += 1,
            Outcome::Ignored => {}
        }
        if permit.generation != self.generation {
            return None; // from before the last state change
        }
        if permit.trial {
            self.trials_in_flight -= 1;
        }
        match (self.state, outcome) {
            (_, Outcome::Ignored) => None,
            (State::Closed, Outcome::Success) => {
                // A success can complete the window that reaches the failure rate.
                self.consecutive_failures = 0;
                self.remember(false);
                self.should_trip().then(|| self.move_to(State::Open, now))
            }
            (State::Closed, Outcome::Failure) => {
                self.consecutive_failures += 1;
                self.remember(true);
                self.should_trip().then(|| self.move_to(State::Open, now))
            }
            (State::HalfOpen, Outcome::Success) => {
                self.trial_successes += 1;
                (self.trial_successes >= self.config.success_threshold)
                    .then(|| self.move_to(State::Closed, now))
            }
            (State::HalfOpen, Outcome::Failure) => Some(self.move_to(State::Open, now)),
            // Only trial permits exist while open or half-open, and a trial permit's generation
            // is that of the half-open state.
            (State::Open, _) => None,
        }
    }

    fn remember(&mut self, failed: bool) {
        if self.config.failure_rate.is_none() {
            return;
        }
        if self.recent.len() == self.config.window && self.recent.pop_front() == Some(true) {
            self.recent_failures -= 1;
        }
        self.recent.push_back(failed);
        self.recent_failures += usize::from(failed);
    }

    fn should_trip(&self) -> bool {
        if self.consecutive_failures >= self.config.failure_threshold {
            return true;
        }
        let Some(rate) = self.config.failure_rate else {
            return false;
        };
        let calls = self.recent.len();
        calls >= self.config.min_calls.max(1) && self.recent_failures as f64 >= rate * calls as f64
    }

    /// Moves to `state` by hand (`force_open`, `reset`) or by the rules.
    pub fn move_to(&mut self, state: State, now: Tick) -> Transition {
        let from = self.state;
        self.state = state;
        self.generation += 1;
        self.stats.state_changes += 1;
        self.consecutive_failures = 0;
        self.trial_successes = 0;
        self.trials_in_flight = 0;
        self.recent.clear();
        self.recent_failures = 0;
        if state == State::Open {
            self.opened_at = now;
        }
        (from, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            failure_threshold: 3,
            success_threshold: 2,
            reset_timeout: 100,
            half_open_max_calls: 2,
            failure_rate: None,
            window: 10,
            min_calls: 4,
            slow_call: None,
        }
    }

    fn call(b: &mut Breaker, outcome: Outcome, now: Tick) -> Option<Transition> {
        let (permit, _) = b.acquire(now);
        b.record(permit.expect("allowed"), outcome, now)
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let mut b = Breaker::new(config());
        call(&mut b, Outcome::Failure, 0);
        call(&mut b, Outcome::Failure, 0);
        call(&mut b, Outcome::Success, 0);
        call(&mut b, Outcome::Failure, 0);
        assert_eq!(call(&mut b, Outcome::Failure, 0), None);
        assert_eq!(
            call(&mut b, Outcome::Failure, 5),
            Some((State::Closed, State::Open))
        );
        assert_eq!(b.acquire(10).0, Err(95));
        assert_eq!(b.stats().rejected, 1);
    }

    #[test]
    fn half_open_lets_a_bounded_number_of_trials_through() {
        let mut b = Breaker::new(config());
        for _ in 0..3 {
            call(&mut b, Outcome::Failure, 0);
        }
        let (first, transition) = b.acquire(100);
        assert_eq!(transition, Some((State::Open, State::HalfOpen)));
        let (second, _) = b.acquire(100);
        assert_eq!(b.acquire(100).0, Err(0)); // both trial slots taken
        assert_eq!(b.record(first.unwrap(), Outcome::Success, 101), None);
        assert_eq!(
            b.record(second.unwrap(), Outcome::Success, 102),
            Some((State::HalfOpen, State::Closed))
        );
        assert_eq!(b.state(102).0, State::Closed);
    }

    #[test]
    fn one_failure_in_half_open_reopens() {
        let mut b = Breaker::new(config());
        for _ in 0..3 {
            call(&mut b, Outcome::Failure, 0);
        }
        let (trial, _) = b.acquire(200);
        assert_eq!(
            b.record(trial.unwrap(), Outcome::Failure, 201),
            Some((State::HalfOpen, State::Open))
        );
        assert_eq!(b.acquire(250).0, Err(51));
    }

    #[test]
    fn outcomes_from_before_a_state_change_do_not_count() {
        let mut b = Breaker::new(config());
        let (stale, _) = b.acquire(0);
        for _ in 0..3 {
            call(&mut b, Outcome::Failure, 0);
        }
        let (trial, _) = b.acquire(100);
        // The call that started while closed fails now, in half-open: it must not reopen.
        assert_eq!(b.record(stale.unwrap(), Outcome::Failure, 100), None);
        assert_eq!(b.state(100).0, State::HalfOpen);
        b.record(trial.unwrap(), Outcome::Success, 100);
        assert_eq!(b.trials_in_flight, 0);
    }

    #[test]
    fn ignored_outcomes_free_the_trial_slot_only() {
        let mut b = Breaker::new(config());
        for _ in 0..3 {
            call(&mut b, Outcome::Failure, 0);
        }
        let (trial, _) = b.acquire(100);
        b.record(trial.unwrap(), Outcome::Ignored, 100);
        assert_eq!(b.trials_in_flight, 0);
        assert_eq!(b.state(100).0, State::HalfOpen);
    }

    #[test]
    fn failure_rate_over_a_window() {
        let mut b = Breaker::new(Config {
            failure_threshold: 100,
            failure_rate: Some(0.5),
            ..config()
        });
        call(&mut b, Outcome::Success, 0);
        call(&mut b, Outcome::Failure, 0);
        call(&mut b, Outcome::Success, 0);
        assert_eq!(call(&mut b, Outcome::Success, 0), None); // 1 of 4: under the rate
        assert_eq!(call(&mut b, Outcome::Failure, 0), None); // 2 of 5
                                                             // 3 of 6 reaches 50%; a success that completes such a window trips it as well.
        assert_eq!(
            call(&mut b, Outcome::Failure, 0),
            Some((State::Closed, State::Open))
        );
    }

    #[test]
    fn slow_calls_count_as_failures() {
        let mut b = Breaker::new(Config {
            slow_call: Some(10),
            ..config()
        });
        for at in [0, 20, 40] {
            let (permit, _) = b.acquire(at);
            b.record(permit.unwrap(), Outcome::Success, at + 15);
        }
        assert_eq!(b.state(60).0, State::Open);
        assert_eq!(b.stats().failures, 3);
    }
}
