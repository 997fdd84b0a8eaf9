//! `tally-collector anomalies list|accept|discard`: the deltas held as
//! anomalies, and the decisions on them.

use std::collections::HashMap;

use anyhow::Context as _;
use clap::{Args, Subcommand, builder::PossibleValuesParser};
use sqlx::PgPool;
use tally_collector::{
    corrections::{
        self, Audit,
        anomalies::{self, Decision},
    },
    nodes,
};

use super::time;

#[derive(Debug, Subcommand)]
pub enum AnomaliesCommand {
    /// List every node's anomalies, newest first (at most 1000).
    List {
        /// Which anomalies to list: `held` (waiting for a decision),
        /// `accepted`, `discarded` or `all`.
        #[arg(long, default_value = "held", value_parser = PossibleValuesParser::new(["held", "accepted", "discarded", "all"]))]
        status: String,
    },
    /// Accept an anomaly: add its bytes to the node's totals and to the
    /// period it was held in (the current one, or the archived one).
    Accept(DecideArgs),
    /// Discard an anomaly: add nothing (it stays listed with the decision).
    Discard(DecideArgs),
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The anomaly's id (as `anomalies list` shows it).
    pub id: i64,
    /// Who decides (required; recorded), e.g. your name: 1 to 200
    /// characters.
    #[arg(long, value_name = "NAME")]
    pub actor: String,
    /// Why (required; recorded), e.g. "a backup really ran at line rate":
    /// 1 to 1000 characters.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

/// `anomalies list|accept|discard`.
pub async fn run(pool: &PgPool, command: AnomaliesCommand) -> anyhow::Result<()> {
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
