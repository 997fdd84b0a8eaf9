//! Anomalies: deltas the ingest held instead of counting them (larger than
//! an interface could carry in the time they cover), listed for admins, who
//! decide each once. Accepting adds the delta to the node's totals and to
//! the period it was detected in: the current period if it is still the
//! same (same `periodStart`), else the archived `billing_periods` row that
//! started then (if there is none, only the totals, and the answer says
//! so). Discarding adds nothing; the row stays either way, with who decided,
//! when and why. Each decision is announced as an `anomaly` live event.

use std::{fmt, str::FromStr};

use chrono::NaiveDateTime;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use super::{Audit, Locked, check_limit, lock_node, node_id, write_traffic};
use crate::{
    error::Error,
    events::{Notice, Outbox, TrafficCounters},
};

/// Where an anomaly stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Not counted; waiting for a decision.
    Held,
    /// Counted by an admin's decision.
    Accepted,
    /// Not counted, by an admin's decision.
    Discarded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Held => "held",
            Status::Accepted => "accepted",
            Status::Discarded => "discarded",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Status {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Status::Held, Status::Accepted, Status::Discarded]
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a status: held, accepted or discarded"))
    }
}

/// Which anomalies a list shows: those of one status, or all (`None`).
pub type Filter = Option<Status>;

/// Parses a filter: `held`, `accepted`, `discarded` or `all`.
pub fn filter(value: &str) -> Result<Filter, Error> {
    if value == "all" {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        Error::InvalidArgument(format!(
            "status: {value:?} is not one of held, accepted, discarded, all"
        ))
    })
}

/// A stored anomaly (a row of `anomalies`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
pub struct Anomaly {
    pub id: i64,
    pub node_id: String,
    pub interface: String,
    pub ifindex: i64,
    pub detected_at: NaiveDateTime,
    /// The held delta, in bytes (both directions of the interface's entry).
    pub upload: i64,
    pub download: i64,
    /// The time the delta covers (node clock), and the most bytes per
    /// direction the interface could have carried in it.
    pub elapsed_ms: i64,
    pub limit_bytes: i64,
    /// The node's period when the delta was held.
    pub period_start: NaiveDateTime,
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub decided_at: Option<NaiveDateTime>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
}

/// The table's columns; every statement is put together from constant text
/// only.
const COLUMNS: &str = r#""id", "nodeId", "interface", "ifindex", "detectedAt", "upload",
    "download", "elapsedMs", "limitBytes", "periodStart", "status", "decidedAt", "decidedBy",
    "reason""#;

/// Every node's anomalies of `status` (all with `None`), newest first, at
/// most `limit`.
pub async fn list(pool: &PgPool, status: Filter, limit: i64) -> Result<Vec<Anomaly>, Error> {
    let limit = check_limit(limit)?;
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        r#"SELECT {COLUMNS} FROM "anomalies"
           WHERE ($1::text IS NULL OR "status" = $1)
           ORDER BY "detectedAt" DESC, "id" DESC LIMIT $2"#
    )))
    .bind(status.map(Status::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The anomalies of the node whose id (or else name) is `node`, as
/// [`list`].
pub async fn of_node(
    pool: &PgPool,
    node: &str,
    status: Filter,
    limit: i64,
) -> Result<Vec<Anomaly>, Error> {
    let limit = check_limit(limit)?;
    let mut conn = pool.acquire().await?;
    let id = node_id(&mut conn, node).await?;
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        r#"SELECT {COLUMNS} FROM "anomalies"
           WHERE "nodeId" = $1 AND ($2::text IS NULL OR "status" = $2)
           ORDER BY "detectedAt" DESC, "id" DESC LIMIT $3"#
    )))
    .bind(&id)
    .bind(status.map(Status::as_str))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// What an admin decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Discard,
}

impl Decision {
    fn status(self) -> Status {
        match self {
            Decision::Accept => Status::Accepted,
            Decision::Discard => Status::Discarded,
        }
    }
}

/// Where an accepted delta was added (besides the totals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credit {
    /// Discarded: added nowhere.
    Nothing,
    /// To the current period: it is the one the delta was held in.
    CurrentPeriod,
    /// To the archived period that started when the delta's period did.
    ArchivedPeriod {
        id: i64,
        start: NaiveDateTime,
        end: NaiveDateTime,
    },
    /// Only to the totals: the delta's period is neither the current one
    /// nor archived.
    TotalsOnly,
}

impl Credit {
    /// Its name in the API and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Credit::Nothing => "nothing",
            Credit::CurrentPeriod => "current_period",
            Credit::ArchivedPeriod { .. } => "archived_period",
            Credit::TotalsOnly => "totals_only",
        }
    }

    /// What happened, for people.
    pub fn describe(self, anomaly: &Anomaly) -> String {
        let start = anomaly.period_start.and_utc().to_rfc3339();
        match self {
            Credit::Nothing => "discarded: nothing was added to the counters".to_owned(),
            Credit::CurrentPeriod => {
                "accepted: added to the totals and to the current period".to_owned()
            }
            Credit::ArchivedPeriod { start, end, .. } => format!(
                "accepted: added to the totals and to the archived period {} to {}",
                start.and_utc().to_rfc3339(),
                end.and_utc().to_rfc3339()
            ),
            Credit::TotalsOnly => format!(
                "accepted: added to the totals only: the period it was held in (from {start}) is \
                 neither the current period nor archived"
            ),
        }
    }
}

/// An anomaly just decided, and the node's traffic after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub anomaly: Anomaly,
    pub credit: Credit,
    pub traffic: TrafficCounters,
}

/// Decides anomaly `id` once, in one transaction: locks the node's rows
/// (as heartbeat batches do) and then the anomaly, refuses with
/// [`Error::Conflict`] unless it is still held, adds its bytes when
/// accepted, records the decision and announces it.
pub async fn decide(
    pool: &PgPool,
    id: i64,
    decision: Decision,
    audit: &Audit,
) -> Result<Decided, Error> {
    let missing = || Error::NotFound(format!("no anomaly {id}"));
    let mut tx = pool.begin().await?;
    let node: String = sqlx::query_scalar(r#"SELECT "nodeId" FROM "anomalies" WHERE "id" = $1"#)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(missing)?;
    let mut locked = lock_node(&mut tx, &node).await?.ok_or_else(missing)?;
    let anomaly: Anomaly = sqlx::query_as(AssertSqlSafe(format!(
        r#"SELECT {COLUMNS} FROM "anomalies" WHERE "id" = $1 AND "nodeId" = $2 FOR UPDATE"#
    )))
    .bind(id)
    .bind(&locked.id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(missing)?;
    if anomaly.status != Status::Held {
        return Err(Error::Conflict(format!(
            "anomaly {id} was {} already{}{}: an anomaly is decided once",
            anomaly.status,
            anomaly
                .decided_by
                .as_deref()
                .map(|by| format!(" by {by:?}"))
                .unwrap_or_default(),
            anomaly
                .decided_at
                .map(|at| format!(" at {}", at.and_utc().to_rfc3339()))
                .unwrap_or_default(),
        )));
    }
    let credit = match decision {
        Decision::Discard => Credit::Nothing,
        Decision::Accept => accept(&mut tx, &mut locked, &anomaly).await?,
    };
    let anomaly: Anomaly = sqlx::query_as(AssertSqlSafe(format!(
        r#"UPDATE "anomalies" SET "status" = $2,
             "decidedAt" = date_trunc('milliseconds', now() AT TIME ZONE 'UTC'),
             "decidedBy" = $3, "reason" = $4
           WHERE "id" = $1
           RETURNING {COLUMNS}"#
    )))
    .bind(id)
    .bind(decision.status().as_str())
    .bind(audit.actor())
    .bind(audit.reason())
    .fetch_one(&mut *tx)
    .await?;
    let mut outbox = Outbox::new();
    outbox.push(&Notice::AnomalyDecided {
        node_id: &locked.id,
        anomaly_id: anomaly.id,
        status: anomaly.status.as_str(),
        upload: anomaly.upload,
        download: anomaly.download,
        credited: credit.as_str(),
        traffic: locked.traffic,
    });
    outbox.send(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(
        node = %anomaly.node_id,
        anomaly = anomaly.id,
        status = %anomaly.status,
        credited = credit.as_str(),
        actor = audit.actor(),
        upload = anomaly.upload,
        download = anomaly.download,
        "anomaly decided"
    );
    Ok(Decided {
        anomaly,
        credit,
        traffic: locked.traffic,
    })
}

/// The `billing_periods` row an accepted anomaly's bytes are added to.
#[derive(sqlx::FromRow)]
struct ArchivedPeriod {
    id: i64,
    start: NaiveDateTime,
    end: NaiveDateTime,
    upload: i64,
    download: i64,
}

/// Adds `anomaly`'s bytes to the locked node's totals and to its period
/// (current or archived); refuses a sum above 2^63 - 1.
async fn accept(
    conn: &mut PgConnection,
    node: &mut Locked,
    anomaly: &Anomaly,
) -> Result<Credit, Error> {
    let add = |what: &str, to: i64, by: i64| {
        to.checked_add(by).ok_or_else(|| {
            Error::Conflict(format!(
                "accepting anomaly {} would take the {what} past 2^63 - 1 bytes; nothing was changed",
                anomaly.id
            ))
        })
    };
    let traffic = &mut node.traffic;
    traffic.total_upload = add("total upload", traffic.total_upload, anomaly.upload)?;
    traffic.total_download = add("total download", traffic.total_download, anomaly.download)?;
    let credit = if traffic.period_start == anomaly.period_start {
        traffic.period_upload = add("period upload", traffic.period_upload, anomaly.upload)?;
        traffic.period_download =
            add("period download", traffic.period_download, anomaly.download)?;
        Credit::CurrentPeriod
    } else {
        let archived: Option<ArchivedPeriod> = sqlx::query_as(
            r#"SELECT "id", "start", "end", "upload", "download" FROM "billing_periods"
               WHERE "nodeId" = $1 AND "start" = $2
               ORDER BY "id" DESC LIMIT 1
               FOR UPDATE"#,
        )
        .bind(&node.id)
        .bind(anomaly.period_start)
        .fetch_optional(&mut *conn)
        .await?;
        match archived {
            Some(period) => {
                let id = period.id;
                let upload = add("archived period's upload", period.upload, anomaly.upload)?;
                let download = add(
                    "archived period's download",
                    period.download,
                    anomaly.download,
                )?;
                sqlx::query(
                    r#"UPDATE "billing_periods" SET "upload" = $2, "download" = $3
                       WHERE "id" = $1"#,
                )
                .bind(id)
                .bind(upload)
                .bind(download)
                .execute(&mut *conn)
                .await?;
                Credit::ArchivedPeriod {
                    id,
                    start: period.start,
                    end: period.end,
                }
            }
            None => Credit::TotalsOnly,
        }
    };
    write_traffic(conn, node).await?;
    Ok(credit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_filters_parse() {
        for status in [Status::Held, Status::Accepted, Status::Discarded] {
            assert_eq!(status.as_str().parse(), Ok(status));
            assert_eq!(filter(status.as_str()).ok(), Some(Some(status)));
        }
        assert_eq!(filter("all").ok(), Some(None));
        for bad in ["", "Held", "pending"] {
            let error = filter(bad).expect_err(bad).to_string();
            assert!(error.starts_with("status: "), "{error}");
        }
    }
}
