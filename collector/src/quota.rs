//! Quota events: a node's usage crossing a threshold of its quota
//! (a percentage, e.g. 80 % and 100 %) is recorded once per node, period
//! and threshold in `quota_events`, announced as a live event `quota`, and,
//! when the collector has a webhook, queued in `webhook_deliveries` for
//! [`crate::webhook`] to deliver — all in the transaction that counted the
//! traffic, so an event exists exactly when its traffic does.
//!
//! Byte quotas are checked by ingestion ([`record`], after each batch);
//! quotas on the 95th percentile rate by the minute upkeep ([`check`]),
//! since a rate needs whole 5-minute slots. The upkeep also records byte
//! quota thresholds that usage reached without a heartbeat crossing them
//! (a calibration, an accepted anomaly, a lowered quota).

use std::collections::HashMap;

use chrono::{NaiveDateTime, Utc};
use serde::{Serialize, Serializer};
use sqlx::{Acquire as _, AssertSqlSafe, FromRow as _, PgConnection, PgPool, Row as _};

use crate::{
    billing::{self, Mode, SETTINGS_COLUMNS, SETTINGS_JOIN, Stored, rates},
    error::Error,
    events::{Notice, Outbox},
};

/// What recording quota events does besides storing them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    /// Queue a webhook delivery for each event (the collector has
    /// `--webhook-url`).
    pub webhook: bool,
}

/// A threshold crossed by a node's usage, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub node_id: String,
    /// The node's name when the caller has it at hand; else it is read
    /// from `nodes`.
    pub node_name: Option<String>,
    /// The period whose usage crossed it (`traffic_stats.periodStart`).
    pub period_start: NaiveDateTime,
    /// Percent of the quota.
    pub threshold: i32,
    /// The usage that crossed it: bytes, or bytes per second for
    /// [`Mode::P95`].
    pub usage: i64,
    pub quota: i64,
    pub mode: Mode,
    pub at: NaiveDateTime,
}

/// A recorded quota event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    pub node_id: String,
    pub node_name: String,
    pub period_start: NaiveDateTime,
    pub threshold: i32,
    pub usage: i64,
    pub quota: i64,
    pub mode: Mode,
    pub at: NaiveDateTime,
}

/// The webhook event name of quota events (`x-tally-event`).
pub const WEBHOOK_EVENT: &str = "quota";

/// Records `crossings` in the transaction `conn` is in: each one not
/// recorded before (for its node, period and threshold) is stored, pushed
/// to `outbox` as a `quota` event and, with `config.webhook`, queued for
/// the webhook. No statement at all when `crossings` is empty; otherwise
/// one, plus one when there are deliveries to queue.
pub async fn record(
    conn: &mut PgConnection,
    crossings: &[Crossing],
    outbox: &mut Outbox,
    config: &Config,
) -> Result<(), sqlx::Error> {
    record_events(conn, crossings, outbox, config).await?;
    Ok(())
}

/// As [`record`], returning the events recorded now (none for crossings
/// recorded before).
pub async fn record_events(
    conn: &mut PgConnection,
    crossings: &[Crossing],
    outbox: &mut Outbox,
    config: &Config,
) -> Result<Vec<Event>, sqlx::Error> {
    if crossings.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&Crossing) -> String| crossings.iter().map(f).collect::<Vec<_>>();
    let rows: Vec<EventRow> = sqlx::query_as(
        r#"WITH "fired" AS (
               INSERT INTO "quota_events"
                   ("nodeId", "periodStart", "threshold", "usage", "quota", "mode", "at")
               SELECT * FROM UNNEST($1::text[], $2::timestamp[], $3::int4[], $4::int8[],
                                    $5::int8[], $6::text[], $7::timestamp[])
               ON CONFLICT ("nodeId", "periodStart", "threshold") DO NOTHING
               RETURNING *)
           SELECT f.*, n."name" FROM "fired" f JOIN "nodes" n ON n."id" = f."nodeId"
           ORDER BY f."id""#,
    )
    .bind(column(|c| c.node_id.clone()))
    .bind(crossings.iter().map(|c| c.period_start).collect::<Vec<_>>())
    .bind(crossings.iter().map(|c| c.threshold).collect::<Vec<_>>())
    .bind(crossings.iter().map(|c| c.usage).collect::<Vec<_>>())
    .bind(crossings.iter().map(|c| c.quota).collect::<Vec<_>>())
    .bind(column(|c| c.mode.as_str().to_owned()))
    .bind(crossings.iter().map(|c| c.at).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let known: HashMap<&str, &str> = crossings
        .iter()
        .filter_map(|c| Some((c.node_id.as_str(), c.node_name.as_deref()?)))
        .collect();
    let mut events = rows
        .into_iter()
        .map(Event::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    for e in &mut events {
        if let Some(name) = known.get(e.node_id.as_str()) {
            (*name).clone_into(&mut e.node_name);
        }
    }
    for e in &events {
        tracing::info!(
            node = %e.node_id,
            threshold = e.threshold,
            usage = e.usage,
            quota = e.quota,
            mode = %e.mode,
            period_start = %e.period_start,
            "quota threshold crossed"
        );
        outbox.push(&Notice::Quota {
            node_id: &e.node_id,
            node_name: &e.node_name,
            period_start: e.period_start,
            threshold: e.threshold,
            usage: e.usage,
            quota: e.quota,
            mode: e.mode.as_str(),
            at: e.at,
        });
    }
    if config.webhook && !events.is_empty() {
        let payloads = events
            .iter()
            .map(|e| serde_json::to_string(&Payload::of(e)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        crate::webhook::queue(conn, WEBHOOK_EVENT, &payloads, Utc::now().naive_utc()).await?;
    }
    Ok(events)
}

/// A `quota_events` row (with the node's `name`).
#[derive(sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
struct EventRow {
    id: i64,
    node_id: String,
    #[sqlx(rename = "name")]
    node_name: String,
    period_start: NaiveDateTime,
    threshold: i32,
    usage: i64,
    quota: i64,
    mode: String,
    at: NaiveDateTime,
}

impl TryFrom<EventRow> for Event {
    type Error = sqlx::Error;

    /// Refuses a mode this collector does not know.
    fn try_from(row: EventRow) -> Result<Self, sqlx::Error> {
        Ok(Event {
            id: row.id,
            node_id: row.node_id,
            node_name: row.node_name,
            period_start: row.period_start,
            threshold: row.threshold,
            usage: row.usage,
            quota: row.quota,
            mode: row
                .mode
                .parse()
                .map_err(|error: Error| sqlx::Error::Decode(Box::new(error)))?,
            at: row.at,
        })
    }
}

/// A node with a quota, as [`check`] reads it.
#[derive(sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
struct QuotaNode {
    id: String,
    period_start: NaiveDateTime,
    period_upload: i64,
    period_download: i64,
    /// The highest threshold recorded for the current period.
    recorded: Option<i32>,
    #[sqlx(flatten)]
    settings: Stored,
}

/// The JSON body of a `quota` webhook call.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload<'a> {
    pub event: &'static str,
    pub node: PayloadNode<'a>,
    #[serde(serialize_with = "timestamp")]
    pub period_start: NaiveDateTime,
    pub threshold: i32,
    #[serde(serialize_with = "decimal")]
    pub usage: i64,
    #[serde(serialize_with = "decimal")]
    pub quota: i64,
    pub mode: Mode,
    #[serde(serialize_with = "timestamp")]
    pub at: NaiveDateTime,
}

/// The node a webhook call is about.
#[derive(Debug, Serialize)]
pub struct PayloadNode<'a> {
    pub id: &'a str,
    pub name: &'a str,
}

impl<'a> Payload<'a> {
    pub fn of(event: &'a Event) -> Self {
        Payload {
            event: WEBHOOK_EVENT,
            node: PayloadNode {
                id: &event.node_id,
                name: &event.node_name,
            },
            period_start: event.period_start,
            threshold: event.threshold,
            usage: event.usage,
            quota: event.quota,
            mode: event.mode,
            at: event.at,
        }
    }
}

fn decimal<S: Serializer>(value: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn timestamp<S: Serializer>(time: &NaiveDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&time.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

/// Checks every node with a quota against the thresholds above the largest
/// one recorded for its current period, and records what its usage reached
/// in one transaction; returns the events recorded. `fallback_day` is the
/// collector's `--period-reset monthly:DAY`.
///
/// For nodes billed by 95th percentile this is the only check: the
/// percentile of the current period so far, from `[periodStart, now)` (or
/// the period's end, if it has passed and the period is not archived yet).
/// For byte modes ingestion records crossings as heartbeats make them; this
/// catches usage that got past a threshold otherwise: a calibration, an
/// accepted anomaly, a quota or mode changed under usage already there.
pub async fn check(
    pool: &PgPool,
    config: &Config,
    fallback_day: Option<u32>,
) -> Result<Vec<Event>, sqlx::Error> {
    let now = Utc::now();
    let mut conn = pool.acquire().await?;
    let nodes: Vec<QuotaNode> = sqlx::query_as(AssertSqlSafe(format!(
        r#"SELECT n."id", t."periodStart", t."periodUpload", t."periodDownload",
               {SETTINGS_COLUMNS},
               (SELECT max(q."threshold") FROM "quota_events" q
                WHERE q."nodeId" = n."id" AND q."periodStart" = t."periodStart") AS "recorded"
           FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id"
           {SETTINGS_JOIN}
           WHERE COALESCE(s."quota", d."quota") IS NOT NULL"#
    )))
    .fetch_all(&mut *conn)
    .await?;
    let mut crossings = Vec::new();
    for node in &nodes {
        let (node_id, period_start, recorded) = (&node.id, node.period_start, node.recorded);
        let settings = match node.settings.resolve(fallback_day) {
            Ok(settings) => settings,
            Err(error) => {
                tracing::warn!(node = %node_id, %error, "the node's billing settings are unusable; its quota is not checked");
                continue;
            }
        };
        let Some(quota) = settings.quota else {
            continue;
        };
        let above: Vec<i32> = settings
            .thresholds
            .iter()
            .copied()
            .filter(|&t| recorded.is_none_or(|r| t > r))
            .collect();
        if above.is_empty() {
            continue;
        }
        let usage = if settings.mode == Mode::P95 {
            let end = settings
                .anchor
                .map(|anchor| anchor.period_at(period_start.and_utc()).end.min(now))
                .unwrap_or(now)
                .naive_utc();
            rates::of_span(&mut conn, node_id, period_start, end)
                .await?
                .p95
        } else {
            billing::usage(settings.mode, node.period_upload, node.period_download, 0)
        };
        for threshold in billing::crossed(&above, quota, 0, usage) {
            crossings.push(Crossing {
                node_id: node_id.clone(),
                node_name: None,
                period_start,
                threshold,
                usage,
                quota,
                mode: settings.mode,
                at: now.naive_utc(),
            });
        }
    }
    if crossings.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = conn.begin().await?;
    let mut outbox = Outbox::new();
    let events = record_events(&mut tx, &crossings, &mut outbox, config).await?;
    outbox.send(&mut tx).await?;
    tx.commit().await?;
    Ok(events)
}

/// A node's quota events, newest first (at most `limit`); `NoSuchNode` when
/// there is no such node.
pub async fn list(pool: &PgPool, node_id: &str, limit: i64) -> Result<Vec<Event>, Error> {
    let rows = sqlx::query(
        r#"SELECT q.*, n."name" FROM "nodes" n
           LEFT JOIN LATERAL (
               SELECT * FROM "quota_events" e WHERE e."nodeId" = n."id"
               ORDER BY e."at" DESC, e."id" DESC LIMIT $2) q ON TRUE
           WHERE n."id" = $1
           ORDER BY q."at" DESC, q."id" DESC"#,
    )
    .bind(node_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Err(Error::NoSuchNode(node_id.to_owned()));
    }
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        // The node without events: one row of NULLs beside its name.
        if row.try_get::<Option<i64>, _>("id")?.is_some() {
            events.push(Event::try_from(EventRow::from_row(row)?)?);
        }
    }
    Ok(events)
}
