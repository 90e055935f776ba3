//! The two-tier enrichment cache (in-process moka, shared Redis via fred) with
//! stale-while-revalidate. See docs/ARCHITECTURE.md.

use std::time::Duration;

/// Cache settings, from `[cache]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// A value younger than this is fresh (`hit`).
    pub ttl: Duration,
    /// After the TTL, a value is served stale for this long more while one refresh runs behind;
    /// past `ttl + stale` it is gone (`miss`).
    pub stale: Duration,
    /// Most series held by the in-process tier.
    pub memory_capacity: u64,
    /// The shared tier; `None` runs the in-process tier alone.
    pub redis: Option<RedisSettings>,
}

/// The Redis tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://host:port[/db]` (or `redis-cluster://host:port?node=host:port`).
    pub url: String,
    /// Deadline of one Redis operation; past it the lookup goes on without Redis.
    pub timeout: Duration,
    /// Key prefix, so several deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            stale: Duration::from_secs(600),
            memory_capacity: 100_000,
            redis: None,
        }
    }
}
