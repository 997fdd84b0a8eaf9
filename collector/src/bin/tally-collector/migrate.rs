//! `tally-collector migrate`: applies the embedded migrations, or reverts
//! them to a version.

use anyhow::Context as _;
use clap::Args;
use sqlx::PgPool;
use tally_collector::db;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Revert the migrations newer than VERSION instead of applying (a
    /// migration's version is the number its file name starts with; 0
    /// reverts all, dropping every table of tally and its data). Without
    /// it, pending migrations are applied.
    #[arg(long, value_name = "VERSION")]
    pub revert_to: Option<i64>,
}

pub async fn run(pool: &PgPool, args: MigrateArgs) -> anyhow::Result<()> {
    match args.revert_to {
        Some(version) => {
            db::revert(pool, version)
                .await
                .context("cannot revert the migrations")?;
            println!("reverted migrations newer than {version}");
        }
        None => {
            let count = db::migrate(pool)
                .await
                .context("cannot apply the migrations")?;
            println!("database schema up to date ({count} migrations)");
        }
    }
    Ok(())
}
