//! The HTTP side of the collector, on its own listener in the same process
//! as the gRPC node channel: health and readiness, and the JSON API under
//! `/api/v1` (BIGINT counters as decimal strings, timestamps RFC 3339 UTC,
//! errors as `{"error": {"code", "message"}}`), the event stream, metrics
//! and the dashboard.
//!
//! The JSON API's handlers (`nodes`, `history`, `rankings`, `admin`) read
//! through [`crate::views`] and only map to JSON; `params` holds the
//! extractors and value types they share; `openapi` the generated document.

pub(crate) mod admin;
pub mod auth;
pub mod billing;
pub(crate) mod corrections;
mod dashboard;
mod events;
mod failed_auth;
pub(crate) mod history;
pub(crate) mod listener;
mod metrics;
pub mod nodes;
pub(crate) mod openapi;
pub(crate) mod params;
pub(crate) mod quota;
pub mod rankings;
pub mod tls;
pub(crate) mod token_rotation;

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::{Method, StatusCode, Uri},
    routing::{any, get},
};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use auth::{TokenSet, Tokens};

use crate::error::Error;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// A node not heard from for this long is shown offline.
    pub offline_after: Duration,
    /// A node's clock further off than this is shown as skewed.
    pub max_clock_skew: Duration,
    pub tokens: Tokens,
    /// Events heard from the database (every replica's updates).
    pub events: crate::events::Hub,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Turns true when the collector begins to stop: long-lived responses
    /// (the event stream) end then.
    pub stopping: watch::Receiver<bool>,
    /// `/readyz`'s last probe of the database.
    pub readiness: Arc<Readiness>,
    /// Permits for expensive reads (history, window rankings): when none is
    /// free within [`EXPENSIVE_READ_WAIT`], such a request is answered 503
    /// with `Retry-After`.
    pub expensive_reads: Arc<tokio::sync::Semaphore>,
    /// Permits for open event streams (`--max-event-streams`).
    pub event_streams: Arc<tokio::sync::Semaphore>,
}

/// How long an expensive read waits for a permit before it is answered
/// 503: the `Retry-After` it would be told. A client that loops without
/// honouring it so asks once a second at most, and costs the collector no
/// CPU meanwhile (answering 503s in a tight loop took the CPU the
/// heartbeat writers needed).
pub const EXPENSIVE_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl AppState {
    /// A permit for an expensive read, or [`Error::Busy`] when none came
    /// free within [`EXPENSIVE_READ_WAIT`].
    pub async fn expensive_read(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        let busy = || Error::Busy("too many history and ranking requests at once");
        match tokio::time::timeout(
            EXPENSIVE_READ_WAIT,
            Arc::clone(&self.expensive_reads).acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => Err(busy()),
        }
    }
}

/// Every route, serving `state`.
pub fn router(state: AppState) -> Router {
    routes().with_state(state)
}

/// Every route.
pub fn routes() -> Router<AppState> {
    let (api, _) = api().split_for_parts();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        // Anything else under /api: our JSON 404 (axum's is an empty body).
        .route("/api/{*path}", any(no_route))
        .merge(events::routes())
        .merge(metrics::routes())
        .merge(dashboard::routes())
}

/// The JSON API: each route registered with its OpenAPI description, so
/// that `openapi::document` describes exactly what is served.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(nodes::list, admin::add))
        .routes(routes!(nodes::get, admin::remove))
        .routes(routes!(history::get))
        .routes(routes!(corrections::calibrations, corrections::calibrate))
        .routes(routes!(corrections::list_anomalies))
        .routes(routes!(corrections::node_anomalies))
        .routes(routes!(corrections::accept))
        .routes(routes!(corrections::discard))
        .routes(routes!(rankings::get))
        .routes(routes!(token_rotation::rotate))
        .routes(routes!(token_rotation::revoke))
        .routes(routes!(admin::reset_node))
        .routes(routes!(admin::reset_all))
        .routes(routes!(billing::get_defaults, billing::put_defaults))
        .routes(routes!(billing::get_node, billing::put_node))
        .routes(routes!(billing::periods))
        .routes(routes!(quota::list))
        .routes(routes!(openapi::serve))
}

async fn no_route(method: Method, uri: Uri) -> Error {
    Error::NoRoute(format!("{method} {}", uri.path()))
}

/// The process is up.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers and every migration is applied: the answer of a
/// probe at most [`READINESS_FOR`] old, so that a flood of `/readyz` takes
/// no database connection per request.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let pool = state.pool.clone();
    state.readiness.answer(probe_readiness(pool)).await
}

/// How long a `/readyz` probe's answer is served.
pub const READINESS_FOR: Duration = Duration::from_secs(1);
/// How long a `/readyz` probe waits for the database.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The last `/readyz` answer and when it was made.
#[derive(Debug, Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(std::time::Instant, (StatusCode, serde_json::Value))>>,
}

impl Readiness {
    /// The last answer if it is fresh, else `probe`'s (one probe at a time:
    /// requests that come meanwhile wait for it and share it).
    pub async fn answer(
        &self,
        probe: impl Future<Output = (StatusCode, serde_json::Value)>,
    ) -> (StatusCode, Json<serde_json::Value>) {
        let mut last = self.last.lock().await;
        if let Some((at, (status, body))) = last.as_ref()
            && at.elapsed() < READINESS_FOR
        {
            return (*status, Json(body.clone()));
        }
        let (status, body) = probe.await;
        *last = Some((std::time::Instant::now(), (status, body.clone())));
        (status, Json(body))
    }
}

async fn probe_readiness(pool: PgPool) -> (StatusCode, serde_json::Value) {
    let query =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(&pool);
    let applied: Result<i64, sqlx::Error> = tokio::time::timeout(PROBE_TIMEOUT, query)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut));
    let expected = crate::db::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count() as i64;
    match applied {
        Ok(n) if n >= expected => (StatusCode::OK, json!({ "status": "ready" })),
        Ok(n) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "not ready", "reason": format!("{n} of {expected} migrations applied") }),
        ),
        Err(error) => {
            tracing::warn!(%error, "/readyz: the database does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "status": "not ready", "reason": "the database does not answer" }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn readiness_is_probed_once_for_many_requests() {
        let readiness = Arc::new(Readiness::default());
        let probes = Arc::new(AtomicUsize::new(0));
        let ask = || {
            let (readiness, probes) = (readiness.clone(), probes.clone());
            async move {
                readiness
                    .answer(async move {
                        probes.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        (StatusCode::OK, json!({ "status": "ready" }))
                    })
                    .await
            }
        };
        let answers = futures_util::future::join_all((0..100).map(|_| ask())).await;
        assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK));
        assert_eq!(probes.load(Ordering::SeqCst), 1, "one probe for a hundred");
        tokio::time::sleep(READINESS_FOR).await;
        let (status, _) = ask().await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(probes.load(Ordering::SeqCst), 2, "probed again once stale");
    }
}
