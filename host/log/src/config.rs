//! Tunables of a log.

use std::time::{SystemTime, UNIX_EPOCH};

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
    /// The wall clock in milliseconds since the Unix epoch (tests substitute their own).
    pub now_ms: fn() -> u64,
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
            now_ms: system_now_ms,
        }
    }
}

/// Milliseconds since the Unix epoch from the system clock (0 if the clock is before 1970).
pub fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
