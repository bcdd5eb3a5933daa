//! Hybrid logical clock.
//!
//! An [`Hlc`] is `(wall_ms, counter)`, ordered lexicographically. [`HlcClock`] hands out
//! timestamps that are strictly increasing for one node and strictly greater than every
//! timestamp it has observed or been told to follow (the causal deps of the intention being
//! authored). The clock takes the wall time as an argument, so it is pure and testable; the
//! log persists its high-water mark so monotonicity survives restarts.

use std::fmt;

/// How far ahead of the local wall clock an intention's HLC may be (5 minutes).
///
/// Ingest refuses an intention whose `wall_ms` exceeds `now + MAX_FUTURE_DRIFT_MS` with a
/// retryable error instead of clamping it: the intention is not stored and a later delivery
/// (once the local clock has caught up) is accepted.
pub const MAX_FUTURE_DRIFT_MS: u64 = 5 * 60 * 1000;

/// A hybrid logical clock timestamp: milliseconds since the Unix epoch and a counter that
/// orders events within one millisecond.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc {
    /// Wall-clock milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Logical counter within `wall_ms`.
    pub counter: u32,
}

impl Hlc {
    /// The smallest timestamp.
    pub const ZERO: Hlc = Hlc {
        wall_ms: 0,
        counter: 0,
    };

    /// Builds a timestamp.
    pub fn new(wall_ms: u64, counter: u32) -> Hlc {
        Hlc { wall_ms, counter }
    }

    /// Returns the smallest timestamp strictly greater than `self`.
    pub fn successor(self) -> Hlc {
        match self.counter.checked_add(1) {
            Some(counter) => Hlc {
                wall_ms: self.wall_ms,
                counter,
            },
            None => Hlc {
                wall_ms: self.wall_ms.saturating_add(1),
                counter: 0,
            },
        }
    }

    /// Returns true when this timestamp is further than [`MAX_FUTURE_DRIFT_MS`] ahead of `now_ms`.
    pub fn is_too_far_ahead(&self, now_ms: u64) -> bool {
        self.wall_ms > now_ms.saturating_add(MAX_FUTURE_DRIFT_MS)
    }

    /// Encodes as 12 bytes: `wall_ms` u64 little-endian, then `counter` u32 little-endian.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&self.wall_ms.to_le_bytes());
        out[8..].copy_from_slice(&self.counter.to_le_bytes());
        out
    }

    /// Decodes the 12-byte form of [`Hlc::to_bytes`].
    pub fn from_bytes(bytes: [u8; 12]) -> Hlc {
        let mut wall = [0u8; 8];
        wall.copy_from_slice(&bytes[..8]);
        let mut counter = [0u8; 4];
        counter.copy_from_slice(&bytes[8..]);
        Hlc {
            wall_ms: u64::from_le_bytes(wall),
            counter: u32::from_le_bytes(counter),
        }
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms, self.counter)
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({}.{})", self.wall_ms, self.counter)
    }
}

/// A node's clock: remembers the highest timestamp seen and issues strictly larger ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// Starts a clock whose next timestamp is greater than `last` (the persisted high-water mark).
    pub fn new(last: Hlc) -> HlcClock {
        HlcClock { last }
    }

    /// Returns the highest timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// Records a timestamp seen on a witnessed intention (the HLC receive rule).
    pub fn observe(&mut self, seen: Hlc) {
        if seen > self.last {
            self.last = seen;
        }
    }

    /// Issues a timestamp for a new local event at wall time `now_ms` that is greater than
    /// every timestamp issued or observed so far and greater than `after` (the largest HLC
    /// among the event's causal deps).
    pub fn tick(&mut self, now_ms: u64, after: Hlc) -> Hlc {
        let floor = self.last.max(after);
        let next = if now_ms > floor.wall_ms {
            Hlc::new(now_ms, 0)
        } else {
            floor.successor()
        };
        self.last = next;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_strictly_monotonic_when_wall_clock_stalls_or_goes_back() {
        let mut clock = HlcClock::default();
        let a = clock.tick(1000, Hlc::ZERO);
        let b = clock.tick(1000, Hlc::ZERO);
        let c = clock.tick(900, Hlc::ZERO);
        assert!(a < b && b < c);
        assert_eq!(a, Hlc::new(1000, 0));
        assert_eq!(c, Hlc::new(1000, 2));
    }

    #[test]
    fn tick_exceeds_causal_deps_from_the_future() {
        let mut clock = HlcClock::default();
        let dep = Hlc::new(5000, 7);
        let t = clock.tick(1000, dep);
        assert!(t > dep);
        assert_eq!(t, Hlc::new(5000, 8));
    }

    #[test]
    fn observe_raises_the_floor_and_counter_overflow_carries() {
        let mut clock = HlcClock::default();
        clock.observe(Hlc::new(10, u32::MAX));
        assert_eq!(clock.tick(0, Hlc::ZERO), Hlc::new(11, 0));
        assert!(Hlc::new(10 + MAX_FUTURE_DRIFT_MS + 1, 0).is_too_far_ahead(10));
        assert!(!Hlc::new(10 + MAX_FUTURE_DRIFT_MS, 0).is_too_far_ahead(10));
    }
}
