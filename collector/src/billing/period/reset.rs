//! Period resets outside heartbeat batches: on request ([`reset`]), and
//! on each node's anchor day for nodes that are quiet ([`sweep`]). An ended
//! period is archived in `billing_periods` with its counters
//! ([`super::archive`]), and the node's period counters restart. A node's
//! period that ended is closed with its next heartbeat batch (under its row
//! lock, sharing the heartbeat's bytes by time: [`super::boundary`]) or, if
//! the node is quiet, by the minute [`sweep`]; both check under the lock that `periodStart` is still
//! before the boundary, so no replica closes the same period twice. Every
//! reset is announced as a `period_reset` live event in its transaction
//! ([`events`]).

use chrono::{NaiveDateTime, Timelike as _, Utc};
use sqlx::{PgConnection, PgPool};

use super::{
    archive::{self, ClosedBy},
    boundary,
};
use crate::{
    billing::{self, Mode, Stored},
    error::Error,
    events::{self, Notice, Outbox},
};

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
    pub traffic: events::TrafficCounters,
}

/// Resets period counters now; returns how many nodes were reset.
pub async fn reset_now(pool: &PgPool, target: &Target) -> Result<u64, Error> {
    Ok(reset(pool, target).await?.len() as u64)
}

/// A node's period as locked for closing it.
#[derive(Clone, sqlx::FromRow)]
struct Open {
    id: String,
    #[sqlx(rename = "periodUpload")]
    upload: i64,
    #[sqlx(rename = "periodDownload")]
    download: i64,
    #[sqlx(rename = "periodStart")]
    start: NaiveDateTime,
    #[sqlx(flatten)]
    stored: Stored,
}

/// Locks the nodes' rows (`nodes`, then `traffic_stats`, in id order, as
/// heartbeat batches do) and reads their current periods and settings.
async fn lock(conn: &mut PgConnection, ids: Option<&[String]>) -> Result<Vec<Open>, Error> {
    // Only constants are formatted in.
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        r#"SELECT n."id", t."periodUpload", t."periodDownload", t."periodStart", {settings}
           FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id"
           {join}
           WHERE $1::text[] IS NULL OR n."id" = ANY($1)
           ORDER BY n."id"
           FOR UPDATE OF n, t"#,
        settings = billing::SETTINGS_COLUMNS,
        join = billing::SETTINGS_JOIN,
    )))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// Archives `[open.start, end)` of a node with `upload`/`download`.
async fn close(
    conn: &mut PgConnection,
    open: &Open,
    end: NaiveDateTime,
    bytes: (i64, i64),
    closed_by: ClosedBy,
    now: NaiveDateTime,
) -> Result<(), Error> {
    let mode = open.stored.mode.parse().unwrap_or(Mode::Sum);
    // Its rates come later (the upkeep), outside the locks held now.
    archive::insert(
        conn,
        &open.id,
        (open.start, end),
        bytes,
        mode,
        closed_by,
        now,
    )
    .await?;
    Ok(())
}

/// A node's traffic after its period was reset.
#[derive(sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
struct Restarted {
    node_id: String,
    total_upload: i64,
    total_download: i64,
    period_upload: i64,
    period_download: i64,
    period_start: NaiveDateTime,
}

/// Sets the nodes' periods to start at `start` with zero counters.
async fn restart(
    conn: &mut PgConnection,
    starts: &[(String, NaiveDateTime)],
    now: NaiveDateTime,
) -> Result<Vec<Restarted>, Error> {
    Ok(sqlx::query_as(concat!(
        r#"UPDATE "traffic_stats" AS t SET "periodUpload" = 0, "periodDownload" = 0,
             "periodStart" = u.start, "updatedAt" = $1
           FROM UNNEST($2::text[], $3::timestamp(3)[]) AS u(id, start)
           WHERE t."nodeId" = u.id
           "#,
        returning!()
    ))
    .bind(now)
    .bind(starts.iter().map(|s| s.0.as_str()).collect::<Vec<_>>())
    .bind(starts.iter().map(|s| s.1).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?)
}

/// What a reset returns of each row (for [`announce`]).
macro_rules! returning {
    () => {
        r#"RETURNING t."nodeId", t."totalUpload", t."totalDownload", t."periodUpload",
                     t."periodDownload", t."periodStart""#
    };
}
use returning;

/// The collector's clock, to the millisecond (the seed's precision).
fn now_ms() -> NaiveDateTime {
    let now = Utc::now().naive_utc();
    now.with_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(now)
}

/// Ends the current periods now (each archived in `billing_periods` as
/// closed by request), starts new ones and announces each reset
/// (`period_reset`); returns the nodes reset, by id.
pub async fn reset(pool: &PgPool, target: &Target) -> Result<Vec<Reset>, Error> {
    let mut tx = pool.begin().await?;
    let ids = match target {
        Target::All => None,
        Target::Node(node) => {
            let id: Option<String> = sqlx::query_scalar(
                r#"SELECT "id" FROM "nodes" WHERE "id" = $1 OR "name" = $1
                   ORDER BY ("id" = $1) DESC LIMIT 1"#,
            )
            .bind(node)
            .fetch_optional(&mut *tx)
            .await?;
            Some(vec![id.ok_or_else(|| Error::NoSuchNode(node.clone()))?])
        }
    };
    let open = lock(&mut tx, ids.as_deref()).await?;
    if let (Target::Node(node), true) = (target, open.is_empty()) {
        return Err(Error::NoSuchNode(node.clone()));
    }
    let now = now_ms();
    for node in &open {
        close(
            &mut tx,
            node,
            now,
            (node.upload, node.download),
            ClosedBy::Request,
            now,
        )
        .await?;
    }
    let starts: Vec<_> = open.iter().map(|o| (o.id.clone(), now)).collect();
    let rows = restart(&mut tx, &starts, now).await?;
    let resets = announce(&mut tx, rows).await?;
    tx.commit().await?;
    Ok(resets)
}

/// Sends a `period_reset` event for each of `rows` (in `conn`'s
/// transaction) and returns them in id order.
async fn announce(conn: &mut PgConnection, rows: Vec<Restarted>) -> Result<Vec<Reset>, Error> {
    let mut resets: Vec<Reset> = rows
        .into_iter()
        .map(|row| Reset {
            id: row.node_id,
            traffic: events::TrafficCounters {
                total_upload: row.total_upload,
                total_download: row.total_download,
                period_upload: row.period_upload,
                period_download: row.period_download,
                period_start: row.period_start,
            },
        })
        .collect();
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

/// Ends the periods of quiet nodes whose anchor day came (active ones are
/// closed with their heartbeats): each ended period is archived (closed by
/// schedule; the first with the node's period counters, later ones empty),
/// the node's period restarts at the current period's start, and the reset
/// is announced. `fallback_day` is the collector's `--period-reset` day.
pub async fn sweep(pool: &PgPool, fallback_day: Option<u32>) -> Result<u64, Error> {
    let now = now_ms();
    // Which nodes are due, without locks (most are not).
    let due: Vec<String> = lock_free_due(pool, fallback_day, now).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let open = lock(&mut tx, Some(&due)).await?;
    let mut starts = Vec::new();
    for node in &open {
        let Ok(Some(anchor)) = node.stored.resolve(fallback_day).map(|s| s.anchor) else {
            continue;
        };
        // Checked again under the lock: a heartbeat may have closed it.
        let Some((ended, current)) = boundary::ended(&anchor, node.start, now) else {
            continue;
        };
        for (i, period) in ended.iter().enumerate() {
            let bytes = if i == 0 {
                (node.upload, node.download)
            } else {
                (0, 0)
            };
            let open = Open {
                start: period.start,
                ..node.clone()
            };
            close(&mut tx, &open, period.end, bytes, ClosedBy::Schedule, now).await?;
        }
        starts.push((node.id.clone(), current));
    }
    let rows = restart(&mut tx, &starts, now).await?;
    let resets = announce(&mut tx, rows).await?;
    tx.commit().await?;
    Ok(resets.len() as u64)
}

/// The nodes whose current period has ended by `now`, read without locks.
async fn lock_free_due(
    pool: &PgPool,
    fallback_day: Option<u32>,
    now: NaiveDateTime,
) -> Result<Vec<String>, Error> {
    // Only constants are formatted in.
    let rows: Vec<Current> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        r#"SELECT n."id", t."periodStart", {settings}
           FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id"
           {join}
           WHERE COALESCE(s."anchorDay", d."anchorDay") IS NOT NULL OR $1
           ORDER BY n."id""#,
        settings = billing::SETTINGS_COLUMNS,
        join = billing::SETTINGS_JOIN,
    )))
    .bind(fallback_day.is_some())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|row| {
            let Ok(Some(anchor)) = row.stored.resolve(fallback_day).map(|s| s.anchor) else {
                return false;
            };
            boundary::ended(&anchor, row.period_start, now).is_some()
        })
        .map(|row| row.id)
        .collect())
}

/// When a node's current period started, and its settings.
#[derive(sqlx::FromRow)]
struct Current {
    id: String,
    #[sqlx(rename = "periodStart")]
    period_start: NaiveDateTime,
    #[sqlx(flatten)]
    stored: Stored,
}
