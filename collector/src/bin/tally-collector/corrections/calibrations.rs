//! `tally-collector calibrations NODE`: a node's calibrations, newest
//! first.

use sqlx::PgPool;
use tally_collector::corrections::{self, calibrate};

use super::calibrate::print_calibration;

/// `calibrations NODE`: the node's calibrations, newest first.
pub async fn run(pool: &PgPool, node: &str) -> anyhow::Result<()> {
    let list = calibrate::list(pool, node, corrections::MAX_LIMIT).await?;
    if list.is_empty() {
        println!("no calibrations of node {node}");
    }
    for calibration in &list {
        print_calibration(calibration);
    }
    Ok(())
}
