//! A node's history as dense series: the minute rows of `node_history` and
//! `interface_history` added up per step, one point per step of the range
//! (zeros where nothing was recorded).

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, NaiveDateTime};
use sqlx::{AssertSqlSafe, PgPool};

use super::{BIGINT_MAX, nodes::Load};
use crate::{
    corrections::calibrate::{self, Calibration},
    error::Error,
};

/// Most points in one series.
pub const MAX_POINTS: i64 = 1440;
/// Most interface points in one answer (interfaces × points): a node may
/// list thousands of interfaces.
pub const MAX_INTERFACE_POINTS: i64 = 200_000;
/// The history is kept per minute: steps are whole minutes.
pub const MIN_STEP: Duration = Duration::from_secs(60);
/// The longest step.
pub const MAX_STEP: Duration = Duration::from_secs(366 * 86_400);

/// The points of a series: `points` steps of `step_seconds` from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The first point: the range's `from` rounded down to a multiple of
    /// the step (counted from the Unix epoch, so 1h steps start at whole
    /// hours).
    pub start: NaiveDateTime,
    pub step_seconds: i64,
    pub points: i64,
}

impl Range {
    /// The points from `from` to `to` (exclusive) in steps of `step`;
    /// refuses an empty or reversed range, a step that is not a whole
    /// number of minutes, and more than [`MAX_POINTS`] points.
    pub fn new(from: NaiveDateTime, to: NaiveDateTime, step: Duration) -> Result<Range, Error> {
        let invalid = |message: String| Err(Error::InvalidArgument(message));
        if step < MIN_STEP
            || step > MAX_STEP
            || step.subsec_nanos() != 0
            || !step.as_secs().is_multiple_of(60)
        {
            return invalid(format!(
                "step: {} is not a whole number of minutes from 1m to 366d",
                humantime::format_duration(step)
            ));
        }
        if from >= to {
            return invalid(format!(
                "from ({}) must be before to ({})",
                from.and_utc().to_rfc3339(),
                to.and_utc().to_rfc3339()
            ));
        }
        let step_seconds = step.as_secs() as i64;
        let step_ms = step_seconds * 1000;
        let from_ms = from.and_utc().timestamp_millis();
        let to_ms = to.and_utc().timestamp_millis();
        let start_ms = from_ms.div_euclid(step_ms) * step_ms;
        // i128: a range of thousands of years in 1 minute steps is refused,
        // not overflowed.
        let points = (i128::from(to_ms) - i128::from(start_ms) + i128::from(step_ms) - 1)
            / i128::from(step_ms);
        if points > i128::from(MAX_POINTS) {
            return invalid(format!(
                "from {} to {} in steps of {} is {points} points, more than {MAX_POINTS}: use a larger step or a shorter range",
                from.and_utc().to_rfc3339(),
                to.and_utc().to_rfc3339(),
                humantime::format_duration(step)
            ));
        }
        let start = DateTime::from_timestamp_millis(start_ms)
            .map(|t| t.naive_utc())
            .ok_or_else(|| Error::InvalidArgument("from: out of range".into()))?;
        Ok(Range {
            start,
            step_seconds,
            points: points as i64,
        })
    }

    /// The time of point `k`.
    pub fn time(&self, k: i64) -> NaiveDateTime {
        self.start + chrono::Duration::seconds(k * self.step_seconds)
    }

    /// Where the last point's step ends.
    pub fn end(&self) -> NaiveDateTime {
        self.time(self.points)
    }
}

/// The node's traffic, heartbeats and load in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub time: NaiveDateTime,
    pub upload: i64,
    pub download: i64,
    pub heartbeats: i64,
    /// The load of the step's last recorded minute; `None` when no minute
    /// of the step was recorded.
    pub load: Option<Load>,
}

/// One interface's traffic in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct InterfacePoint {
    pub time: NaiveDateTime,
    pub rx: i64,
    pub tx: i64,
}

/// One interface's series.
#[derive(Debug, Clone, PartialEq)]
pub struct InterfaceSeries {
    pub name: String,
    pub points: Vec<InterfacePoint>,
}

/// A node's series over a range.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub range: Range,
    pub points: Vec<Point>,
    /// Every interface the node has now or had traffic on in the range, by
    /// name.
    pub interfaces: Vec<InterfaceSeries>,
    /// The calibrations of the node's counters made in the range, oldest
    /// first.
    pub calibrations: Vec<Calibration>,
}

/// The node's history over `range`, read from one snapshot; with the
/// interfaces' series when `with_interfaces`, refused when those would hold
/// more than [`MAX_INTERFACE_POINTS`] points.
pub async fn node(
    pool: &PgPool,
    id: &str,
    range: Range,
    with_interfaces: bool,
) -> Result<History, Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let known: Option<i32> = sqlx::query_scalar(r#"SELECT 1 FROM "nodes" WHERE "id" = $1"#)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    if known.is_none() {
        return Err(Error::NoSuchNode(id.to_owned()));
    }
    let index = |k: i64| {
        usize::try_from(k)
            .ok()
            .filter(|&k| (k as i64) < range.points)
    };
    // The statements below are put together from constant text only.
    let step_of = r#"floor(extract(epoch FROM ("bucket" - $2)) / $3)::bigint"#;

    let mut points: Vec<Point> = (0..range.points)
        .map(|k| Point {
            time: range.time(k),
            upload: 0,
            download: 0,
            heartbeats: 0,
            load: None,
        })
        .collect();
    let rows: Vec<NodeStep> = sqlx::query_as(AssertSqlSafe(format!(
        r#"SELECT {step_of} AS k,
                  LEAST(sum("upload"), {BIGINT_MAX})::bigint AS upload,
                  LEAST(sum("download"), {BIGINT_MAX})::bigint AS download,
                  sum("heartbeats")::bigint AS heartbeats,
                  (array_agg("load1" ORDER BY "bucket" DESC))[1] AS load1,
                  (array_agg("load5" ORDER BY "bucket" DESC))[1] AS load5,
                  (array_agg("load15" ORDER BY "bucket" DESC))[1] AS load15
           FROM "node_history"
           WHERE "nodeId" = $1 AND "bucket" >= $2 AND "bucket" < $4
           GROUP BY 1"#
    )))
    .bind(id)
    .bind(range.start)
    .bind(range.step_seconds)
    .bind(range.end())
    .fetch_all(&mut *tx)
    .await?;
    for row in rows {
        let Some(point) = index(row.k).and_then(|k| points.get_mut(k)) else {
            continue;
        };
        point.upload = row.upload;
        point.download = row.download;
        point.heartbeats = row.heartbeats;
        point.load = Some(Load {
            one: row.load1,
            five: row.load5,
            fifteen: row.load15,
        });
    }

    let empty: Vec<InterfacePoint> = (0..range.points)
        .map(|k| InterfacePoint {
            time: range.time(k),
            rx: 0,
            tx: 0,
        })
        .collect();
    let mut interfaces: BTreeMap<String, Vec<InterfacePoint>> = BTreeMap::new();
    if !with_interfaces {
        let calibrations = calibrate::between(&mut tx, id, range.start, range.end()).await?;
        tx.commit().await?;
        return Ok(History {
            range,
            calibrations,
            points,
            interfaces: Vec::new(),
        });
    }
    let names: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM (
             SELECT "name" FROM "interface_stats" WHERE "nodeId" = $1
             UNION
             SELECT "name" FROM "interface_history"
             WHERE "nodeId" = $1 AND "bucket" >= $2 AND "bucket" < $3
           ) n"#,
    )
    .bind(id)
    .bind(range.start)
    .bind(range.end())
    .fetch_one(&mut *tx)
    .await?;
    if names.saturating_mul(range.points) > MAX_INTERFACE_POINTS {
        return Err(Error::InvalidArgument(format!(
            "the answer would hold {names} interfaces × {} points (at most {MAX_INTERFACE_POINTS} \
             interface points): ask for fewer points (a shorter range, or a larger step) or \
             for no interfaces (interfaces=false)",
            range.points
        )));
    }
    let current: Vec<String> =
        sqlx::query_scalar(r#"SELECT "name" FROM "interface_stats" WHERE "nodeId" = $1"#)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    for name in current {
        interfaces.entry(name).or_insert_with(|| empty.clone());
    }
    let rows: Vec<InterfaceStep> = sqlx::query_as(AssertSqlSafe(format!(
        r#"SELECT "name", {step_of} AS k,
                  LEAST(sum("rxBytes"), {BIGINT_MAX})::bigint AS rx,
                  LEAST(sum("txBytes"), {BIGINT_MAX})::bigint AS tx
           FROM "interface_history"
           WHERE "nodeId" = $1 AND "bucket" >= $2 AND "bucket" < $4
           GROUP BY 1, 2"#
    )))
    .bind(id)
    .bind(range.start)
    .bind(range.step_seconds)
    .bind(range.end())
    .fetch_all(&mut *tx)
    .await?;
    for row in rows {
        let series = interfaces.entry(row.name).or_insert_with(|| empty.clone());
        if let Some(point) = index(row.k).and_then(|k| series.get_mut(k)) {
            point.rx = row.rx;
            point.tx = row.tx;
        }
    }
    let calibrations = calibrate::between(&mut tx, id, range.start, range.end()).await?;
    tx.commit().await?;
    Ok(History {
        range,
        calibrations,
        points,
        interfaces: interfaces
            .into_iter()
            .map(|(name, points)| InterfaceSeries { name, points })
            .collect(),
    })
}

/// One step of `node_history` (step `k` of the range), added up.
#[derive(sqlx::FromRow)]
struct NodeStep {
    k: i64,
    upload: i64,
    download: i64,
    heartbeats: i64,
    /// The load of the step's latest minute.
    load1: f64,
    load5: f64,
    load15: f64,
}

/// One step of one interface's `interface_history`, added up.
#[derive(sqlx::FromRow)]
struct InterfaceStep {
    name: String,
    k: i64,
    rx: i64,
    tx: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        DateTime::parse_from_rfc3339(s)
            .expect("timestamp")
            .naive_utc()
    }

    #[test]
    fn ranges_start_at_a_multiple_of_the_step_and_cover_to() {
        let minute = Duration::from_secs(60);
        let r = Range::new(
            at("2026-11-25T09:00:30Z"),
            at("2026-11-25T10:00:30Z"),
            minute,
        )
        .expect("range");
        assert_eq!(r.start, at("2026-11-25T09:00:00Z"));
        assert_eq!(r.points, 61, "the minute of `to` is included");
        assert_eq!(r.end(), at("2026-11-25T10:01:00Z"));
        let r = Range::new(
            at("2026-11-25T09:00:00Z"),
            at("2026-11-25T10:00:00Z"),
            minute,
        )
        .expect("range");
        assert_eq!((r.start, r.points), (at("2026-11-25T09:00:00Z"), 60));
        let hour = Duration::from_secs(3600);
        let r = Range::new(at("2026-11-25T09:17:00Z"), at("2026-11-25T11:00:00Z"), hour)
            .expect("range");
        assert_eq!((r.start, r.points), (at("2026-11-25T09:00:00Z"), 2));
        assert_eq!(r.time(1), at("2026-11-25T10:00:00Z"));
    }

    #[test]
    fn bad_ranges_are_refused_with_the_parameter_named() {
        let (from, to) = (at("2026-11-25T09:00:00Z"), at("2026-11-25T10:00:00Z"));
        let message = |r: Result<Range, Error>| match r {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{other:?}"),
        };
        for step in [0, 30, 90, 61] {
            let m = message(Range::new(from, to, Duration::from_secs(step)));
            assert!(m.starts_with("step:"), "{m}");
        }
        assert!(message(Range::new(from, to, Duration::from_millis(60_500))).starts_with("step:"));
        assert!(message(Range::new(to, from, MIN_STEP)).starts_with("from ("));
        assert!(message(Range::new(from, from, MIN_STEP)).starts_with("from ("));
        let day_and_a_minute = to + chrono::Duration::hours(23) + chrono::Duration::minutes(1);
        let m = message(Range::new(from, day_and_a_minute, MIN_STEP));
        assert!(m.contains("1441 points, more than 1440"), "{m}");
        assert_eq!(
            Range::new(from, from + chrono::Duration::days(1), MIN_STEP)
                .expect("1440 points")
                .points,
            1440
        );
        let far = at("9999-01-01T00:00:00Z");
        assert!(message(Range::new(at("1970-01-01T00:00:00Z"), far, MIN_STEP)).contains("points"));
    }
}
