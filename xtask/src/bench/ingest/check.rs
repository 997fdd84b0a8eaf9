//! The exact-accounting check, after the agents stopped: each node's
//! counters started at zero in one epoch, so what PostgreSQL holds must be
//! exactly what the node's last heartbeat acknowledged as applied carried:
//!
//! - `traffic_stats`: totalDownload = the sum of its rx bytes, totalUpload
//!   = the sum of its tx bytes, the period counters the same (no reset ran),
//!   lastRxBytes / lastTxBytes the same sums;
//! - `nodes.lastSequence` = its sequence;
//! - `node_history`: the deltas of all minutes add up to the totals, and the
//!   heartbeats counted there to the sequence (every sequence from 1 on was
//!   applied exactly once: nothing lost, nothing counted twice);
//! - `interface_stats`: one row per interface, adding up to at most the sums
//!   (they are rewritten at most every ten seconds).

use std::collections::HashMap;

use anyhow::Context as _;
use sqlx::{PgPool, Row as _};

use super::agents::{Acked, INTERFACES};

/// How many mismatches the report quotes.
const QUOTED: usize = 5;

pub(super) struct Check {
    pub(super) nodes: usize,
    /// Nodes whose stored counters differ from what was acknowledged.
    pub(super) mismatched: usize,
    /// Nodes whose agent gave up on a heartbeat (nothing to compare with).
    pub(super) unresolved: usize,
    /// The first few differences, as text.
    pub(super) quoted: Vec<String>,
    /// All nodes' stored download and upload totals.
    pub(super) download: u128,
    pub(super) upload: u128,
    /// Heartbeats counted in `node_history`, all nodes.
    pub(super) history_heartbeats: u64,
}

impl Check {
    pub(super) fn is_exact(&self) -> bool {
        self.mismatched == 0 && self.unresolved == 0
    }
}

/// What is stored of one node.
struct Stored {
    last_sequence: i64,
    total: (i64, i64),
    period: (i64, i64),
    last_raw: (i64, i64),
    history: (i64, i64),
    history_heartbeats: i64,
    interfaces: (i64, i64, i64),
}

pub(super) async fn run(pool: &PgPool, acked: &[Acked]) -> anyhow::Result<Check> {
    let stored = read(pool).await?;
    let mut check = Check {
        nodes: acked.len(),
        mismatched: 0,
        unresolved: 0,
        quoted: Vec::new(),
        download: 0,
        upload: 0,
        history_heartbeats: 0,
    };
    for node in acked {
        if let Some(why) = &node.unresolved {
            check.unresolved += 1;
            if check.quoted.len() < QUOTED {
                check.quoted.push(format!("unverifiable: {why}"));
            }
            continue;
        }
        let differences = match stored.get(&node.node_id) {
            Some(s) => {
                check.download += u128::try_from(s.total.1).unwrap_or(0);
                check.upload += u128::try_from(s.total.0).unwrap_or(0);
                check.history_heartbeats += u64::try_from(s.history_heartbeats).unwrap_or(0);
                differences(node, s)
            }
            None => vec!["no nodes/traffic_stats row".to_owned()],
        };
        if !differences.is_empty() {
            check.mismatched += 1;
            if check.quoted.len() < QUOTED {
                check
                    .quoted
                    .push(format!("node {}: {}", node.node_id, differences.join("; ")));
            }
        }
    }
    Ok(check)
}

/// How what is stored differs from what was acknowledged (empty: it does not).
fn differences(node: &Acked, s: &Stored) -> Vec<String> {
    let want = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let (rx, tx, seq) = (want(node.rx()), want(node.tx()), want(node.sequence));
    let applied_any = node.sequence > 0;
    let interfaces = if applied_any { INTERFACES as i64 } else { 0 };
    let mut out = Vec::new();
    let mut expect = |what: &str, stored: (i64, i64), wanted: (i64, i64)| {
        if stored != wanted {
            out.push(format!("{what} stored {stored:?}, acknowledged {wanted:?}"));
        }
    };
    expect("total (upload, download)", s.total, (tx, rx));
    expect("period (upload, download)", s.period, (tx, rx));
    expect("history sums (upload, download)", s.history, (tx, rx));
    expect("last raw (rx, tx)", s.last_raw, (rx, tx));
    // Per-interface rows are rewritten at most every INTERFACE_REFRESH:
    // they may lag the totals, never lead them.
    if s.interfaces.0 > rx || s.interfaces.1 > tx {
        out.push(format!(
            "interface rows (rx, tx) {:?} above the acknowledged sums {:?}",
            (s.interfaces.0, s.interfaces.1),
            (rx, tx)
        ));
    }
    if s.interfaces.2 != interfaces {
        out.push(format!(
            "{} interface rows, acknowledged {interfaces}",
            s.interfaces.2
        ));
    }
    if s.last_sequence != seq {
        out.push(format!(
            "lastSequence {}, acknowledged {seq}",
            s.last_sequence
        ));
    }
    if s.history_heartbeats != seq {
        out.push(format!(
            "{} heartbeats in history, {seq} applied",
            s.history_heartbeats
        ));
    }
    out
}

async fn read(pool: &PgPool) -> anyhow::Result<HashMap<String, Stored>> {
    let rows = sqlx::query(
        r#"SELECT n."id", COALESCE(n."lastSequence", 0) AS seq,
                  t."totalUpload", t."totalDownload", t."periodUpload", t."periodDownload",
                  COALESCE(t."lastRxBytes", 0) AS last_rx, COALESCE(t."lastTxBytes", 0) AS last_tx,
                  COALESCE(h.up, 0)::int8 AS h_up, COALESCE(h.down, 0)::int8 AS h_down,
                  COALESCE(h.beats, 0)::int8 AS h_beats,
                  COALESCE(i.rx, 0)::int8 AS i_rx, COALESCE(i.tx, 0)::int8 AS i_tx,
                  COALESCE(i.n, 0)::int8 AS i_n
           FROM "nodes" n
           JOIN "traffic_stats" t ON t."nodeId" = n."id"
           LEFT JOIN (SELECT "nodeId", sum("upload") AS up, sum("download") AS down,
                             sum("heartbeats") AS beats
                      FROM "node_history" GROUP BY "nodeId") h ON h."nodeId" = n."id"
           LEFT JOIN (SELECT "nodeId", sum("rxBytes") AS rx, sum("txBytes") AS tx,
                             count(*) AS n
                      FROM "interface_stats" GROUP BY "nodeId") i ON i."nodeId" = n."id""#,
    )
    .fetch_all(pool)
    .await
    .context("cannot read the stored counters")?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("id")?,
                Stored {
                    last_sequence: row.try_get("seq")?,
                    total: (row.try_get("totalUpload")?, row.try_get("totalDownload")?),
                    period: (row.try_get("periodUpload")?, row.try_get("periodDownload")?),
                    last_raw: (row.try_get("last_rx")?, row.try_get("last_tx")?),
                    history: (row.try_get("h_up")?, row.try_get("h_down")?),
                    history_heartbeats: row.try_get("h_beats")?,
                    interfaces: (
                        row.try_get("i_rx")?,
                        row.try_get("i_tx")?,
                        row.try_get("i_n")?,
                    ),
                },
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("unexpected stored counters")
}
