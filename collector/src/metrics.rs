//! The collector's own metrics (heartbeat outcomes, database latency), for
//! `/metrics` beside the per-node metrics read from the database.

/// The collector's metrics registry.
#[derive(Default)]
pub struct Metrics {
    pub registry: prometheus::Registry,
}
