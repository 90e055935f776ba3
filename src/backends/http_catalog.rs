//! An enrichment source backed by a third-party catalog API: JSON over HTTP, one request per
//! lookup, with a per-call timeout. See docs/enrichment-api.md.

use std::time::Duration;

/// Settings of the HTTP catalog source, from `[enrichment.http]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCatalogSettings {
    /// Base URL, e.g. `http://catalog.internal:9300`.
    pub url: String,
    /// Deadline of one call, connect included.
    pub timeout: Duration,
}
