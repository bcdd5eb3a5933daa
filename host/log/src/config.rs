//! Tunables of a log.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a log reads the wall clock (milliseconds since the Unix epoch): the system's, or
/// one a test or a simulation sets (a skewed node, a clock that stands still).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(Arc::new(system_now_ms))
    }

    /// The system clock moved by `offset_ms` (ahead when positive).
    pub fn skewed(offset_ms: i64) -> Clock {
        Clock(Arc::new(move || {
            system_now_ms().saturating_add_signed(offset_ms)
        }))
    }

    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({} ms)", self.now_ms())
    }
}

/// Limits and knobs of one store's log. [`LogConfig::default`] is what a node uses.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Most floating intentions kept; past it the oldest arrival is evicted (default 65,536).
    pub floating_max_count: u64,
    /// Most bytes of floating intentions kept; past it the oldest arrival is evicted
    /// (default 256 MiB).
    pub floating_max_bytes: u64,
    /// Most intentions one group commit takes (default 4,096).
    pub max_batch_intentions: usize,
    /// Most intention bytes one group commit takes (default 32 MiB).
    pub max_batch_bytes: usize,
    /// Most floating intentions re-checked per group commit (default 8,192); the rest follow
    /// in the next commits.
    pub max_resolve_per_batch: usize,
    /// Most intentions one DAG query may visit (default 1,000,000).
    pub query_visit_cap: usize,
    /// Memory redb may use to cache pages of this `log.db` (default 32 MiB). redb's own
    /// default is 1 GiB per database, too much for a node with many stores.
    pub cache_bytes: usize,
    /// Capacity of the ingest actor's inbox; senders block when it is full (default 1,024).
    pub inbox: usize,
    /// The wall clock HLCs are read from (tests and simulations substitute their own).
    pub clock: Clock,
    /// Runs the ingest actor on the caller's thread instead of its own (default false):
    /// each command is handled, with the floating intentions it frees, before the call
    /// returns. For deterministic simulations that run every node on one thread; callers
    /// on several threads would run their commands one after another.
    pub inline: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            floating_max_count: 65_536,
            floating_max_bytes: 256 * 1024 * 1024,
            max_batch_intentions: 4096,
            max_batch_bytes: 32 * 1024 * 1024,
            max_resolve_per_batch: 8192,
            query_visit_cap: 1_000_000,
            cache_bytes: 32 * 1024 * 1024,
            inbox: 1024,
            inline: false,
            clock: Clock::system(),
        }
    }
}

/// Milliseconds since the Unix epoch from the system clock (0 if the clock is before 1970).
pub fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
