//! Period counters: reset on request, and on a schedule. A scheduled reset
//! is applied to a node when its `periodStart` is before the schedule's
//! latest start: as part of the node's next heartbeat batch (under its row
//! lock), and by a periodic sweep for nodes that are quiet. Both set
//! `periodStart` to that start, so the condition is false afterwards and no
//! replica can reset the same period twice. Every reset is announced as a
//! `period_reset` live event in its transaction ([`events`]).

use std::{fmt, str::FromStr};

use chrono::{Datelike as _, NaiveDate, NaiveDateTime};
use sqlx::{PgConnection, PgPool, Row as _, postgres::PgRow};

use crate::{
    error::Error,
    events::{self, Notice, Outbox},
};

/// When periods start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Every month on this day (1–31; in shorter months, the month's last
    /// day), at 00:00 UTC.
    Monthly { day: u32 },
}

impl Schedule {
    /// The latest scheduled period start at or before `now` (UTC).
    pub fn latest_start(self, now: NaiveDateTime) -> NaiveDateTime {
        match self {
            Schedule::Monthly { day } => {
                let this_month = month_day(now.year(), now.month(), day);
                if this_month <= now {
                    this_month
                } else if now.month() == 1 {
                    month_day(now.year() - 1, 12, day)
                } else {
                    month_day(now.year(), now.month() - 1, day)
                }
            }
        }
    }
}

/// `day` of the month at 00:00, or the month's last day when it is shorter.
fn month_day(year: i32, month: u32, day: u32) -> NaiveDateTime {
    (1..=day.clamp(1, 31))
        .rev()
        .find_map(|d| NaiveDate::from_ymd_opt(year, month, d))
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .unwrap_or_default()
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("{s:?} is not a schedule; expected monthly:DAY (DAY 1-31), e.g. monthly:1");
        let (kind, day) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "monthly" => {
                let day: u32 = day.parse().map_err(|_| bad())?;
                if !(1..=31).contains(&day) {
                    return Err(bad());
                }
                Ok(Schedule::Monthly { day })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Monthly { day } => write!(f, "monthly:{day}"),
        }
    }
}

/// Which nodes a manual reset applies to.
#[derive(Debug, Clone)]
pub enum Target {
    All,
    /// A node id or name.
    Node(String),
}

/// A node whose period was reset, with its traffic after the reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    pub id: String,
    pub traffic: events::Traffic,
}

/// What a reset returns of each row (for [`announce`]).
macro_rules! returning {
    () => {
        r#"RETURNING "nodeId", "totalUpload", "totalDownload", "periodUpload",
                     "periodDownload", "periodStart""#
    };
}

/// Resets period counters now; returns how many nodes were reset.
pub async fn reset_now(pool: &PgPool, target: &Target) -> Result<u64, Error> {
    Ok(reset(pool, target).await?.len() as u64)
}

/// Resets period counters now and announces each reset (`period_reset`);
/// returns the nodes reset, by id.
pub async fn reset(pool: &PgPool, target: &Target) -> Result<Vec<Reset>, Error> {
    let mut tx = pool.begin().await?;
    let rows = match target {
        Target::All => {
            sqlx::query(concat!(
                r#"UPDATE "traffic_stats" SET "periodUpload" = 0, "periodDownload" = 0,
                     "periodStart" = date_trunc('milliseconds', now() AT TIME ZONE 'UTC'),
                     "updatedAt" = date_trunc('milliseconds', now() AT TIME ZONE 'UTC')
                   WHERE "nodeId" IN (SELECT "nodeId" FROM "traffic_stats"
                                      ORDER BY "nodeId" FOR UPDATE)
                   "#,
                returning!()
            ))
            .fetch_all(&mut *tx)
            .await?
        }
        Target::Node(node) => {
            let rows = sqlx::query(concat!(
                r#"UPDATE "traffic_stats" SET "periodUpload" = 0, "periodDownload" = 0,
                     "periodStart" = date_trunc('milliseconds', now() AT TIME ZONE 'UTC'),
                     "updatedAt" = date_trunc('milliseconds', now() AT TIME ZONE 'UTC')
                   WHERE "nodeId" = (SELECT "id" FROM "nodes" WHERE "id" = $1 OR "name" = $1
                                     ORDER BY ("id" = $1) DESC LIMIT 1)
                   "#,
                returning!()
            ))
            .bind(node)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                return Err(Error::NoSuchNode(node.clone()));
            }
            rows
        }
    };
    let resets = announce(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(resets)
}

/// Sends a `period_reset` event for each of `rows` (in `conn`'s
/// transaction) and returns them in id order.
async fn announce(conn: &mut PgConnection, rows: &[PgRow]) -> Result<Vec<Reset>, Error> {
    let mut resets = rows
        .iter()
        .map(|row| {
            Ok(Reset {
                id: row.try_get("nodeId")?,
                traffic: events::Traffic {
                    total_upload: row.try_get("totalUpload")?,
                    total_download: row.try_get("totalDownload")?,
                    period_upload: row.try_get("periodUpload")?,
                    period_download: row.try_get("periodDownload")?,
                    period_start: row.try_get("periodStart")?,
                },
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    resets.sort_by(|a, b| a.id.cmp(&b.id));
    let mut outbox = Outbox::new();
    for reset in &resets {
        outbox.push(&Notice::PeriodReset {
            node_id: &reset.id,
            traffic: reset.traffic,
        });
    }
    outbox.send(conn).await?;
    Ok(resets)
}

/// Applies the schedule's latest start to every node still in an earlier
/// period (the quiet ones; active ones are reset with their heartbeats),
/// and announces each reset. Rows are locked in id order, as heartbeat
/// batches lock them.
pub async fn sweep(pool: &PgPool, start: NaiveDateTime) -> Result<u64, Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(concat!(
        r#"UPDATE "traffic_stats" SET "periodUpload" = 0, "periodDownload" = 0,
             "periodStart" = $1,
             "updatedAt" = date_trunc('milliseconds', now() AT TIME ZONE 'UTC')
           WHERE "nodeId" IN (SELECT "nodeId" FROM "traffic_stats" WHERE "periodStart" < $1
                              ORDER BY "nodeId" FOR UPDATE)
             AND "periodStart" < $1
           "#,
        returning!()
    ))
    .bind(start)
    .fetch_all(&mut *tx)
    .await?;
    let resets = announce(&mut tx, &rows).await?;
    tx.commit().await?;
    Ok(resets.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, m: u32, d: u32, h: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|d| d.and_hms_opt(h, 0, 0))
            .expect("valid date")
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!("monthly:1".parse(), Ok(Schedule::Monthly { day: 1 }));
        assert_eq!(Schedule::Monthly { day: 15 }.to_string(), "monthly:15");
        for bad in ["monthly:0", "monthly:32", "monthly:", "weekly:1", "monthly"] {
            let error = bad.parse::<Schedule>().expect_err(bad);
            assert!(error.contains("expected monthly:DAY"), "{error}");
        }
    }

    #[test]
    fn latest_start_is_this_or_last_month() {
        let first = Schedule::Monthly { day: 1 };
        assert_eq!(first.latest_start(at(2026, 11, 24, 5)), at(2026, 11, 1, 0));
        assert_eq!(first.latest_start(at(2026, 11, 1, 0)), at(2026, 11, 1, 0));
        let fifteenth = Schedule::Monthly { day: 15 };
        assert_eq!(
            fifteenth.latest_start(at(2026, 11, 14, 23)),
            at(2026, 10, 15, 0)
        );
        assert_eq!(
            fifteenth.latest_start(at(2026, 1, 3, 0)),
            at(2025, 12, 15, 0)
        );
    }

    #[test]
    fn short_months_use_their_last_day() {
        let end = Schedule::Monthly { day: 31 };
        assert_eq!(end.latest_start(at(2026, 3, 1, 0)), at(2026, 2, 28, 0));
        assert_eq!(end.latest_start(at(2028, 2, 29, 1)), at(2028, 2, 29, 0));
        assert_eq!(end.latest_start(at(2026, 5, 30, 0)), at(2026, 4, 30, 0));
    }
}
