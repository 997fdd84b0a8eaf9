//! `GET /api/v1/nodes/{id}/quota-events`: the quota thresholds a node's
//! usage crossed (at most once per period and threshold), newest first.

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    auth::Reader,
    openapi::{ErrorBody, TAG_NODES},
    params::{Counter, Path, Query, Time},
};
use crate::{
    billing::{
        Mode,
        view::{DEFAULT_LIMIT, MAX_LIMIT, check_limit},
    },
    error::Error,
    quota,
};

/// A node's quota events.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaEventList {
    pub node_id: String,
    /// Newest first.
    pub events: Vec<QuotaEvent>,
}

/// A threshold of the node's quota crossed in a period.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaEvent {
    pub id: i64,
    /// The start of the period whose usage crossed it.
    pub period_start: Time,
    /// Percent of the quota.
    pub threshold: i32,
    /// The usage that crossed it, under `mode`: bytes, or bytes per second
    /// for `p95`.
    pub usage: Counter,
    /// The quota then, in the same unit.
    pub quota: Counter,
    pub mode: Mode,
    /// When it was crossed.
    pub at: Time,
}

impl From<&quota::Event> for QuotaEvent {
    fn from(event: &quota::Event) -> Self {
        QuotaEvent {
            id: event.id,
            period_start: Time(event.period_start),
            threshold: event.threshold,
            usage: event.usage.into(),
            quota: event.quota.into(),
            mode: event.mode,
            at: Time(event.at),
        }
    }
}

/// How many events.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QuotaEventsQuery {
    /// At most this many, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, example = 100)]
    pub limit: Option<String>,
}

impl QuotaEventsQuery {
    fn limit(&self) -> Result<u32, Error> {
        match &self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(text) => match text.parse::<i64>() {
                Ok(limit) => check_limit(limit),
                Err(_) => Err(Error::InvalidArgument(format!(
                    "limit: {text:?} is not a whole number from 1 to {MAX_LIMIT}"
                ))),
            },
        }
    }
}

/// A node's quota events
///
/// The thresholds of its quota its usage crossed, each at most once per
/// period, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/nodes/{id}/quota-events",
    operation_id = "listNodeQuotaEvents",
    tag = TAG_NODES,
    params(("id" = String, Path, description = "The node's id"), QuotaEventsQuery),
    security((), ("readToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "The node's quota events", body = QuotaEventList),
        (status = 400, description = "A limit out of 1..=1000", body = ErrorBody),
        (status = 401, description = "A read token is configured and missing or wrong", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn list(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<QuotaEventsQuery>,
) -> Result<Json<QuotaEventList>, Error> {
    let limit = query.limit()?;
    let events = quota::list(&state.pool, &id, i64::from(limit)).await?;
    Ok(Json(QuotaEventList {
        node_id: id,
        events: events.iter().map(QuotaEvent::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_are_checked() {
        let query = |limit: Option<&str>| QuotaEventsQuery {
            limit: limit.map(str::to_owned),
        };
        assert_eq!(query(None).limit().ok(), Some(DEFAULT_LIMIT));
        assert_eq!(query(Some("3")).limit().ok(), Some(3));
        for bad in ["0", "1001", "-1", "many"] {
            let error = query(Some(bad)).limit().expect_err(bad).to_string();
            assert!(error.starts_with("limit: "), "{error}");
        }
    }
}
