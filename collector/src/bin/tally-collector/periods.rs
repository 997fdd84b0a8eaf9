//! `tally-collector periods NODE`: a node's closed billing periods, newest
//! first, as a table or as the API's JSON.

use std::fmt::Write as _;

use chrono::NaiveDateTime;
use clap::Args;
use sqlx::PgPool;
use tally_collector::{
    billing::{settings, view},
    http::billing as api,
};

#[derive(Debug, Args)]
pub struct PeriodsArgs {
    /// The node: its id or its name.
    pub node: String,
    /// How many periods to list, newest first (1 to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(view::MAX_LIMIT)), value_name = "N")]
    pub limit: u32,
    /// Print the JSON that `GET /api/v1/nodes/{id}/periods` answers instead
    /// of a table (counters as decimal strings).
    #[arg(long)]
    pub json: bool,
}

/// Runs `periods NODE`.
pub async fn run(pool: &PgPool, args: &PeriodsArgs) -> anyhow::Result<()> {
    let id = settings::node_id(pool, &args.node).await?;
    let periods = view::periods(pool, &id, args.limit).await?;
    if args.json {
        let list = api::PeriodList {
            node_id: id,
            periods: periods.iter().map(api::ArchivedPeriod::from).collect(),
        };
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", render_periods(&periods));
    }
    Ok(())
}

/// Closed periods as a table (exact bytes; rates in bytes per second).
pub fn render_periods(periods: &[view::Archived]) -> String {
    if periods.is_empty() {
        return "no closed periods\n".to_owned();
    }
    let time = |t: NaiveDateTime| t.format("%Y-%m-%d %H:%M:%S").to_string();
    let mut rows = vec![[
        "START (UTC)".to_owned(),
        "END (UTC)".to_owned(),
        "CLOSED BY".to_owned(),
        "MODE".to_owned(),
        "UPLOAD".to_owned(),
        "DOWNLOAD".to_owned(),
        "USAGE".to_owned(),
        "PEAK B/S".to_owned(),
        "P95 B/S".to_owned(),
    ]];
    for p in periods {
        rows.push([
            time(p.start),
            time(p.end),
            p.closed_by.clone(),
            p.mode.clone(),
            p.upload.to_string(),
            p.download.to_string(),
            p.usage.map_or_else(|| "?".to_owned(), |u| u.to_string()),
            p.peak_rate
                .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            p.p95_rate.map_or_else(|| "-".to_owned(), |r| r.to_string()),
        ]);
    }
    let mut widths = [0; 9];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut text = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            // Times and names to the left, numbers to the right.
            if i < 4 {
                let _ = write!(text, "{cell:<width$}");
            } else {
                let _ = write!(text, "{cell:>width$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}
