//! `GET /api/v1/rankings`: the nodes ordered by traffic (total, current
//! period, or a recent window), value descending, then name, then id.

use std::borrow::Cow;

use axum::{Json, extract::State};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{
    IntoParams, ToSchema,
    openapi::{RefOr, Schema},
};

use super::{
    AppState,
    auth::Reader,
    openapi::{self, ErrorBody, TAG_RANKINGS},
    params::{self, Counter, Query, Time},
};
use crate::{
    error::Error,
    views::rankings::{self as view, By, Direction},
};

/// Documents `by`: which counters are ranked ([`By::as_str`]).
struct RankByDoc;

impl utoipa::PartialSchema for RankByDoc {
    fn schema() -> RefOr<Schema> {
        openapi::names_schema(
            "Which counters are ranked: `total` (the totals since the node was enrolled), \
             `period` (the current period's counters), `window` (the node's history over the \
             last `window`).",
            By::ALL.into_iter().map(By::as_str),
        )
    }
}

impl ToSchema for RankByDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RankBy")
    }
}

/// Documents `direction`: which direction is ranked ([`Direction::as_str`]).
struct DirectionDoc;

impl utoipa::PartialSchema for DirectionDoc {
    fn schema() -> RefOr<Schema> {
        openapi::names_schema(
            "Which direction is ranked: `upload` (bytes sent), `download` (bytes received), \
             `both` (upload plus download).",
            Direction::ALL.into_iter().map(Direction::as_str),
        )
    }
}

impl ToSchema for DirectionDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RankDirection")
    }
}

/// What to rank.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RankingsQuery {
    /// Which counters (default `total`).
    #[param(value_type = Option<RankByDoc>)]
    pub by: Option<String>,
    /// Which direction (default `both`).
    #[param(value_type = Option<DirectionDoc>)]
    pub direction: Option<String>,
    /// How many nodes, 1 to 1000 (default 10).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, example = 10)]
    pub limit: Option<String>,
    /// For `by=window`: how far back, 1m to 366d (default `24h`), such as
    /// `15m`, `24h`, `7d`.
    #[param(
        example = "24h",
        pattern = r"^([1-9][0-9]{0,2}[mh]|[1-9][0-9]?d|[12][0-9]{2}d|3[0-5][0-9]d|36[0-6]d)$"
    )]
    pub window: Option<String>,
}

/// A ranking.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rankings {
    #[schema(value_type = RankByDoc)]
    pub by: String,
    #[schema(value_type = DirectionDoc)]
    pub direction: String,
    pub limit: u32,
    /// For `by=window`: the window, such as `24h`; else null.
    #[schema(required = true)]
    pub window: Option<String>,
    /// For `by=window`: the oldest minute counted (now minus the window);
    /// else null.
    #[schema(required = true)]
    pub since: Option<Time>,
    /// At most `limit` nodes (every node takes part, zero traffic
    /// included).
    pub rankings: Vec<RankedNode>,
}

/// A node's place.
#[derive(Debug, Serialize, ToSchema)]
pub struct RankedNode {
    /// 1 for the first.
    pub rank: u32,
    pub id: String,
    pub name: String,
    pub upload: Counter,
    pub download: Counter,
    /// What is ranked: upload, download or their sum.
    pub value: Counter,
}

impl RankingsQuery {
    /// The query asked for, with the defaults filled in; each value checked.
    fn query(&self) -> Result<view::Query, Error> {
        let invalid = |parameter: &str, message: String| {
            Error::InvalidArgument(format!("{parameter}: {message}"))
        };
        let mut query = view::Query::default();
        if let Some(by) = &self.by {
            query.by = by.parse::<By>().map_err(|m| invalid("by", m))?;
        }
        if let Some(direction) = &self.direction {
            query.direction = direction
                .parse::<Direction>()
                .map_err(|m| invalid("direction", m))?;
        }
        if let Some(limit) = &self.limit {
            query.limit = limit.parse().map_err(|_| {
                invalid(
                    "limit",
                    format!(
                        "{limit:?} is not a whole number from 1 to {}",
                        view::MAX_LIMIT
                    ),
                )
            })?;
        }
        if let Some(window) = &self.window {
            query.window = params::duration("window", window)?;
        }
        query.check()?;
        Ok(query)
    }
}

/// Rank the nodes by traffic
///
/// Ordered by value (descending), then name, then id, so that equal values
/// keep a stable order.
#[utoipa::path(
    get,
    path = "/api/v1/rankings",
    operation_id = "rankings",
    tag = TAG_RANKINGS,
    params(RankingsQuery),
    security((), ("readToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "The ranking", body = Rankings),
        (status = 400, description = "An unknown `by` or `direction`, a limit out of 1..=1000, a malformed window or one out of 1m..=366d", body = ErrorBody),
        (status = 401, description = "A read token is configured and missing or wrong", body = ErrorBody),
        (status = 503, description = "Busy (too many window rankings and history requests at once) or the database is unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn get(
    _: Reader,
    State(state): State<AppState>,
    Query(query): Query<RankingsQuery>,
) -> Result<Json<Rankings>, Error> {
    let query = query.query()?;
    // A window ranking reads history; the others read one row per node.
    let _permit = match query.by {
        By::Window => Some(state.expensive_read().await?),
        _ => None,
    };
    let ranking = view::rank(&state.pool, &query, Utc::now().naive_utc()).await?;
    Ok(Json(Rankings {
        by: query.by.to_string(),
        direction: query.direction.to_string(),
        limit: query.limit,
        window: (query.by == By::Window).then(|| params::format_duration(query.window)),
        since: ranking.since.map(Time),
        rankings: ranking
            .nodes
            .into_iter()
            .map(|node| RankedNode {
                rank: node.rank,
                id: node.id,
                name: node.name,
                upload: node.upload.into(),
                download: node.download.into(),
                value: Counter(node.value),
            })
            .collect(),
    }))
}
