//! `GET /metrics`: Prometheus text exposition format 0.0.4.
//!
//! Per node (label `node` = its name), read from the database at scrape time
//! with one query: `tally_node_traffic_bytes_total{direction}` (counter,
//! since enrolment), `tally_node_period_traffic_bytes{direction}` (gauge,
//! since the period start), `tally_node_family_bytes_total{direction,family}`
//! (counter, bytes by address family since enrolment, counted by the node's
//! rule), `tally_node_load{window}`, `tally_node_online`,
//! `tally_node_last_seen_timestamp_seconds` (for nodes heard from),
//! `tally_node_stale_heartbeats_total` (heartbeats answered STALE: nothing
//! of them counted), `tally_node_stale` (1 while the last 3 or more in a
//! row were stale) and `tally_node_clock_offset_seconds` (the node's clock
//! minus the collector's, for nodes heard from). Then
//! `tally_database_up` and `tally_scrape_query_duration_seconds` for that
//! query, and the collector's own metrics ([`crate::metrics`]). When the
//! database does not answer, the per-node metrics are left out and
//! `tally_database_up` is 0: the endpoint itself still answers.

use std::time::{Duration, Instant};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header::CONTENT_TYPE},
    response::IntoResponse,
    routing::get,
};
use chrono::{NaiveDateTime, Utc};
use prometheus::{
    Encoder as _, Gauge, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, TEXT_FORMAT,
    TextEncoder, core::Collector, proto::MetricFamily,
};
use sqlx::{Row as _, postgres::PgRow};

use super::{AppState, auth::Reader};

/// How long a scrape waits for the database before answering without the
/// per-node metrics (Prometheus' default scrape timeout is 10 s).
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(_: Reader, State(state): State<AppState>) -> impl IntoResponse {
    let started = Instant::now();
    let rows = tokio::time::timeout(QUERY_TIMEOUT, query(&state)).await;
    let elapsed = started.elapsed();
    let nodes = match rows {
        Ok(Ok(rows)) => match node_families(&rows, state.offline_after) {
            Ok(families) => Some(families),
            Err(error) => {
                tracing::warn!(%error, "cannot read the nodes for /metrics");
                None
            }
        },
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read the nodes for /metrics");
            None
        }
        Err(_) => {
            tracing::warn!(
                timeout_s = QUERY_TIMEOUT.as_secs(),
                "the database did not answer the /metrics query in time"
            );
            None
        }
    };
    let up = nodes.is_some();
    let mut all = nodes.unwrap_or_default();
    all.extend(scrape_families(up, elapsed.as_secs_f64()));
    all.extend(state.metrics.gather());
    (StatusCode::OK, [(CONTENT_TYPE, TEXT_FORMAT)], encode(&all))
}

async fn query(state: &AppState) -> Result<Vec<PgRow>, sqlx::Error> {
    sqlx::query(
        r#"SELECT n."name", n."lastSeen", n."load1", n."load5", n."load15",
                  n."ipv4Upload", n."ipv4Download", n."ipv6Upload", n."ipv6Download",
                  n."staleHeartbeats", n."staleRun", n."clockOffsetMs",
                  t."totalUpload", t."totalDownload", t."periodUpload", t."periodDownload"
           FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id"
           ORDER BY n."name""#,
    )
    .fetch_all(&state.pool)
    .await
}

/// Errors only when a metric definition is wrong.
#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error(transparent)]
    Metric(#[from] prometheus::Error),
    #[error(transparent)]
    Row(#[from] sqlx::Error),
}

/// The per-node metric families of `rows`.
fn node_families(rows: &[PgRow], offline_after: Duration) -> Result<Vec<MetricFamily>, BuildError> {
    let node_direction = ["node", "direction"];
    let total = IntCounterVec::new(
        Opts::new(
            "tally_node_traffic_bytes_total",
            "Bytes a node sent (upload) and received (download) since it was enrolled.",
        ),
        &node_direction,
    )?;
    let period = IntGaugeVec::new(
        Opts::new(
            "tally_node_period_traffic_bytes",
            "Bytes a node sent (upload) and received (download) in the current period.",
        ),
        &node_direction,
    )?;
    let by_family = IntCounterVec::new(
        Opts::new(
            "tally_node_family_bytes_total",
            "Bytes a node sent (upload) and received (download) by address family since it was enrolled, counted by the node's rule.",
        ),
        &["node", "direction", "family"],
    )?;
    let load = GaugeVec::new(
        Opts::new(
            "tally_node_load",
            "A node's load average over the window, as of its latest heartbeat.",
        ),
        &["node", "window"],
    )?;
    let online = IntGaugeVec::new(
        Opts::new(
            "tally_node_online",
            "1 when the node was heard from within the collector's offline-after time, else 0.",
        ),
        &["node"],
    )?;
    let last_seen = GaugeVec::new(
        Opts::new(
            "tally_node_last_seen_timestamp_seconds",
            "When the node's latest heartbeat was applied, in seconds since the Unix epoch.",
        ),
        &["node"],
    )?;
    let stale_total = IntCounterVec::new(
        Opts::new(
            "tally_node_stale_heartbeats_total",
            "Heartbeats of a node answered STALE (older than what was counted: nothing of them counted).",
        ),
        &["node"],
    )?;
    let stale = IntGaugeVec::new(
        Opts::new(
            "tally_node_stale",
            "1 while a node's last 3 or more heartbeats in a row were answered STALE (nothing it sends is counted), else 0.",
        ),
        &["node"],
    )?;
    let clock_offset = GaugeVec::new(
        Opts::new(
            "tally_node_clock_offset_seconds",
            "A node's clock minus the collector's at receipt of its last heartbeat (positive: ahead).",
        ),
        &["node"],
    )?;
    let now = Utc::now().naive_utc();
    let offline_after = chrono::Duration::from_std(offline_after).unwrap_or(chrono::Duration::MAX);
    for row in rows {
        let name: &str = row.try_get("name")?;
        let bytes = |column: &str| -> Result<u64, sqlx::Error> {
            Ok(u64::try_from(row.try_get::<i64, _>(column)?).unwrap_or(0))
        };
        total
            .with_label_values(&[name, "upload"])
            .inc_by(bytes("totalUpload")?);
        total
            .with_label_values(&[name, "download"])
            .inc_by(bytes("totalDownload")?);
        period
            .with_label_values(&[name, "upload"])
            .set(row.try_get("periodUpload")?);
        period
            .with_label_values(&[name, "download"])
            .set(row.try_get("periodDownload")?);
        for (direction, family, column) in [
            ("upload", "ipv4", "ipv4Upload"),
            ("download", "ipv4", "ipv4Download"),
            ("upload", "ipv6", "ipv6Upload"),
            ("download", "ipv6", "ipv6Download"),
        ] {
            by_family
                .with_label_values(&[name, direction, family])
                .inc_by(bytes(column)?);
        }
        for (window, column) in [("1m", "load1"), ("5m", "load5"), ("15m", "load15")] {
            if let Some(value) = row.try_get::<Option<f64>, _>(column)? {
                load.with_label_values(&[name, window]).set(value);
            }
        }
        let seen: Option<NaiveDateTime> = row.try_get("lastSeen")?;
        online.with_label_values(&[name]).set(i64::from(
            seen.is_some_and(|seen| now - seen <= offline_after),
        ));
        if let Some(seen) = seen {
            last_seen
                .with_label_values(&[name])
                .set(seen.and_utc().timestamp_millis() as f64 / 1000.0);
        }
        stale_total
            .with_label_values(&[name])
            .inc_by(bytes("staleHeartbeats")?);
        stale.with_label_values(&[name]).set(i64::from(
            row.try_get::<i32, _>("staleRun")? >= crate::ingest::store::STALE_RUN_FLAGGED,
        ));
        if let Some(offset) = row.try_get::<Option<i64>, _>("clockOffsetMs")? {
            clock_offset
                .with_label_values(&[name])
                .set(offset as f64 / 1000.0);
        }
    }
    Ok([
        total.collect(),
        period.collect(),
        by_family.collect(),
        load.collect(),
        online.collect(),
        last_seen.collect(),
        stale_total.collect(),
        stale.collect(),
        clock_offset.collect(),
    ]
    .into_iter()
    .flatten()
    .collect())
}

/// `tally_database_up` and the query's duration.
fn scrape_families(up: bool, seconds: f64) -> Vec<MetricFamily> {
    let database_up = IntGauge::new(
        "tally_database_up",
        "1 when this scrape's query of the database succeeded, else 0 (per-node metrics are then missing).",
    );
    let duration = Gauge::new(
        "tally_scrape_query_duration_seconds",
        "How long this scrape's query of the database took (or waited before giving up).",
    );
    let mut families = Vec::new();
    match database_up {
        Ok(gauge) => {
            gauge.set(i64::from(up));
            families.extend(gauge.collect());
        }
        Err(error) => tracing::error!(%error, "cannot build tally_database_up"),
    }
    match duration {
        Ok(gauge) => {
            gauge.set(seconds);
            families.extend(gauge.collect());
        }
        Err(error) => tracing::error!(%error, "cannot build tally_scrape_query_duration_seconds"),
    }
    families
}

/// The text format of `families`; empty families (no nodes yet) are left
/// out, as the format wants at least one sample per family.
fn encode(families: &[MetricFamily]) -> Vec<u8> {
    let encoder = TextEncoder::new();
    let mut text = Vec::new();
    for family in families.iter().filter(|f| !f.get_metric().is_empty()) {
        if let Err(error) = encoder.encode(std::slice::from_ref(family), &mut text) {
            tracing::error!(family = family.name(), %error, "cannot encode a metric family");
        }
    }
    text
}
