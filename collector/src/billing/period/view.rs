//! A node's billing as people see it: its effective settings with the
//! current period (what it counted so far, its usage under the node's
//! mode, the quota's share, the forecast at the period's end, the peak and
//! 95th percentile 5-minute rates), and its archived periods.
//!
//! The current period is the one `traffic_stats` counts: it starts at
//! `periodStart` and ends at the node's anchor's next boundary after that
//! start (or is open-ended without an anchor). An anchor changed during the
//! period moves its end, never its start.

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::PgPool;

use super::calendar::Period;
use crate::{
    billing::{
        Mode, forecast, rates,
        settings::{self, Effective},
        usage,
    },
    error::Error,
};

/// Archived periods listed when no limit is asked for.
pub const DEFAULT_LIMIT: u32 = 100;
/// The most archived periods one listing returns.
pub const MAX_LIMIT: u32 = 1000;

/// A node's settings and current period.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeBilling {
    pub settings: Effective,
    pub period: CurrentPeriod,
}

/// The period `traffic_stats` counts now.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentPeriod {
    pub start: NaiveDateTime,
    /// The anchor's next boundary after `start`; `None` without an anchor.
    pub end: Option<NaiveDateTime>,
    pub upload: i64,
    pub download: i64,
    /// Under the node's mode: bytes, or bytes per second for p95.
    pub usage: i64,
    pub quota: Option<i64>,
    /// `usage` in percent of `quota`, to 0.01.
    pub percent: Option<f64>,
    /// The usage expected at `end` ([`crate::billing::forecast`]).
    pub forecast: Option<i64>,
    /// The busiest 5-minute slot so far, bytes per second of the larger
    /// direction.
    pub peak_rate: i64,
    /// The 95th percentile of the 5-minute rates so far (bytes per second,
    /// the larger direction's).
    pub p95_rate: i64,
}

/// A closed period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub id: i64,
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
    pub upload: i64,
    pub download: i64,
    /// `None` until the upkeep computed them (within a minute of the close).
    pub peak_rate: Option<i64>,
    pub p95_rate: Option<i64>,
    /// The mode it was closed under, as stored.
    pub mode: String,
    /// Its usage under that mode; `None` for a mode this collector does not
    /// know (written by a newer version), and for `p95` until its rates are
    /// computed.
    pub usage: Option<i64>,
    /// `schedule` or `request`.
    pub closed_by: String,
    pub closed_at: NaiveDateTime,
}

/// `usage` in percent of `quota`, rounded to 0.01.
pub fn percent(usage: i64, quota: i64) -> f64 {
    if quota <= 0 {
        return 0.0;
    }
    let exact = usage as f64 * 100.0 / quota as f64;
    (exact * 100.0).round() / 100.0
}

/// The node's settings and current period at `now`. `fallback_day` is the
/// collector's `--period-reset monthly:DAY`, if any.
pub async fn node(
    pool: &PgPool,
    node_id: &str,
    fallback_day: Option<u32>,
    now: DateTime<Utc>,
) -> Result<NodeBilling, Error> {
    // One snapshot: the settings, the counters and the history agree.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let settings = settings::effective_in(&mut tx, node_id, fallback_day).await?;
    let row: Option<(NaiveDateTime, i64, i64)> = sqlx::query_as(
        r#"SELECT "periodStart", "periodUpload", "periodDownload"
           FROM "traffic_stats" WHERE "nodeId" = $1"#,
    )
    .bind(node_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((start, upload, download)) = row else {
        return Err(Error::NoSuchNode(node_id.to_owned()));
    };
    let end = settings
        .settings
        .anchor
        .map(|anchor| anchor.period_at(start.and_utc()).end.naive_utc());
    let until = end.map_or(now.naive_utc(), |end| end.min(now.naive_utc()));
    let rates = rates::of_span(&mut tx, node_id, start, until).await?;
    tx.commit().await?;

    let mode = settings.settings.mode;
    let used = usage(mode, upload, download, rates.p95);
    let quota = settings.settings.quota;
    let period = end.map(|end| Period {
        start: start.and_utc(),
        end: end.and_utc(),
    });
    Ok(NodeBilling {
        period: CurrentPeriod {
            start,
            end,
            upload,
            download,
            usage: used,
            quota,
            percent: quota.map(|quota| percent(used, quota)),
            forecast: forecast(mode, used, period, now),
            peak_rate: rates.peak,
            p95_rate: rates.p95,
        },
        settings,
    })
}

/// Refuses a listing limit out of 1..=[`MAX_LIMIT`], naming `limit`.
pub fn check_limit(limit: i64) -> Result<u32, Error> {
    match u32::try_from(limit) {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(Error::InvalidArgument(format!(
            "limit: {limit} is not from 1 to {MAX_LIMIT}"
        ))),
    }
}

/// One `billing_periods` row.
#[derive(sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
struct ArchivedRow {
    id: i64,
    start: NaiveDateTime,
    end: NaiveDateTime,
    upload: i64,
    download: i64,
    peak_rate: Option<i64>,
    p95_rate: Option<i64>,
    mode: String,
    closed_by: String,
    closed_at: NaiveDateTime,
}

fn archived(row: ArchivedRow) -> Archived {
    let known = row.mode.parse::<Mode>().ok();
    if known.is_none() {
        tracing::warn!(mode = %row.mode, "an archived period has a billing mode this collector does not know");
    }
    Archived {
        id: row.id,
        start: row.start,
        end: row.end,
        upload: row.upload,
        download: row.download,
        peak_rate: row.peak_rate,
        p95_rate: row.p95_rate,
        usage: known.and_then(|mode| match (mode, row.p95_rate) {
            (Mode::P95, None) => None,
            (mode, rate) => Some(usage(mode, row.upload, row.download, rate.unwrap_or(0))),
        }),
        mode: row.mode,
        closed_by: row.closed_by,
        closed_at: row.closed_at,
    }
}

/// The node's closed periods, newest first, at most `limit` (checked with
/// [`check_limit`]); `NoSuchNode` when there is no node of this id.
pub async fn periods(pool: &PgPool, node_id: &str, limit: u32) -> Result<Vec<Archived>, Error> {
    let limit = check_limit(i64::from(limit))?;
    let mut tx = pool.begin().await?;
    let found: Option<i32> = sqlx::query_scalar(r#"SELECT 1 FROM "nodes" WHERE "id" = $1"#)
        .bind(node_id)
        .fetch_optional(&mut *tx)
        .await?;
    if found.is_none() {
        return Err(Error::NoSuchNode(node_id.to_owned()));
    }
    let rows: Vec<ArchivedRow> = sqlx::query_as(
        r#"SELECT "id", "start", "end", "upload", "download", "peakRate", "p95Rate", "mode",
                  "closedBy", "closedAt"
           FROM "billing_periods" WHERE "nodeId" = $1
           ORDER BY "start" DESC, "id" DESC
           LIMIT $2"#,
    )
    .bind(node_id)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(archived).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_bounded_and_named() {
        assert_eq!(check_limit(1).ok(), Some(1));
        assert_eq!(check_limit(1000).ok(), Some(1000));
        for bad in [0, -1, 1001, i64::MAX] {
            let error = check_limit(bad).expect_err("out of range").to_string();
            assert!(error.starts_with("limit: "), "{error}");
        }
    }

    #[test]
    fn percent_is_rounded_to_hundredths() {
        assert_eq!(percent(1, 3), 33.33);
        assert_eq!(percent(800, 1000), 80.0);
        assert_eq!(percent(2500, 1000), 250.0);
        assert_eq!(percent(0, 1000), 0.0);
        assert_eq!(percent(5, 0), 0.0);
    }
}
