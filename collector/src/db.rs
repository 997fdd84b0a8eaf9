//! The database: connecting, and the embedded migrations (`migrations/`).

use std::time::Duration;

use sqlx::{
    PgPool,
    migrate::{MigrateError, Migrator},
    postgres::PgPoolOptions,
};

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Connects a pool of at most `max_connections`.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
}

/// Applies every migration not applied yet; returns how many there are in
/// all (each has its reverse beside it).
pub async fn migrate(pool: &PgPool) -> Result<usize, MigrateError> {
    MIGRATOR.run(pool).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count())
}

/// Reverts migrations down to `target` (0 reverts all).
pub async fn revert(pool: &PgPool, target: i64) -> Result<(), MigrateError> {
    MIGRATOR.undo(pool, target).await
}
