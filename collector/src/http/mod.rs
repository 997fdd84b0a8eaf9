//! The HTTP side of the collector, on its own listener in the same process
//! as the gRPC node channel: health and readiness, and the JSON API under
//! `/api/v1` (BIGINT counters as decimal strings, timestamps RFC 3339 UTC,
//! errors as `{"error": {"code", "message"}}`).

pub mod auth;
mod dashboard;
mod events;
mod metrics;
mod nodes;

use std::{sync::Arc, time::Duration};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

pub use auth::Tokens;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// A node not heard from for this long is shown offline.
    pub offline_after: Duration,
    pub tokens: Tokens,
    /// Events heard from the database (every replica's updates).
    pub events: crate::events::Hub,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Turns true when the collector begins to stop: long-lived responses
    /// (the event stream) end then.
    pub stopping: watch::Receiver<bool>,
}

/// Every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/nodes", get(nodes::list))
        .merge(events::routes())
        .merge(metrics::routes())
        .merge(dashboard::routes())
        .with_state(state)
}

/// The process is up.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers and every migration is applied.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let applied: Result<i64, sqlx::Error> =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&state.pool)
            .await;
    let expected = crate::db::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count() as i64;
    match applied {
        Ok(n) if n >= expected => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Ok(n) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({ "status": "not ready", "reason": format!("{n} of {expected} migrations applied") }),
            ),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": format!("database: {error}") })),
        ),
    }
}
