//! Applies a batch of heartbeats in one transaction, in three steps:
//! **load** the nodes' rows, locked in id order so that concurrent batches,
//! here or in another collector, never deadlock (`load`); **plan** what
//! each heartbeat does against them, without I/O (`ingest::plan`);
//! **write** every change with one statement per table (`write`) and the
//! live events with one NOTIFY ([`crate::events`]). A heartbeat's reply is
//! sent only after the commit; if anything fails, nothing of the batch is
//! stored or announced and every heartbeat in it gets a retryable error.

mod counter_sets;
mod load;
mod write;

pub use counter_sets::KEPT_PER_NODE;

pub use super::{
    batch::{
        Applied, BatchTime, DEFAULT_MAX_CLOCK_SKEW_MS, DEFAULT_MAX_INTERFACE_NAMES,
        INTERFACE_REFRESH, Job,
    },
    signals::{STALE_RUN_FLAGGED, reason_name},
};

use sqlx::PgConnection;

use super::{
    plan::{self, Adopted, NodeState, NodeUpdate},
    signals::Signals,
};
use crate::error::Error;

/// Applies `jobs` in one transaction on `conn`. The outer `Err` means the
/// transaction failed and nothing was stored.
pub async fn apply(
    conn: &mut PgConnection,
    jobs: &[Job],
    time: BatchTime,
) -> Result<Vec<Result<Applied, Error>>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let mut nodes = load::lock_nodes(&mut tx, jobs, &time).await?;
    load::load_followed(&mut tx, jobs, &mut nodes).await?;
    let (results, mut outbox) = plan::plan(&mut nodes, jobs, &time);
    let updated: Vec<(&String, &NodeState, &NodeUpdate)> = {
        let mut updated: Vec<_> = nodes
            .iter()
            .filter_map(|(id, node)| node.update.as_ref().map(|u| (id, node, u)))
            .collect();
        updated.sort_by(|a, b| a.0.cmp(b.0));
        updated
    };
    let signalled: Vec<(&str, &Signals)> = nodes
        .iter()
        .filter(|(_, node)| node.update.is_none() && node.signals.changed)
        .map(|(id, node)| (id.as_str(), &node.signals))
        .collect();
    write::signals(&mut tx, &signalled).await?;
    if !updated.is_empty() {
        write::nodes(&mut tx, &updated, &time).await?;
        let adopted: Vec<(&str, &Adopted)> = updated
            .iter()
            .flat_map(|(id, _, update)| update.adopted.iter().map(|a| (id.as_str(), a)))
            .collect();
        counter_sets::record(&mut tx, &adopted, time.now).await?;
        write::traffic(&mut tx, &updated, &time).await?;
        write::history(&mut tx, &updated, &time).await?;
        write::interfaces(&mut tx, &updated, &time).await?;
        write::closed_periods(&mut tx, &updated, &time).await?;
        write::anomalies(&mut tx, &updated, &time).await?;
        write::quota_crossings(&mut tx, &updated, &time, &mut outbox).await?;
    }
    // Also the events of batches that changed no traffic (a stale run).
    outbox.send(&mut tx).await?;
    tx.commit().await?;
    Ok(results)
}

/// The nodes a batch updated, with their updates, in id order.
type Updated<'a> = [(&'a String, &'a NodeState<'a>, &'a NodeUpdate<'a>)];
