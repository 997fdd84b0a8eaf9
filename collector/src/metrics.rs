//! The collector's own metrics (heartbeat outcomes, batch sizes and
//! database latency of ingestion, webhook attempts), kept in one
//! process-wide registry and exposed on `/metrics` beside the per-node
//! metrics read from the database at scrape time (`http/metrics.rs`).
//! Every label has a handful of values: nothing per heartbeat or per
//! connection.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    exponential_buckets, proto::MetricFamily,
};
use tally_proto::v1::Outcome;

/// The collector's metrics registry and the metrics in it.
pub struct Metrics {
    pub registry: Registry,
    applied: IntCounter,
    duplicate: IntCounter,
    stale: IntCounter,
    rejected: IntCounter,
    too_frequent: IntCounter,
    batch_duration: Histogram,
    batch_size: Histogram,
    batch_failures: IntCounter,
    webhook_delivered: IntCounter,
    webhook_failed: IntCounter,
    webhook_given_up: IntCounter,
    connections_open: IntGaugeVec,
    connections_refused: IntCounterVec,
}

/// What came of one webhook attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Failed; it will be retried.
    Failed,
    /// The last attempt failed; no more.
    GivenUp,
}

impl Metrics {
    /// The metrics, registered (fails only if their definitions are wrong).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let heartbeats = IntCounterVec::new(
            Opts::new(
                "tally_heartbeats_total",
                "Heartbeats answered, by outcome (rejected: refused for a bad token, \
                 a malformed heartbeat, a counter going backwards or an overflow; \
                 too_frequent: refused with a retry hint, the node's heartbeats came \
                 faster than --min-heartbeat-interval after a burst).",
            ),
            &["outcome"],
        )?;
        let batch_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tally_ingest_batch_duration_seconds",
                "Time one heartbeat batch spends in its database transaction, \
                 from its first statement to its commit.",
            )
            .buckets(exponential_buckets(0.000_5, 2.0, 14)?),
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "tally_ingest_batch_size",
                "Heartbeats per committed batch (one transaction).",
            )
            .buckets(exponential_buckets(1.0, 2.0, 14)?),
        )?;
        let batch_failures = IntCounter::new(
            "tally_ingest_batch_failures_total",
            "Heartbeat batches whose transaction failed (nothing of them was stored; \
             their heartbeats were answered with a retryable error).",
        )?;
        registry.register(Box::new(heartbeats.clone()))?;
        registry.register(Box::new(batch_duration.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(batch_failures.clone()))?;
        let webhooks = IntCounterVec::new(
            Opts::new(
                "tally_webhook_deliveries_total",
                "Webhook attempts made by this collector, by outcome (failed: will be \
                 retried; given_up: the last attempt failed).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(webhooks.clone()))?;
        let connections_open = IntGaugeVec::new(
            Opts::new(
                "tally_connections_open",
                "TCP connections open, by listener (grpc: the node channel; http).",
            ),
            &["listener"],
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "tally_connections_closed_by_limit_total",
                "Connections the collector closed, by listener and reason (full: the \
                 listener's --max-connections; address_full: the per-address limit; \
                 silent: nothing sent within --handshake-timeout).",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        let webhook = |o: &str| webhooks.with_label_values(&[o]);
        let outcome = |o: &str| heartbeats.with_label_values(&[o]);
        Ok(Self {
            applied: outcome("applied"),
            duplicate: outcome("duplicate"),
            stale: outcome("stale"),
            rejected: outcome("rejected"),
            too_frequent: outcome("too_frequent"),
            registry,
            batch_duration,
            batch_size,
            batch_failures,
            webhook_delivered: webhook("delivered"),
            webhook_failed: webhook("failed"),
            webhook_given_up: webhook("given_up"),
            connections_open,
            connections_refused,
        })
    }

    /// Counts `n` heartbeats answered with `outcome`.
    pub fn heartbeats(&self, outcome: Outcome, n: u64) {
        match outcome {
            Outcome::Applied => self.applied.inc_by(n),
            Outcome::Duplicate => self.duplicate.inc_by(n),
            Outcome::Stale => self.stale.inc_by(n),
            Outcome::Unspecified => {}
        }
    }

    /// Counts `n` refused heartbeats.
    pub fn rejected(&self, n: u64) {
        self.rejected.inc_by(n);
    }

    /// Counts a heartbeat refused because its node's came too fast.
    pub fn too_frequent(&self) {
        self.too_frequent.inc();
    }

    /// Records a committed batch of `size` heartbeats that took `seconds`.
    pub fn batch(&self, size: usize, seconds: f64) {
        self.batch_size.observe(size as f64);
        self.batch_duration.observe(seconds);
    }

    /// Counts a batch whose transaction failed.
    pub fn batch_failed(&self) {
        self.batch_failures.inc();
    }

    /// Counts a webhook attempt.
    pub fn webhook(&self, outcome: Delivery) {
        match outcome {
            Delivery::Delivered => self.webhook_delivered.inc(),
            Delivery::Failed => self.webhook_failed.inc(),
            Delivery::GivenUp => self.webhook_given_up.inc(),
        }
    }

    /// Sets the connections open on `listener`.
    pub fn connections_open(&self, listener: &str, open: usize) {
        self.connections_open
            .with_label_values(&[listener])
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// Counts a connection closed by a limit of `listener`.
    pub fn connection_refused(&self, listener: &str, reason: &str) {
        self.connections_refused
            .with_label_values(&[listener, reason])
            .inc();
    }

    /// Every metric of the registry, as of now.
    pub fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outcomes_and_batches() {
        let metrics = Metrics::new().expect("metrics");
        metrics.heartbeats(Outcome::Applied, 3);
        metrics.heartbeats(Outcome::Stale, 1);
        metrics.rejected(2);
        metrics.batch(3, 0.002);
        metrics.batch_failed();
        metrics.webhook(Delivery::Failed);
        metrics.webhook(Delivery::Failed);
        metrics.webhook(Delivery::Delivered);
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &metrics.gather(),
            &mut text,
        )
        .expect("encode");
        let text = String::from_utf8(text).expect("UTF-8");
        for line in [
            r#"tally_heartbeats_total{outcome="applied"} 3"#,
            r#"tally_heartbeats_total{outcome="duplicate"} 0"#,
            r#"tally_heartbeats_total{outcome="stale"} 1"#,
            r#"tally_heartbeats_total{outcome="rejected"} 2"#,
            "tally_ingest_batch_size_count 1",
            "tally_ingest_batch_size_sum 3",
            "tally_ingest_batch_duration_seconds_count 1",
            "tally_ingest_batch_failures_total 1",
            r#"tally_webhook_deliveries_total{outcome="delivered"} 1"#,
            r#"tally_webhook_deliveries_total{outcome="failed"} 2"#,
            r#"tally_webhook_deliveries_total{outcome="given_up"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
