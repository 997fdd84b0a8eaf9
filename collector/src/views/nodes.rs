//! Nodes as people see them: identity, status, load and traffic counters
//! (with their split by address family, the counting rule in effect and the
//! quota threshold reached in the current period), the counter set the
//! collector follows, the node's clock offset and its stale heartbeats, and
//! per-interface counters with each interface's kind, default route and
//! family split.

use std::time::Duration;

use chrono::NaiveDateTime;
use sqlx::{AssertSqlSafe, PgPool};

pub use crate::load::Load;
use crate::{
    billing::{CountRule, SETTINGS_COLUMNS, SETTINGS_JOIN},
    error::Error,
};

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
    pub traffic: TrafficStats,
    /// Bytes by address family since enrolment, counted by the node's rule.
    pub families: Families,
    /// Which interfaces the node's traffic is counted from (its own
    /// setting, else the fleet's).
    pub count_rule: CountRule,
    /// The highest quota threshold (percent) the node's usage crossed in
    /// its current period; `None` when none was.
    pub quota_crossed: Option<i32>,
    /// The counter set the collector follows; `None` before the first
    /// heartbeat.
    pub counter_set: Option<CounterSet>,
    /// The node's clock minus the collector's at receipt of its last
    /// heartbeat, in milliseconds (`None` before one came).
    pub clock_offset_ms: Option<i64>,
    pub stale: Stale,
}

/// The counter set the collector follows for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterSet {
    pub boot_id: String,
    pub epoch: String,
    /// 0: the agent did not say.
    pub generation: i64,
    /// When it began by the node's clock (Unix ns; informational).
    pub created_unix_ns: i64,
}

/// A node's heartbeats answered STALE (nothing of them was counted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stale {
    pub heartbeats: i64,
    /// In a row, up to now (0 once one is applied again).
    pub run: i32,
    pub last_at: Option<NaiveDateTime>,
    /// `superseded`, `older_generation`, `earlier_in_boot` or
    /// `earlier_reading`.
    pub last_reason: Option<String>,
}

impl Stale {
    /// Whether the node's heartbeats are being thrown away: the last
    /// [`crate::ingest::store::STALE_RUN_FLAGGED`] or more were stale.
    pub fn flagged(&self) -> bool {
        self.run >= crate::ingest::store::STALE_RUN_FLAGGED
    }
}

/// Upload (sent) and download (received) bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directions {
    pub upload: i64,
    pub download: i64,
}

/// A node's traffic by address family (the rest of its traffic, ARP and
/// the like, is in neither).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Families {
    pub ipv4: Directions,
    pub ipv6: Directions,
}

/// Received and sent bytes of one address family on one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyBytes {
    pub rx: i64,
    pub tx: i64,
}

/// The node's `traffic_stats` row (upload = bytes sent, download = bytes
/// received).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
pub struct TrafficStats {
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
    /// `physical`, `vlan`, `bond`, `bridge`, `container_bridge`, `veth`,
    /// `tun`, `tap`, `wireguard`, `macvlan`, `vxlan` or `other`.
    pub kind: String,
    /// Carried an IPv4 or IPv6 default route at the last reading.
    pub default_route: bool,
    /// `None` when the agent's source cannot tell the families apart.
    pub ipv4: Option<FamilyBytes>,
    pub ipv6: Option<FamilyBytes>,
}

impl Node {
    /// Whether the node was heard from within `offline_after` of `now`.
    pub fn online(&self, now: NaiveDateTime, offline_after: Duration) -> bool {
        let offline_after =
            chrono::Duration::from_std(offline_after).unwrap_or(chrono::Duration::MAX);
        self.last_seen
            .is_some_and(|seen| now.signed_duration_since(seen) <= offline_after)
    }

    /// Whether the node's clock was further off than `max` at its last
    /// heartbeat.
    pub fn clock_skewed(&self, max: Duration) -> bool {
        clock_skewed(self.clock_offset_ms, max)
    }
}

/// Whether a clock `offset_ms` off is further off than `max`.
pub fn clock_skewed(offset_ms: Option<i64>, max: Duration) -> bool {
    offset_ms.is_some_and(|offset| u128::from(offset.unsigned_abs()) > max.as_millis())
}

/// Put together with constant text only (no values) below: the node, its
/// traffic, its effective settings ([`SETTINGS_COLUMNS`]) and the highest
/// threshold crossed in its current period.
fn select_nodes() -> String {
    format!(
        r#"
    SELECT n."id", n."name", n."hostname", n."lastSeen", n."load1", n."load5", n."load15",
           n."kernel", n."agentVersion", n."source",
           n."ipv4Upload", n."ipv4Download", n."ipv6Upload", n."ipv6Download",
           n."bootId", n."epoch", n."generation", n."epochCreatedAt",
           n."clockOffsetMs", n."staleHeartbeats", n."staleRun", n."lastStaleAt",
           n."lastStaleReason",
           t."totalUpload", t."totalDownload", t."periodUpload", t."periodDownload",
           t."periodStart", t."updatedAt",
           (SELECT max(q."threshold") FROM "quota_events" q
            WHERE q."nodeId" = n."id" AND q."periodStart" = t."periodStart") AS "quotaCrossed",
           {SETTINGS_COLUMNS}
    FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id"
    {SETTINGS_JOIN}"#
    )
}

/// One row of [`select_nodes`], column for column.
#[derive(sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
struct NodeRow {
    id: String,
    name: String,
    hostname: Option<String>,
    last_seen: Option<NaiveDateTime>,
    load1: Option<f64>,
    load5: Option<f64>,
    load15: Option<f64>,
    kernel: Option<String>,
    agent_version: Option<String>,
    source: Option<String>,
    ipv4_upload: i64,
    ipv4_download: i64,
    ipv6_upload: i64,
    ipv6_download: i64,
    boot_id: Option<String>,
    epoch: Option<String>,
    generation: i64,
    epoch_created_at: Option<i64>,
    clock_offset_ms: Option<i64>,
    stale_heartbeats: i64,
    stale_run: i32,
    last_stale_at: Option<NaiveDateTime>,
    last_stale_reason: Option<String>,
    #[sqlx(flatten)]
    traffic: TrafficStats,
    quota_crossed: Option<i32>,
    count_rule: String,
}

impl TryFrom<NodeRow> for Node {
    type Error = Error;

    fn try_from(row: NodeRow) -> Result<Self, Error> {
        let load = match (row.load1, row.load5, row.load15) {
            (Some(one), Some(five), Some(fifteen)) => Some(Load { one, five, fifteen }),
            _ => None,
        };
        let counter_set = match (row.boot_id, row.epoch) {
            (Some(boot_id), Some(epoch)) => Some(CounterSet {
                boot_id,
                epoch,
                generation: row.generation,
                created_unix_ns: row.epoch_created_at.unwrap_or(0),
            }),
            _ => None,
        };
        Ok(Node {
            id: row.id,
            name: row.name,
            hostname: row.hostname,
            last_seen: row.last_seen,
            load,
            kernel: row.kernel,
            agent_version: row.agent_version,
            source: row.source,
            traffic: row.traffic,
            families: Families {
                ipv4: Directions {
                    upload: row.ipv4_upload,
                    download: row.ipv4_download,
                },
                ipv6: Directions {
                    upload: row.ipv6_upload,
                    download: row.ipv6_download,
                },
            },
            count_rule: row.count_rule.parse()?,
            quota_crossed: row.quota_crossed,
            counter_set,
            clock_offset_ms: row.clock_offset_ms,
            stale: Stale {
                heartbeats: row.stale_heartbeats,
                run: row.stale_run,
                last_at: row.last_stale_at,
                last_reason: row.last_stale_reason,
            },
        })
    }
}

/// Every node, by name then id (byte order, whatever the database's
/// collation).
pub async fn list(pool: &PgPool) -> Result<Vec<Node>, Error> {
    let rows: Vec<NodeRow> = sqlx::query_as(AssertSqlSafe(format!(
        r#"{} ORDER BY n."name" COLLATE "C", n."id" COLLATE "C""#,
        select_nodes()
    )))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Node::try_from).collect()
}

/// The node with this id.
pub async fn get(pool: &PgPool, id: &str) -> Result<Node, Error> {
    let row: Option<NodeRow> = sqlx::query_as(AssertSqlSafe(format!(
        r#"{} WHERE n."id" = $1"#,
        select_nodes()
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => Node::try_from(row),
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
    let rows: Vec<InterfaceRow> = sqlx::query_as(
        r#"SELECT "name", "ifindex", "state", "rxBytes", "txBytes", "rxPackets", "txPackets",
                  "updatedAt", "kind", "defaultRoute",
                  "ipv4RxBytes", "ipv4TxBytes", "ipv6RxBytes", "ipv6TxBytes"
           FROM "interface_stats" WHERE "nodeId" = $1 ORDER BY "name" COLLATE "C""#,
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Interface::from).collect())
}

/// One row of `interface_stats` as [`interfaces`] selects it.
#[derive(sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
struct InterfaceRow {
    name: String,
    ifindex: i64,
    state: String,
    rx_bytes: i64,
    tx_bytes: i64,
    rx_packets: i64,
    tx_packets: i64,
    updated_at: NaiveDateTime,
    kind: String,
    default_route: bool,
    ipv4_rx_bytes: Option<i64>,
    ipv4_tx_bytes: Option<i64>,
    ipv6_rx_bytes: Option<i64>,
    ipv6_tx_bytes: Option<i64>,
}

impl From<InterfaceRow> for Interface {
    fn from(row: InterfaceRow) -> Self {
        let family = |rx, tx| match (rx, tx) {
            (Some(rx), Some(tx)) => Some(FamilyBytes { rx, tx }),
            _ => None,
        };
        Interface {
            name: row.name,
            ifindex: row.ifindex,
            state: row.state,
            rx_bytes: row.rx_bytes,
            tx_bytes: row.tx_bytes,
            rx_packets: row.rx_packets,
            tx_packets: row.tx_packets,
            updated_at: row.updated_at,
            kind: row.kind,
            default_route: row.default_route,
            ipv4: family(row.ipv4_rx_bytes, row.ipv4_tx_bytes),
            ipv6: family(row.ipv6_rx_bytes, row.ipv6_tx_bytes),
        }
    }
}

/// `(id, periodStart)` of one node (`Some(id)`) or of every node, by id.
pub async fn period_starts(
    pool: &PgPool,
    id: Option<&str>,
) -> Result<Vec<(String, NaiveDateTime)>, Error> {
    Ok(sqlx::query_as(
        r#"SELECT "nodeId", "periodStart" FROM "traffic_stats"
           WHERE $1::text IS NULL OR "nodeId" = $1
           ORDER BY "nodeId" COLLATE "C""#,
    )
    .bind(id)
    .fetch_all(pool)
    .await?)
}
