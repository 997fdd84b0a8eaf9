//! `tally-collector calibrate`, `calibrations` and `anomalies`: the
//! command line's side of [`tally_collector::corrections`], printed for
//! people (exact byte counts).

use std::collections::HashMap;

use anyhow::Context as _;
use chrono::NaiveDateTime;
use sqlx::PgPool;
use tally_collector::{
    corrections::{
        self, Audit,
        anomalies::{self, Decision},
        calibrate::{self, Calibration, Changes},
    },
    nodes,
};

use crate::cli::{AnomaliesCommand, CalibrateArgs, DecideArgs};

fn time(t: NaiveDateTime) -> String {
    t.and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `calibrate NODE ...`: applies the changes and prints the audit row.
pub async fn calibrate(pool: &PgPool, args: CalibrateArgs) -> anyhow::Result<()> {
    let audit = Audit::new(&args.actor, &args.reason)?;
    let changes = Changes {
        period_upload: args.period_upload,
        period_download: args.period_download,
        total_upload: args.total_upload,
        total_download: args.total_download,
    };
    let calibration = calibrate::calibrate(pool, &args.node, &changes, &audit)
        .await
        .with_context(|| format!("cannot calibrate node {}", args.node))?;
    println!("node {} calibrated", calibration.node_id);
    print_calibration(&calibration);
    Ok(())
}

/// `calibrations NODE`: the node's calibrations, newest first.
pub async fn list(pool: &PgPool, node: &str) -> anyhow::Result<()> {
    let list = calibrate::list(pool, node, corrections::MAX_LIMIT).await?;
    if list.is_empty() {
        println!("no calibrations of node {node}");
    }
    for calibration in &list {
        print_calibration(calibration);
    }
    Ok(())
}

fn print_calibration(c: &Calibration) {
    println!(
        "calibration {} at {} by {}: {}",
        c.id,
        time(c.at),
        c.actor,
        c.reason
    );
    let b = &c.before;
    let a = &c.after;
    let rows = [
        ("total upload", b.total_upload, a.total_upload),
        ("total download", b.total_download, a.total_download),
        ("period upload", b.period_upload, a.period_upload),
        ("period download", b.period_download, a.period_download),
    ];
    for (name, before, after) in rows {
        let mark = if before == after { "" } else { "  (changed)" };
        println!("  {name:<16} {before:>20} -> {after:>20}{mark}");
    }
}

/// `anomalies list|accept|discard`.
pub async fn anomalies(pool: &PgPool, command: AnomaliesCommand) -> anyhow::Result<()> {
    match command {
        AnomaliesCommand::List { status } => {
            let filter = anomalies::filter(&status)?;
            let list = anomalies::list(pool, filter, corrections::MAX_LIMIT).await?;
            let names: HashMap<String, String> = nodes::list(pool)
                .await?
                .into_iter()
                .map(|n| (n.id, n.name))
                .collect();
            print_anomalies(&list, &names);
            Ok(())
        }
        AnomaliesCommand::Accept(args) => decide(pool, args, Decision::Accept).await,
        AnomaliesCommand::Discard(args) => decide(pool, args, Decision::Discard).await,
    }
}

fn print_anomalies(list: &[anomalies::Anomaly], names: &HashMap<String, String>) {
    if list.is_empty() {
        println!("no anomalies");
        return;
    }
    println!(
        "{:>8} {:<20} {:<16} {:<24} {:>20} {:>20} {:>20} {:<9}  DECIDED",
        "ID", "NODE", "INTERFACE", "DETECTED", "UPLOAD", "DOWNLOAD", "LIMIT", "STATUS"
    );
    for a in list {
        let decided = match (&a.decided_at, &a.decided_by, &a.reason) {
            (Some(at), Some(by), Some(reason)) => format!("{} by {by}: {reason}", time(*at)),
            _ => String::new(),
        };
        println!(
            "{:>8} {:<20} {:<16} {:<24} {:>20} {:>20} {:>20} {:<9}  {decided}",
            a.id,
            names.get(&a.node_id).unwrap_or(&a.node_id),
            a.interface,
            time(a.detected_at),
            a.upload,
            a.download,
            a.limit_bytes,
            a.status.as_str(),
        );
    }
}

async fn decide(pool: &PgPool, args: DecideArgs, decision: Decision) -> anyhow::Result<()> {
    let audit = Audit::new(&args.actor, &args.reason)?;
    let decided = anomalies::decide(pool, args.id, decision, &audit)
        .await
        .with_context(|| format!("cannot decide anomaly {}", args.id))?;
    let a = &decided.anomaly;
    println!(
        "anomaly {} of node {} ({} bytes up, {} bytes down) {}",
        a.id,
        a.node_id,
        a.upload,
        a.download,
        decided.credit.describe(a)
    );
    let t = &decided.traffic;
    println!(
        "node {} now: total upload {}, total download {}, period upload {}, period download {}",
        a.node_id, t.total_upload, t.total_download, t.period_upload, t.period_download
    );
    Ok(())
}
