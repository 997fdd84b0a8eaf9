//! Nodes as people see them: identity, status, load and traffic counters,
//! and per-interface counters.

use std::time::Duration;

use chrono::NaiveDateTime;
use sqlx::{AssertSqlSafe, PgPool, Row as _, postgres::PgRow};

use crate::error::Error;

/// A node with its traffic counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub hostname: Option<String>,
    pub last_seen: Option<NaiveDateTime>,
    /// The load average of the last applied heartbeat.
    pub load: Option<Load>,
    pub kernel: Option<String>,
    pub agent_version: Option<String>,
    pub source: Option<String>,
    pub traffic: Traffic,
}

/// Load averages over 1, 5 and 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// The node's `traffic_stats` row (upload = bytes sent, download = bytes
/// received).
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    pub total_upload: i64,
    pub total_download: i64,
    pub period_upload: i64,
    pub period_download: i64,
    pub period_start: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// One interface of a node: the raw counters of the node's current epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Interface {
    pub name: String,
    pub ifindex: i64,
    /// `attached`, `gone` or `retired`.
    pub state: String,
    pub rx_bytes: i64,
    pub tx_bytes: i64,
    pub rx_packets: i64,
    pub tx_packets: i64,
    pub updated_at: NaiveDateTime,
}

impl Node {
    /// Whether the node was heard from within `offline_after` of `now`.
    pub fn online(&self, now: NaiveDateTime, offline_after: Duration) -> bool {
        let offline_after =
            chrono::Duration::from_std(offline_after).unwrap_or(chrono::Duration::MAX);
        self.last_seen
            .is_some_and(|seen| now.signed_duration_since(seen) <= offline_after)
    }
}

/// Put together with constant text only (no values) below.
const SELECT_NODES: &str = r#"
    SELECT n."id", n."name", n."hostname", n."lastSeen", n."load1", n."load5", n."load15",
           n."kernel", n."agentVersion", n."source",
           t."totalUpload", t."totalDownload", t."periodUpload", t."periodDownload",
           t."periodStart", t."updatedAt"
    FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id""#;

fn node(row: &PgRow) -> Result<Node, sqlx::Error> {
    let load = match (
        row.try_get::<Option<f64>, _>("load1")?,
        row.try_get::<Option<f64>, _>("load5")?,
        row.try_get::<Option<f64>, _>("load15")?,
    ) {
        (Some(one), Some(five), Some(fifteen)) => Some(Load { one, five, fifteen }),
        _ => None,
    };
    Ok(Node {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        hostname: row.try_get("hostname")?,
        last_seen: row.try_get("lastSeen")?,
        load,
        kernel: row.try_get("kernel")?,
        agent_version: row.try_get("agentVersion")?,
        source: row.try_get("source")?,
        traffic: Traffic {
            total_upload: row.try_get("totalUpload")?,
            total_download: row.try_get("totalDownload")?,
            period_upload: row.try_get("periodUpload")?,
            period_download: row.try_get("periodDownload")?,
            period_start: row.try_get("periodStart")?,
            updated_at: row.try_get("updatedAt")?,
        },
    })
}

/// Every node, by name then id (byte order, whatever the database's
/// collation).
pub async fn list(pool: &PgPool) -> Result<Vec<Node>, Error> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        r#"{SELECT_NODES} ORDER BY n."name" COLLATE "C", n."id" COLLATE "C""#
    )))
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(node).collect::<Result<_, _>>()?)
}

/// The node with this id.
pub async fn get(pool: &PgPool, id: &str) -> Result<Node, Error> {
    let row = sqlx::query(AssertSqlSafe(format!(
        r#"{SELECT_NODES} WHERE n."id" = $1"#
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => Ok(node(&row)?),
        None => Err(Error::NoSuchNode(id.to_owned())),
    }
}

/// Whether a node has this id (names do not count).
pub async fn exists(pool: &PgPool, id: &str) -> Result<bool, Error> {
    let found: Option<i32> = sqlx::query_scalar(r#"SELECT 1 FROM "nodes" WHERE "id" = $1"#)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(found.is_some())
}

/// The node's interfaces, by name.
pub async fn interfaces(pool: &PgPool, id: &str) -> Result<Vec<Interface>, Error> {
    let rows = sqlx::query(
        r#"SELECT "name", "ifindex", "state", "rxBytes", "txBytes", "rxPackets", "txPackets",
                  "updatedAt"
           FROM "interface_stats" WHERE "nodeId" = $1 ORDER BY "name" COLLATE "C""#,
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let interface = |row: &PgRow| -> Result<Interface, sqlx::Error> {
        Ok(Interface {
            name: row.try_get("name")?,
            ifindex: row.try_get("ifindex")?,
            state: row.try_get("state")?,
            rx_bytes: row.try_get("rxBytes")?,
            tx_bytes: row.try_get("txBytes")?,
            rx_packets: row.try_get("rxPackets")?,
            tx_packets: row.try_get("txPackets")?,
            updated_at: row.try_get("updatedAt")?,
        })
    };
    Ok(rows.iter().map(interface).collect::<Result<_, _>>()?)
}

/// `(id, periodStart)` of one node (`Some(id)`) or of every node, by id.
pub async fn period_starts(
    pool: &PgPool,
    id: Option<&str>,
) -> Result<Vec<(String, NaiveDateTime)>, Error> {
    let rows = sqlx::query(
        r#"SELECT "nodeId", "periodStart" FROM "traffic_stats"
           WHERE $1::text IS NULL OR "nodeId" = $1
           ORDER BY "nodeId" COLLATE "C""#,
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|row| Ok((row.try_get("nodeId")?, row.try_get("periodStart")?)))
        .collect::<Result<_, sqlx::Error>>()?)
}
