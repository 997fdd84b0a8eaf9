//! Applies a batch of heartbeats in one transaction: lock the nodes' rows
//! (in id order, so concurrent batches, here or in another collector, never
//! deadlock), check each heartbeat's token, decide with
//! [`accounting::decide`] against the locked raw values, then write every
//! change with one statement per table. Each applied heartbeat (and each
//! scheduled period reset it brings) is announced as a live event with the
//! node's traffic after it, by one NOTIFY statement in the same transaction
//! ([`events`]). A heartbeat's reply is sent only after the commit; if
//! anything fails, nothing of the batch is stored or announced and every
//! heartbeat in it gets a retryable error.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use chrono::{NaiveDateTime, Timelike as _};
use sqlx::{PgConnection, Row as _};
use tally_proto::v1::Outcome;

use crate::{
    accounting::{self, Decision, Origin, Position},
    auth::{self, Credentials},
    error::Error,
    events::{self, Notice, Outbox},
    validate::{Heartbeat, Interface},
};

/// One heartbeat to apply, with the credentials it came with.
#[derive(Debug, Clone)]
pub struct Job {
    pub credentials: Credentials,
    pub heartbeat: Heartbeat,
}

/// What happened to one heartbeat of a committed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// The last sequence applied for the heartbeat's epoch (0 when none).
    pub sequence: i64,
}

/// The clock the batch is written with (truncated to the millisecond, the
/// precision of the seed's TIMESTAMP(3) columns), and the latest scheduled
/// period start, if there is a schedule.
#[derive(Debug, Clone, Copy)]
pub struct BatchTime {
    pub now: NaiveDateTime,
    pub period_boundary: Option<NaiveDateTime>,
}

impl BatchTime {
    pub fn new(now: NaiveDateTime, period_boundary: Option<NaiveDateTime>) -> Self {
        let now = now
            .with_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
            .unwrap_or(now);
        Self {
            now,
            period_boundary,
        }
    }

    fn bucket(&self) -> NaiveDateTime {
        self.now
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(self.now)
    }
}

/// How often a node's per-interface rows are rewritten at most (sooner when
/// its counters start a new epoch). They are informational: the totals are
/// written with every heartbeat, and rewriting one row per interface per
/// heartbeat was a third of the database's work per batch.
pub const INTERFACE_REFRESH: Duration = Duration::from_secs(10);

/// A node as locked for the batch, and what the batch does to it.
struct Node<'a> {
    token_hash: String,
    position: Position,
    total_upload: i64,
    total_download: i64,
    period_upload: i64,
    period_download: i64,
    period_start: NaiveDateTime,
    interfaces_at: Option<NaiveDateTime>,
    change: Option<Change<'a>>,
}

/// The changes of applied heartbeats, accumulated per node.
struct Change<'a> {
    upload: i64,
    download: i64,
    heartbeats: i32,
    reset_period: bool,
    /// Rewrite the node's per-interface rows.
    refresh_interfaces: bool,
    /// A heartbeat of the batch started a new epoch: the per-interface rows
    /// hold the previous epoch's counters.
    new_epoch: bool,
    last: &'a Heartbeat,
}

/// Applies `jobs` in one transaction on `conn`. The outer `Err` means the
/// transaction failed and nothing was stored.
pub async fn apply(
    conn: &mut PgConnection,
    jobs: &[Job],
    time: BatchTime,
) -> Result<Vec<Result<Applied, Error>>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let mut nodes = lock_nodes(&mut tx, jobs).await?;
    let mut outbox = Outbox::new();
    let results = jobs
        .iter()
        .map(|job| decide(&mut nodes, job, &time, &mut outbox))
        .collect();
    let changed: Vec<(&String, &Node, &Change)> = {
        let mut changed: Vec<_> = nodes
            .iter()
            .filter_map(|(id, node)| node.change.as_ref().map(|c| (id, node, c)))
            .collect();
        changed.sort_by(|a, b| a.0.cmp(b.0));
        changed
    };
    if !changed.is_empty() {
        write_nodes(&mut tx, &changed, &time).await?;
        write_traffic(&mut tx, &changed, &time).await?;
        write_history(&mut tx, &changed, &time).await?;
        write_interfaces(&mut tx, &changed, &time).await?;
        outbox.send(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(results)
}

async fn lock_nodes<'a>(
    conn: &mut PgConnection,
    jobs: &[Job],
) -> Result<HashMap<String, Node<'a>>, sqlx::Error> {
    let mut ids: Vec<&str> = jobs
        .iter()
        .map(|j| j.credentials.node_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = sqlx::query(
        r#"SELECT n."id", n."tokenHash", n."bootId", n."epoch", n."epochCreatedAt",
                  n."lastSequence", t."lastRxBytes", t."lastTxBytes",
                  t."totalUpload", t."totalDownload", t."periodUpload",
                  t."periodDownload", t."periodStart",
                  n."interfacesUpdatedAt"
           FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id"
           WHERE n."id" = ANY($1)
           ORDER BY n."id"
           FOR UPDATE OF n, t"#,
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let origin = match (
                row.try_get::<Option<String>, _>("bootId")?,
                row.try_get::<Option<String>, _>("epoch")?,
                row.try_get::<Option<i64>, _>("epochCreatedAt")?,
            ) {
                (Some(boot_id), Some(epoch), Some(created_unix_ns)) => Some(Origin {
                    boot_id,
                    epoch,
                    created_unix_ns,
                }),
                _ => None,
            };
            let node = Node {
                token_hash: row.try_get("tokenHash")?,
                position: Position {
                    origin,
                    sequence: row.try_get::<Option<i64>, _>("lastSequence")?.unwrap_or(0),
                    rx: row.try_get::<Option<i64>, _>("lastRxBytes")?.unwrap_or(0),
                    tx: row.try_get::<Option<i64>, _>("lastTxBytes")?.unwrap_or(0),
                },
                total_upload: row.try_get("totalUpload")?,
                total_download: row.try_get("totalDownload")?,
                period_upload: row.try_get("periodUpload")?,
                period_download: row.try_get("periodDownload")?,
                period_start: row.try_get("periodStart")?,
                interfaces_at: row.try_get("interfacesUpdatedAt")?,
                change: None,
            };
            Ok((row.try_get("id")?, node))
        })
        .collect()
}

/// Decides one job against its (locked, in-memory) node, records the
/// change and adds its events to `outbox`. Refusals change nothing.
fn decide<'a>(
    nodes: &mut HashMap<String, Node<'a>>,
    job: &'a Job,
    time: &BatchTime,
    outbox: &mut Outbox,
) -> Result<Applied, Error> {
    // The same answer for an unknown node and a wrong secret.
    let refused = || Error::Unauthenticated("unknown node or wrong token");
    let node = nodes
        .get_mut(&job.credentials.node_id)
        .ok_or_else(refused)?;
    if !auth::matches(&job.credentials, &node.token_hash) {
        return Err(refused());
    }
    let reading = &job.heartbeat.reading;
    let same_origin = node.position.origin.as_ref() == Some(&reading.origin);
    let (download, upload, new_origin) = match accounting::decide(&node.position, reading) {
        Decision::Apply {
            download,
            upload,
            new_origin,
        } => (download, upload, new_origin),
        Decision::Duplicate => {
            return Ok(Applied {
                outcome: Outcome::Duplicate,
                sequence: node.position.sequence,
            });
        }
        Decision::Stale => {
            return Ok(Applied {
                outcome: Outcome::Stale,
                sequence: if same_origin {
                    node.position.sequence
                } else {
                    0
                },
            });
        }
        Decision::Backwards { what, last, now } => {
            return Err(Error::Backwards {
                what,
                epoch: reading.origin.epoch.clone(),
                last,
                now,
            });
        }
    };
    // A scheduled reset zeroes the period before the batch's deltas, as
    // `write_traffic` does.
    let reset_to = time
        .period_boundary
        .filter(|boundary| node.period_start < *boundary);
    let due = reset_to.is_some();
    let (period_upload, period_download) = if due {
        (0, 0)
    } else {
        (node.period_upload, node.period_download)
    };
    let sum = |a: i64, b: i64, what| a.checked_add(b).ok_or(Error::TotalOverflow(what));
    let total_upload = sum(node.total_upload, upload, "upload")?;
    let total_download = sum(node.total_download, download, "download")?;
    let period_upload = sum(period_upload, upload, "period upload")?;
    let period_download = sum(period_download, download, "period download")?;
    let node_id = job.credentials.node_id.as_str();
    if let Some(boundary) = reset_to {
        node.period_upload = 0;
        node.period_download = 0;
        node.period_start = boundary;
        outbox.push(&Notice::PeriodReset {
            node_id,
            traffic: node.traffic(),
        });
    }
    node.total_upload = total_upload;
    node.total_download = total_download;
    node.period_upload = period_upload;
    node.period_download = period_download;
    node.position.advance(reading);
    let [one, five, fifteen] = job.heartbeat.load;
    outbox.push(&Notice::Heartbeat {
        node_id,
        last_seen: time.now,
        load: events::Load { one, five, fifteen },
        traffic: node.traffic(),
    });
    let refresh = new_origin
        || node
            .interfaces_at
            .is_none_or(|at| (time.now - at).to_std().unwrap_or_default() >= INTERFACE_REFRESH);
    let change = node.change.get_or_insert(Change {
        upload: 0,
        download: 0,
        heartbeats: 0,
        reset_period: due,
        refresh_interfaces: false,
        new_epoch: false,
        last: &job.heartbeat,
    });
    change.upload += upload;
    change.download += download;
    change.heartbeats += 1;
    change.refresh_interfaces |= refresh;
    change.new_epoch |= new_origin;
    change.last = &job.heartbeat;
    Ok(Applied {
        outcome: Outcome::Applied,
        sequence: reading.sequence,
    })
}

impl Node<'_> {
    /// The traffic as the batch leaves it so far.
    fn traffic(&self) -> events::Traffic {
        events::Traffic {
            total_upload: self.total_upload,
            total_download: self.total_download,
            period_upload: self.period_upload,
            period_download: self.period_download,
            period_start: self.period_start,
        }
    }
}

type Changed<'a> = [(&'a String, &'a Node<'a>, &'a Change<'a>)];

async fn write_nodes(
    conn: &mut PgConnection,
    changed: &Changed<'_>,
    time: &BatchTime,
) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = changed.iter().map(|c| c.0.as_str()).collect();
    let last =
        |f: fn(&Heartbeat) -> &str| -> Vec<&str> { changed.iter().map(|c| f(c.2.last)).collect() };
    let load = |i: usize| -> Vec<f64> { changed.iter().map(|c| c.2.last.load[i]).collect() };
    let origins: Vec<&Origin> = changed.iter().map(|c| &c.2.last.reading.origin).collect();
    sqlx::query(
        r#"UPDATE "nodes" AS n SET
             "hostname" = u.hostname, "kernel" = u.kernel,
             "agentVersion" = u.agent_version, "source" = u.source,
             "lastSeen" = $1, "load1" = u.load1, "load5" = u.load5, "load15" = u.load15,
             "bootId" = u.boot_id, "epoch" = u.epoch, "epochCreatedAt" = u.created,
             "lastSequence" = u.seq, "updatedAt" = $1,
             "interfacesUpdatedAt" = CASE WHEN u.refresh THEN $1 ELSE n."interfacesUpdatedAt" END
           FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::float8[], $8::float8[], $9::float8[],
                       $10::text[], $11::text[], $12::int8[], $13::int8[], $14::bool[])
             AS u(id, hostname, kernel, agent_version, source, load1, load5, load15,
                  boot_id, epoch, created, seq, refresh)
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
    .bind(
        origins
            .iter()
            .map(|o| o.boot_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(origins.iter().map(|o| o.epoch.as_str()).collect::<Vec<_>>())
    .bind(
        origins
            .iter()
            .map(|o| o.created_unix_ns)
            .collect::<Vec<_>>(),
    )
    .bind(
        changed
            .iter()
            .map(|c| c.2.last.reading.sequence)
            .collect::<Vec<_>>(),
    )
    .bind(
        changed
            .iter()
            .map(|c| c.2.refresh_interfaces)
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_traffic(
    conn: &mut PgConnection,
    changed: &Changed<'_>,
    time: &BatchTime,
) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = changed.iter().map(|c| c.0.as_str()).collect();
    let column = |f: fn(&Node, &Change) -> i64| -> Vec<i64> {
        changed.iter().map(|c| f(c.1, c.2)).collect()
    };
    sqlx::query(
        r#"UPDATE "traffic_stats" AS t SET
             "totalUpload" = t."totalUpload" + u.up,
             "totalDownload" = t."totalDownload" + u.down,
             "periodUpload" = CASE WHEN u.reset THEN u.up ELSE t."periodUpload" + u.up END,
             "periodDownload" = CASE WHEN u.reset THEN u.down ELSE t."periodDownload" + u.down END,
             "periodStart" = CASE WHEN u.reset THEN $2::timestamp(3) ELSE t."periodStart" END,
             "lastRxBytes" = u.rx, "lastTxBytes" = u.tx, "updatedAt" = $1
           FROM UNNEST($3::text[], $4::int8[], $5::int8[], $6::bool[], $7::int8[], $8::int8[])
             AS u(id, up, down, reset, rx, tx)
           WHERE t."nodeId" = u.id"#,
    )
    .bind(time.now)
    .bind(time.period_boundary)
    .bind(&ids)
    .bind(column(|_, c| c.upload))
    .bind(column(|_, c| c.download))
    .bind(changed.iter().map(|c| c.2.reset_period).collect::<Vec<_>>())
    .bind(column(|n, _| n.position.rx))
    .bind(column(|n, _| n.position.tx))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_history(
    conn: &mut PgConnection,
    changed: &Changed<'_>,
    time: &BatchTime,
) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = changed.iter().map(|c| c.0.as_str()).collect();
    let load = |i: usize| -> Vec<f64> { changed.iter().map(|c| c.2.last.load[i]).collect() };
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
    .bind(changed.iter().map(|c| c.2.upload).collect::<Vec<_>>())
    .bind(changed.iter().map(|c| c.2.download).collect::<Vec<_>>())
    .bind(load(0))
    .bind(load(1))
    .bind(load(2))
    .bind(changed.iter().map(|c| c.2.heartbeats).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn write_interfaces(
    conn: &mut PgConnection,
    changed: &Changed<'_>,
    time: &BatchTime,
) -> Result<(), sqlx::Error> {
    // One row per node and name: entries that share a name (an interface
    // gone, and a new one that took its name) are added up.
    let refreshed: Vec<_> = changed.iter().filter(|c| c.2.refresh_interfaces).collect();
    if refreshed.is_empty() {
        return Ok(());
    }
    let mut merged: BTreeMap<(&str, &str), Interface> = BTreeMap::new();
    for (id, _, change) in &refreshed {
        for interface in &change.last.interfaces {
            merged
                .entry((id.as_str(), interface.name.as_str()))
                .and_modify(|row| row.merge(interface))
                .or_insert_with(|| interface.clone());
        }
    }
    let rows: Vec<(&str, &Interface)> = merged.iter().map(|((id, _), i)| (*id, i)).collect();
    let column = |f: fn(&Interface) -> i64| -> Vec<i64> { rows.iter().map(|r| f(r.1)).collect() };
    write_interface_history(conn, &refreshed, &rows, time).await?;
    sqlx::query(
        r#"INSERT INTO "interface_stats"
             ("nodeId", "name", "ifindex", "state", "rxBytes", "rxPackets", "txBytes",
              "txPackets", "updatedAt")
           SELECT u.id, u.name, u.ifindex, u.state, u.rxb, u.rxp, u.txb, u.txp, $1
           FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::text[], $6::int8[],
                       $7::int8[], $8::int8[], $9::int8[])
             AS u(id, name, ifindex, state, rxb, rxp, txb, txp)
           ON CONFLICT ("nodeId", "name") DO UPDATE SET
             "ifindex" = EXCLUDED."ifindex", "state" = EXCLUDED."state",
             "rxBytes" = EXCLUDED."rxBytes", "rxPackets" = EXCLUDED."rxPackets",
             "txBytes" = EXCLUDED."txBytes", "txPackets" = EXCLUDED."txPackets",
             "updatedAt" = EXCLUDED."updatedAt""#,
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
/// zero (else they are a baseline, and nothing is added).
async fn write_interface_history(
    conn: &mut PgConnection,
    refreshed: &[&(&String, &Node<'_>, &Change<'_>)],
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
    sqlx::query(
        r#"INSERT INTO "interface_history" ("nodeId", "name", "bucket", "rxBytes", "txBytes")
           SELECT d.id, d.name, $1, d.rx, d.tx FROM (
             SELECT u.id, u.name,
               CASE WHEN u.fresh OR s."rxBytes" IS NULL
                      THEN CASE WHEN u.zero OR NOT u.fresh THEN u.rxb ELSE 0 END
                    ELSE GREATEST(u.rxb - s."rxBytes", 0) END AS rx,
               CASE WHEN u.fresh OR s."txBytes" IS NULL
                      THEN CASE WHEN u.zero OR NOT u.fresh THEN u.txb ELSE 0 END
                    ELSE GREATEST(u.txb - s."txBytes", 0) END AS tx
             FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::int8[], $6::bool[], $7::bool[])
               AS u(id, name, rxb, txb, fresh, zero)
             LEFT JOIN "interface_stats" s ON s."nodeId" = u.id AND s."name" = u.name
           ) d
           WHERE d.rx > 0 OR d.tx > 0
           ON CONFLICT ("nodeId", "bucket", "name") DO UPDATE SET
             "rxBytes" = "interface_history"."rxBytes" + EXCLUDED."rxBytes",
             "txBytes" = "interface_history"."txBytes" + EXCLUDED."txBytes""#,
    )
    .bind(time.bucket())
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.name.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.rx_bytes).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.tx_bytes).collect::<Vec<_>>())
    .bind(flag(0))
    .bind(flag(1))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
