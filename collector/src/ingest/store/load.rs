//! The first step of applying a batch (**load** → plan → write): lock the
//! batch's nodes' rows (`nodes`, then `traffic_stats`, in id order, so
//! concurrent batches here or in another collector never deadlock) and read
//! them into [`NodeState`]s, typed rows with `FromRow`, and the counter sets
//! followed before where a heartbeat needs them.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use sqlx::PgConnection;

use super::counter_sets;
use crate::{
    accounting::{CounterSet, Followed, Position},
    billing::{self, Settings, Stored},
    ingest::{
        batch::{BatchTime, Job},
        entries::InterfacePositions,
        plan::NodeState,
        signals::Signals,
    },
};

/// A node's row joined with its traffic and its effective settings, as
/// locked for a batch.
#[derive(Debug, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
struct LockedRow {
    id: String,
    token_hash: String,
    previous_token_hash: Option<String>,
    previous_token_valid_until: Option<NaiveDateTime>,
    boot_id: Option<String>,
    epoch: Option<String>,
    generation: i64,
    last_sequence: Option<i64>,
    last_seen: Option<NaiveDateTime>,
    /// `nodes.positions` as text: decoded apart, so that a corrupt value is
    /// reported for its node instead of failing the whole batch.
    positions: Option<String>,
    clock_offset_ms: Option<i64>,
    stale_heartbeats: i64,
    stale_run: i32,
    last_stale_at: Option<NaiveDateTime>,
    last_stale_reason: Option<String>,
    last_rx_bytes: Option<i64>,
    last_tx_bytes: Option<i64>,
    total_upload: i64,
    total_download: i64,
    period_upload: i64,
    period_download: i64,
    period_start: NaiveDateTime,
    interfaces_updated_at: Option<NaiveDateTime>,
    #[sqlx(flatten)]
    settings: Stored,
}

/// Locks the rows of the nodes `jobs` name and reads them, by node id
/// (nodes that do not exist are absent).
pub(super) async fn lock_nodes<'a>(
    conn: &mut PgConnection,
    jobs: &[Job],
    time: &BatchTime,
) -> Result<HashMap<String, NodeState<'a>>, sqlx::Error> {
    let mut ids: Vec<&str> = jobs
        .iter()
        .map(|j| j.credentials.node_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    // Only constants are formatted in.
    let rows: Vec<LockedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        r#"SELECT n."id", n."tokenHash", n."previousTokenHash", n."previousTokenValidUntil",
                  n."bootId", n."epoch", n."generation",
                  n."lastSequence", n."lastSeen", n."positions"::text AS "positions",
                  n."clockOffsetMs", n."staleHeartbeats", n."staleRun", n."lastStaleAt",
                  n."lastStaleReason",
                  t."lastRxBytes", t."lastTxBytes",
                  t."totalUpload", t."totalDownload", t."periodUpload",
                  t."periodDownload", t."periodStart",
                  n."interfacesUpdatedAt", {settings}
           FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id"
           {join}
           WHERE n."id" = ANY($1)
           ORDER BY n."id"
           FOR UPDATE OF n, t"#,
        settings = billing::SETTINGS_COLUMNS,
        join = billing::SETTINGS_JOIN,
    )))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.id.clone(), node_state(row, time)))
        .collect())
}

fn node_state<'a>(row: LockedRow, time: &BatchTime) -> NodeState<'a> {
    let set = match (row.boot_id, row.epoch) {
        (Some(boot_id), Some(epoch)) => Some(CounterSet { boot_id, epoch }),
        _ => None,
    };
    let (settings, unusable_settings) = match row.settings.resolve(time.fallback_day) {
        Ok(settings) => (settings, None),
        Err(error) => {
            tracing::error!(
                node = %row.id,
                %error,
                "unusable billing settings; the node's heartbeats are refused (UNAVAILABLE) until they are fixed"
            );
            (Settings::default(), Some(error.to_string()))
        }
    };
    NodeState {
        keys: crate::auth::NodeKeys {
            current: row.token_hash,
            previous: row.previous_token_hash.zip(row.previous_token_valid_until),
        },
        settings,
        unusable_settings,
        position: Position {
            set,
            generation: row.generation,
            sequence: row.last_sequence.unwrap_or(0),
            rx: row.last_rx_bytes.unwrap_or(0),
            tx: row.last_tx_bytes.unwrap_or(0),
        },
        followed: Followed::default(),
        signals: Signals {
            clock_offset_ms: row.clock_offset_ms,
            stale_heartbeats: row.stale_heartbeats,
            stale_run: row.stale_run,
            last_stale_at: row.last_stale_at,
            last_stale_reason: row.last_stale_reason,
            changed: false,
        },
        interfaces: row
            .positions
            .as_deref()
            .and_then(|text| interface_positions(&row.id, text)),
        last_seen: row.last_seen,
        total_upload: row.total_upload,
        total_download: row.total_download,
        period_upload: row.period_upload,
        period_download: row.period_download,
        period_start: row.period_start,
        interfaces_at: row.interfaces_updated_at,
        update: None,
    }
}

/// Decodes a node's stored per-interface positions. Ones that do not
/// decode (written by hand, or by a collector with another format) are
/// reported and not used: the node's next heartbeat counts as if none were
/// stored (its summed delta, by [`crate::ingest::entries::Previous::Unknown`])
/// and stores readable ones.
fn interface_positions(node_id: &str, text: &str) -> Option<InterfacePositions> {
    match serde_json::from_str(text) {
        Ok(positions) => Some(positions),
        Err(error) => {
            tracing::warn!(
                node = %node_id,
                %error,
                "the node's stored per-interface positions are corrupt: not used (its next \
                 heartbeat counts by its summed counters, and stores them anew)"
            );
            None
        }
    }
}

/// Loads the counter sets followed before for the nodes that have a
/// heartbeat in `jobs` of another set than the one they follow.
pub(super) async fn load_followed(
    conn: &mut PgConnection,
    jobs: &[Job],
    nodes: &mut HashMap<String, NodeState<'_>>,
) -> Result<(), sqlx::Error> {
    let mut ids: Vec<&str> = jobs
        .iter()
        .filter(|job| {
            nodes
                .get(&job.credentials.node_id)
                .is_some_and(|node| node.position.set.as_ref() != Some(&job.heartbeat.reading.set))
        })
        .map(|job| job.credentials.node_id.as_str())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    for (id, followed) in counter_sets::load(conn, &ids).await? {
        if let Some(node) = nodes.get_mut(&id) {
            node.followed = Followed::new(followed);
        }
    }
    Ok(())
}
