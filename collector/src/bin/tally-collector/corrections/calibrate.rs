//! `tally-collector calibrate NODE …`: sets or offsets a node's counters,
//! audited.

use anyhow::Context as _;
use clap::Args;
use sqlx::PgPool;
use tally_collector::corrections::{
    Audit,
    calibrate::{self, Adjustment, Calibration, Changes},
};

use super::time;

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("changes")
        .required(true)
        .multiple(true)
        .args(["period_upload", "period_download", "total_upload", "total_download"])
))]
pub struct CalibrateArgs {
    /// The node to calibrate: its id or its name.
    pub node: String,
    /// Change the current period's upload (bytes sent): `=N`, `+N` or
    /// `-N`; the total upload moves by the same amount. Without it, the
    /// period upload stays.
    #[arg(long, value_name = "CHANGE", allow_hyphen_values = true)]
    pub period_upload: Option<Adjustment>,
    /// Change the current period's download (bytes received): `=N`, `+N`
    /// or `-N`; the total download moves by the same amount. Without it,
    /// the period download stays.
    #[arg(long, value_name = "CHANGE", allow_hyphen_values = true)]
    pub period_download: Option<Adjustment>,
    /// Change the total upload: `=N` sets it (the period stays), `+N`/`-N`
    /// offsets it (on top of a period change). Without it, it moves only
    /// with the period upload.
    #[arg(long, value_name = "CHANGE", allow_hyphen_values = true)]
    pub total_upload: Option<Adjustment>,
    /// Change the total download: `=N` sets it (the period stays),
    /// `+N`/`-N` offsets it (on top of a period change). Without it, it
    /// moves only with the period download.
    #[arg(long, value_name = "CHANGE", allow_hyphen_values = true)]
    pub total_download: Option<Adjustment>,
    /// Who makes the change (required; recorded), e.g. your name: 1 to 200
    /// characters.
    #[arg(long, value_name = "NAME")]
    pub actor: String,
    /// Why the change is made (required; recorded), e.g. "provider bill
    /// #123": 1 to 1000 characters.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

/// `calibrate NODE ...`: applies the changes and prints the audit row.
pub async fn run(pool: &PgPool, args: CalibrateArgs) -> anyhow::Result<()> {
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

pub fn print_calibration(c: &Calibration) {
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
