//! The clock that TTLs and breaker timeouts are measured on: nanoseconds since an arbitrary
//! start, monotonic. The coarse system clock costs a few nanoseconds per read (the precise one
//! costs several times that, on every cache hit); its resolution, a few milliseconds, is far
//! below any TTL a user sets. Tests use a manual clock that only moves when told to.

use std::sync::atomic::{AtomicU64, Ordering};

/// Nanoseconds on a `Clock`.
pub type Tick = u64;

/// A deadline that never comes.
pub const NEVER: Tick = u64::MAX;

#[derive(Debug)]
pub enum Clock {
    /// The system's coarse monotonic clock.
    Monotonic,
    /// A clock for tests: starts at 0 and moves only by `advance`.
    Manual(AtomicU64),
}

impl Clock {
    pub fn manual() -> Self {
        Clock::Manual(AtomicU64::new(0))
    }

    #[inline]
    pub fn now(&self) -> Tick {
        match self {
            Clock::Monotonic => coarse_monotonic(),
            Clock::Manual(at) => at.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock forward; a no-op on the system clock.
    pub fn advance(&self, by: Tick) {
        if let Clock::Manual(at) = self {
            at.fetch_add(by, Ordering::AcqRel);
        }
    }
}

/// Converts seconds to ticks, saturating at `NEVER` (so `inf` means "never").
pub fn ticks_from_secs(secs: f64) -> Tick {
    let nanos = secs * 1e9;
    if nanos >= NEVER as f64 {
        NEVER
    } else {
        nanos as Tick
    }
}

#[inline]
fn coarse_monotonic() -> Tick {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[cfg(target_os = "linux")]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC_COARSE;
    #[cfg(not(target_os = "linux"))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes to it.
    unsafe { libc::clock_gettime(CLOCK, &mut ts) };
    // Shifted by one second so that no deadline computed from "now" is ever 0.
    (ts.tv_sec as u64 + 1) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_does_not_go_back() {
        let clock = Clock::Monotonic;
        let first = clock.now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(clock.now() > first);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual();
        assert_eq!(clock.now(), 0);
        clock.advance(5);
        assert_eq!(clock.now(), 5);
    }

    #[test]
    fn seconds_saturate_at_never() {
        assert_eq!(ticks_from_secs(1.5), 1_500_000_000);
        assert_eq!(ticks_from_secs(f64::INFINITY), NEVER);
    }
}
