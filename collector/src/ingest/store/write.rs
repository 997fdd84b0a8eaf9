//! The statements of a batch: one per table, each over every updated node
//! of the batch (UNNEST of arrays), in node id order. The nodes' rows are
//! locked by [`super::apply`], so the values written are the in-memory
//! results of the batch's plan ([`crate::ingest::plan`]).

use std::collections::{BTreeMap, HashMap};

use sqlx::PgConnection;

use super::{BatchTime, Updated};
use crate::{
    accounting::CounterSet,
    billing::period::archive::{self, ClosedBy},
    events::Outbox,
    ingest::{
        plan::{HeldDelta, NodeState, NodeUpdate},
        signals::Signals,
    },
    quota,
    validate::{Heartbeat, Interface},
};

pub(super) async fn nodes(
    conn: &mut PgConnection,
    updated: &Updated<'_>,
    time: &BatchTime,
) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = updated.iter().map(|c| c.0.as_str()).collect();
    let last =
        |f: fn(&Heartbeat) -> &str| -> Vec<&str> { updated.iter().map(|c| f(c.2.last)).collect() };
    let load = |i: usize| -> Vec<f64> { updated.iter().map(|c| c.2.last.load[i]).collect() };
    let sets: Vec<&CounterSet> = updated.iter().map(|c| &c.2.last.reading.set).collect();
    let column =
        |f: fn(&NodeState) -> i64| -> Vec<i64> { updated.iter().map(|c| f(c.1)).collect() };
    sqlx::query(
        r#"UPDATE "nodes" AS n SET
             "hostname" = u.hostname, "kernel" = u.kernel,
             "agentVersion" = u.agent_version, "source" = u.source,
             "lastSeen" = $1, "load1" = u.load1, "load5" = u.load5, "load15" = u.load15,
             "bootId" = u.boot_id, "epoch" = u.epoch, "epochCreatedAt" = u.created,
             "lastSequence" = u.seq, "updatedAt" = $1,
             "interfacesUpdatedAt" = CASE WHEN u.refresh THEN $1 ELSE n."interfacesUpdatedAt" END,
             "positions" = u.positions::jsonb,
             "ipv4Upload" = n."ipv4Upload" + u.v4up, "ipv4Download" = n."ipv4Download" + u.v4down,
             "ipv6Upload" = n."ipv6Upload" + u.v6up, "ipv6Download" = n."ipv6Download" + u.v6down,
             "generation" = u.generation, "clockOffsetMs" = u.clock,
             "staleHeartbeats" = u.stale, "staleRun" = u.run, "lastStaleAt" = u.stale_at,
             "lastStaleReason" = u.reason
           FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::float8[], $8::float8[], $9::float8[],
                       $10::text[], $11::text[], $12::int8[], $13::int8[], $14::bool[],
                       $15::text[], $16::int8[], $17::int8[], $18::int8[], $19::int8[],
                       $20::int8[], $21::int8[], $22::int8[], $23::int4[],
                       $24::timestamp(3)[], $25::text[])
             AS u(id, hostname, kernel, agent_version, source, load1, load5, load15,
                  boot_id, epoch, created, seq, refresh,
                  positions, v4up, v4down, v6up, v6down,
                  generation, clock, stale, run, stale_at, reason)
           WHERE n."id" = u.id"#,
    )
    .bind(time.now)
    .bind(&ids)
    .bind(last(|h| &h.hostname))
    .bind(last(|h| &h.kernel))
    .bind(last(|h| &h.agent_version))
    .bind(last(|h| &h.source))
    .bind(load(0))
    .bind(load(1))
    .bind(load(2))
    .bind(sets.iter().map(|o| o.boot_id.as_str()).collect::<Vec<_>>())
    .bind(sets.iter().map(|o| o.epoch.as_str()).collect::<Vec<_>>())
    .bind(
        updated
            .iter()
            .map(|c| c.2.last.epoch_created_unix_ns)
            .collect::<Vec<_>>(),
    )
    .bind(
        updated
            .iter()
            .map(|c| c.2.last.reading.sequence)
            .collect::<Vec<_>>(),
    )
    .bind(
        updated
            .iter()
            .map(|c| c.2.refresh_interfaces)
            .collect::<Vec<_>>(),
    )
    .bind(
        updated
            .iter()
            .map(|c| {
                c.1.interfaces
                    .as_ref()
                    .and_then(|p| serde_json::to_string(p).ok())
            })
            .collect::<Vec<_>>(),
    )
    .bind(updated.iter().map(|c| c.2.ipv4.0).collect::<Vec<_>>())
    .bind(updated.iter().map(|c| c.2.ipv4.1).collect::<Vec<_>>())
    .bind(updated.iter().map(|c| c.2.ipv6.0).collect::<Vec<_>>())
    .bind(updated.iter().map(|c| c.2.ipv6.1).collect::<Vec<_>>())
    .bind(column(|n| n.position.generation))
    .bind(
        updated
            .iter()
            .map(|c| c.1.signals.clock_offset_ms)
            .collect::<Vec<_>>(),
    )
    .bind(column(|n| n.signals.stale_heartbeats))
    .bind(
        updated
            .iter()
            .map(|c| c.1.signals.stale_run)
            .collect::<Vec<_>>(),
    )
    .bind(
        updated
            .iter()
            .map(|c| c.1.signals.last_stale_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        updated
            .iter()
            .map(|c| c.1.signals.last_stale_reason.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn traffic(
    conn: &mut PgConnection,
    updated: &Updated<'_>,
    time: &BatchTime,
) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = updated.iter().map(|c| c.0.as_str()).collect();
    let column =
        |f: fn(&NodeState) -> i64| -> Vec<i64> { updated.iter().map(|c| f(c.1)).collect() };
    sqlx::query(
        r#"UPDATE "traffic_stats" AS t SET
             "totalUpload" = u.total_up, "totalDownload" = u.total_down,
             "periodUpload" = u.period_up, "periodDownload" = u.period_down,
             "periodStart" = u.period_start,
             "lastRxBytes" = u.rx, "lastTxBytes" = u.tx, "updatedAt" = $1
           FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
                       $7::timestamp(3)[], $8::int8[], $9::int8[])
             AS u(id, total_up, total_down, period_up, period_down, period_start, rx, tx)
           WHERE t."nodeId" = u.id"#,
    )
    .bind(time.now)
    .bind(&ids)
    .bind(column(|n| n.total_upload))
    .bind(column(|n| n.total_download))
    .bind(column(|n| n.period_upload))
    .bind(column(|n| n.period_download))
    .bind(updated.iter().map(|c| c.1.period_start).collect::<Vec<_>>())
    .bind(column(|n| n.position.rx))
    .bind(column(|n| n.position.tx))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn history(
    conn: &mut PgConnection,
    updated: &Updated<'_>,
    time: &BatchTime,
) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = updated.iter().map(|c| c.0.as_str()).collect();
    let load = |i: usize| -> Vec<f64> { updated.iter().map(|c| c.2.last.load[i]).collect() };
    sqlx::query(
        r#"INSERT INTO "node_history"
             ("nodeId", "bucket", "upload", "download", "load1", "load5", "load15", "heartbeats")
           SELECT u.id, $1, u.up, u.down, u.l1, u.l5, u.l15, u.n
           FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::float8[], $6::float8[],
                       $7::float8[], $8::int4[]) AS u(id, up, down, l1, l5, l15, n)
           ON CONFLICT ("nodeId", "bucket") DO UPDATE SET
             "upload" = "node_history"."upload" + EXCLUDED."upload",
             "download" = "node_history"."download" + EXCLUDED."download",
             "load1" = EXCLUDED."load1", "load5" = EXCLUDED."load5",
             "load15" = EXCLUDED."load15",
             "heartbeats" = "node_history"."heartbeats" + EXCLUDED."heartbeats""#,
    )
    .bind(time.bucket())
    .bind(&ids)
    .bind(updated.iter().map(|c| c.2.upload).collect::<Vec<_>>())
    .bind(updated.iter().map(|c| c.2.download).collect::<Vec<_>>())
    .bind(load(0))
    .bind(load(1))
    .bind(load(2))
    .bind(updated.iter().map(|c| c.2.heartbeats).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn interfaces(
    conn: &mut PgConnection,
    updated: &Updated<'_>,
    time: &BatchTime,
) -> Result<(), sqlx::Error> {
    // One row per node and name: entries that share a name (an interface
    // gone, and a new one that took its name) are added up.
    let refreshed: Vec<_> = updated.iter().filter(|c| c.2.refresh_interfaces).collect();
    if refreshed.is_empty() {
        return Ok(());
    }
    let mut merged: BTreeMap<(&str, &str), Interface> = BTreeMap::new();
    for (id, _, update) in &refreshed {
        for interface in &update.last.interfaces {
            merged
                .entry((id.as_str(), interface.name.as_str()))
                .and_modify(|row| row.merge(interface))
                .or_insert_with(|| interface.clone());
        }
    }
    let rows: Vec<(&str, &Interface)> = merged.iter().map(|((id, _), i)| (*id, i)).collect();
    let column = |f: fn(&Interface) -> i64| -> Vec<i64> { rows.iter().map(|r| f(r.1)).collect() };
    let family = |f: fn(&Interface) -> Option<i64>| -> Vec<Option<i64>> {
        rows.iter().map(|r| f(r.1)).collect()
    };
    // Loopback rows are shown, never counted: no history of theirs.
    let counted: Vec<(&str, &Interface)> =
        rows.iter().filter(|r| !r.1.loopback()).copied().collect();
    interface_history(conn, &refreshed, &counted, time).await?;
    sqlx::query(
        r#"INSERT INTO "interface_stats"
             ("nodeId", "name", "ifindex", "state", "rxBytes", "rxPackets", "txBytes",
              "txPackets", "updatedAt", "kind", "defaultRoute", "ipv4RxBytes", "ipv4TxBytes",
              "ipv6RxBytes", "ipv6TxBytes")
           SELECT u.id, u.name, u.ifindex, u.state, u.rxb, u.rxp, u.txb, u.txp, $1,
                  u.kind, u.route, u.rx4, u.tx4, u.rx6, u.tx6
           FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::text[], $6::int8[],
                       $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::bool[],
                       $12::int8[], $13::int8[], $14::int8[], $15::int8[])
             AS u(id, name, ifindex, state, rxb, rxp, txb, txp, kind, route,
                  rx4, tx4, rx6, tx6)
           ON CONFLICT ("nodeId", "name") DO UPDATE SET
             "ifindex" = EXCLUDED."ifindex", "state" = EXCLUDED."state",
             "rxBytes" = EXCLUDED."rxBytes", "rxPackets" = EXCLUDED."rxPackets",
             "txBytes" = EXCLUDED."txBytes", "txPackets" = EXCLUDED."txPackets",
             "updatedAt" = EXCLUDED."updatedAt", "kind" = EXCLUDED."kind",
             "defaultRoute" = EXCLUDED."defaultRoute",
             "ipv4RxBytes" = EXCLUDED."ipv4RxBytes", "ipv4TxBytes" = EXCLUDED."ipv4TxBytes",
             "ipv6RxBytes" = EXCLUDED."ipv6RxBytes", "ipv6TxBytes" = EXCLUDED."ipv6TxBytes""#,
    )
    .bind(time.now)
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.name.as_str()).collect::<Vec<_>>())
    .bind(column(|i| i.ifindex))
    .bind(rows.iter().map(|r| r.1.state).collect::<Vec<_>>())
    .bind(column(|i| i.rx_bytes))
    .bind(column(|i| i.rx_packets))
    .bind(column(|i| i.tx_bytes))
    .bind(column(|i| i.tx_packets))
    .bind(rows.iter().map(|r| r.1.kind).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.default_route).collect::<Vec<_>>())
    .bind(family(|i| i.ipv4.map(|f| f.rx_bytes)))
    .bind(family(|i| i.ipv4.map(|f| f.tx_bytes)))
    .bind(family(|i| i.ipv6.map(|f| f.rx_bytes)))
    .bind(family(|i| i.ipv6.map(|f| f.tx_bytes)))
    .execute(&mut *conn)
    .await?;
    // Interfaces the nodes no longer report (a new epoch, a folded entry).
    let ids: Vec<&str> = refreshed.iter().map(|c| c.0.as_str()).collect();
    sqlx::query(r#"DELETE FROM "interface_stats" WHERE "nodeId" = ANY($1) AND "updatedAt" < $2"#)
        .bind(&ids)
        .bind(time.now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Adds each refreshed interface's traffic since its previous row to the
/// minute's `interface_history`: the difference of the raw counters within
/// an epoch; in a new epoch, the counters in full when they started at
/// zero (else they are a baseline, and nothing is added). A node has rows
/// for at most `time.max_interface_names` names in one minute: a name past
/// that (a node making up names) gets none, so that history cannot be
/// flooded; its traffic is in the node's totals all the same.
async fn interface_history(
    conn: &mut PgConnection,
    refreshed: &[&(&String, &NodeState<'_>, &NodeUpdate<'_>)],
    rows: &[(&str, &Interface)],
    time: &BatchTime,
) -> Result<(), sqlx::Error> {
    // Per node: (new epoch, its counters start at zero).
    let fresh: HashMap<&str, (bool, bool)> = refreshed
        .iter()
        .map(|c| {
            let reading = &c.2.last.reading;
            (c.0.as_str(), (c.2.new_epoch, reading.starts_at_zero))
        })
        .collect();
    let flag = |i: usize| -> Vec<bool> {
        rows.iter()
            .map(|r| {
                fresh
                    .get(r.0)
                    .is_some_and(|f| if i == 0 { f.0 } else { f.1 })
            })
            .collect()
    };
    let ids: Vec<&str> = rows.iter().map(|r| r.0).collect();
    sqlx::query(
        r#"INSERT INTO "interface_history" ("nodeId", "name", "bucket", "rxBytes", "txBytes")
           SELECT e.id, e.name, $1, e.rx, e.tx FROM (
             SELECT d.*,
               CASE WHEN d.present THEN 0
                    ELSE row_number() OVER (PARTITION BY d.id, d.present ORDER BY d.name)
               END AS added
             FROM (
               SELECT u.id, u.name, h."name" IS NOT NULL AS present,
                 CASE WHEN u.fresh OR s."rxBytes" IS NULL
                        THEN CASE WHEN u.zero OR NOT u.fresh THEN u.rxb ELSE 0 END
                      ELSE GREATEST(u.rxb - s."rxBytes", 0) END AS rx,
                 CASE WHEN u.fresh OR s."txBytes" IS NULL
                        THEN CASE WHEN u.zero OR NOT u.fresh THEN u.txb ELSE 0 END
                      ELSE GREATEST(u.txb - s."txBytes", 0) END AS tx
               FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::int8[], $6::bool[],
                           $7::bool[])
                 AS u(id, name, rxb, txb, fresh, zero)
               LEFT JOIN "interface_stats" s ON s."nodeId" = u.id AND s."name" = u.name
               LEFT JOIN "interface_history" h
                 ON h."nodeId" = u.id AND h."bucket" = $1 AND h."name" = u.name
             ) d
             WHERE d.rx > 0 OR d.tx > 0
           ) e
           LEFT JOIN (
             SELECT "nodeId", count(*) AS names FROM "interface_history"
             WHERE "bucket" = $1 AND "nodeId" = ANY($2)
             GROUP BY "nodeId"
           ) c ON c."nodeId" = e.id
           WHERE e.added = 0 OR COALESCE(c.names, 0) + e.added <= $8
           ON CONFLICT ("nodeId", "bucket", "name") DO UPDATE SET
             "rxBytes" = "interface_history"."rxBytes" + EXCLUDED."rxBytes",
             "txBytes" = "interface_history"."txBytes" + EXCLUDED."txBytes""#,
    )
    .bind(time.bucket())
    .bind(&ids)
    .bind(rows.iter().map(|r| r.1.name.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.rx_bytes).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.tx_bytes).collect::<Vec<_>>())
    .bind(flag(0))
    .bind(flag(1))
    .bind(time.max_interface_names)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Archives the periods that ended in this batch, with their rates.
pub(super) async fn closed_periods(
    conn: &mut PgConnection,
    updated: &Updated<'_>,
    time: &BatchTime,
) -> Result<(), sqlx::Error> {
    for (id, _, update) in updated {
        for period in &update.closed {
            // Its rates come later (the upkeep), outside the batch's locks.
            archive::insert(
                conn,
                id,
                (period.start, period.end),
                (period.upload, period.download),
                period.mode,
                ClosedBy::Schedule,
                time.now,
            )
            .await?;
        }
    }
    Ok(())
}

/// Records the deltas held as anomalies in this batch.
pub(super) async fn anomalies(
    conn: &mut PgConnection,
    updated: &Updated<'_>,
    time: &BatchTime,
) -> Result<(), sqlx::Error> {
    let held: Vec<(&str, &HeldDelta)> = updated
        .iter()
        .flat_map(|(id, _, update)| update.held.iter().map(|h| (id.as_str(), h)))
        .collect();
    if held.is_empty() {
        return Ok(());
    }
    for (id, hold) in &held {
        tracing::warn!(
            node = %id,
            interface = %hold.held.name,
            upload = hold.held.upload,
            download = hold.held.download,
            limit = hold.held.limit,
            elapsed_ms = hold.elapsed_ms,
            "delta larger than the interface can carry: held as an anomaly"
        );
    }
    sqlx::query(
        r#"INSERT INTO "anomalies" ("nodeId", "interface", "ifindex", "detectedAt", "upload",
             "download", "elapsedMs", "limitBytes", "periodStart")
           SELECT u.id, u.name, u.ifindex, $1, u.up, u.down, u.elapsed, u.lim, u.period
           FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[],
                       $7::int8[], $8::int8[], $9::timestamp(3)[])
             AS u(id, name, ifindex, up, down, elapsed, lim, period)"#,
    )
    .bind(time.now)
    .bind(held.iter().map(|h| h.0).collect::<Vec<_>>())
    .bind(
        held.iter()
            .map(|h| h.1.held.name.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(held.iter().map(|h| h.1.held.ifindex).collect::<Vec<_>>())
    .bind(held.iter().map(|h| h.1.held.upload).collect::<Vec<_>>())
    .bind(held.iter().map(|h| h.1.held.download).collect::<Vec<_>>())
    .bind(held.iter().map(|h| h.1.elapsed_ms).collect::<Vec<_>>())
    .bind(held.iter().map(|h| h.1.held.limit).collect::<Vec<_>>())
    .bind(held.iter().map(|h| h.1.period_start).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the quota thresholds crossed in this batch (no statement when
/// none was).
pub(super) async fn quota_crossings(
    conn: &mut PgConnection,
    updated: &Updated<'_>,
    time: &BatchTime,
    outbox: &mut Outbox,
) -> Result<(), sqlx::Error> {
    let crossings: Vec<quota::Crossing> = updated
        .iter()
        .flat_map(|c| c.2.crossings.iter().cloned())
        .collect();
    if crossings.is_empty() {
        return Ok(());
    }
    quota::record(conn, &crossings, outbox, &time.quota).await?;
    Ok(())
}

/// Writes the signals of nodes whose traffic the batch did not change
/// (those whose traffic it updated get them with the `nodes` update).
pub(super) async fn signals(
    conn: &mut PgConnection,
    nodes: &[(&str, &Signals)],
) -> Result<(), sqlx::Error> {
    if nodes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        r#"UPDATE "nodes" AS n SET
             "clockOffsetMs" = u.clock, "staleHeartbeats" = u.stale, "staleRun" = u.run,
             "lastStaleAt" = u.stale_at, "lastStaleReason" = u.reason
           FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int4[], $5::timestamp(3)[],
                       $6::text[])
             AS u(id, clock, stale, run, stale_at, reason)
           WHERE n."id" = u.id"#,
    )
    .bind(nodes.iter().map(|n| n.0).collect::<Vec<_>>())
    .bind(
        nodes
            .iter()
            .map(|n| n.1.clock_offset_ms)
            .collect::<Vec<_>>(),
    )
    .bind(
        nodes
            .iter()
            .map(|n| n.1.stale_heartbeats)
            .collect::<Vec<_>>(),
    )
    .bind(nodes.iter().map(|n| n.1.stale_run).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.1.last_stale_at).collect::<Vec<_>>())
    .bind(
        nodes
            .iter()
            .map(|n| n.1.last_stale_reason.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}
