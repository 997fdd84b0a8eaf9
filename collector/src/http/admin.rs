//! The admin endpoints (the admin token only): enrol and remove nodes,
//! reset period counters. They change the fleet through the same functions
//! as the command line (`nodes`, `period`).

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AppState,
    auth::Admin,
    openapi::{ErrorBody, TAG_ADMIN},
    params::{Body, Path, Time},
};
use crate::{
    billing::period::{self, Target},
    error::Error,
    nodes, views,
};

/// A node to enrol.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewNode {
    /// Unique in the fleet: 1 to 128 bytes without control characters
    /// (surrounding spaces are trimmed).
    #[schema(
        example = "web-1",
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
}

/// A node just enrolled.
#[derive(Debug, Serialize, ToSchema)]
pub struct AddedNode {
    pub id: String,
    pub name: String,
    /// The node's secret token for its agent (`--token-file`). Shown once:
    /// only a hash is stored.
    pub token: String,
}

/// The nodes whose period counters were reset.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodReset {
    pub reset: Vec<ResetNode>,
}

/// A node whose period counters were reset.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResetNode {
    pub id: String,
    /// The new period's start.
    pub period_start: Time,
}

/// Enrol a node
#[utoipa::path(
    post,
    path = "/api/v1/nodes",
    operation_id = "addNode",
    tag = TAG_ADMIN,
    request_body = NewNode,
    security(("adminToken" = [])),
    responses(
        (status = 201, description = "The node, with its token (shown once)", body = AddedNode),
        (status = 400, description = "A malformed body or name", body = ErrorBody),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 403, description = "The admin API is disabled (no --admin-token)", body = ErrorBody),
        (status = 409, description = "A node of this name exists already", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn add(
    _: Admin,
    State(state): State<AppState>,
    Body(node): Body<NewNode>,
) -> Result<(StatusCode, Json<AddedNode>), Error> {
    let added = nodes::add(&state.pool, &node.name).await?;
    tracing::info!(node = %added.id, name = %added.name, "node enrolled through the API");
    Ok((
        StatusCode::CREATED,
        Json(AddedNode {
            id: added.id,
            name: added.name,
            token: added.token,
        }),
    ))
}

/// Refuses an id no node has (the command-line functions also take names).
pub(super) async fn known(state: &AppState, id: &str) -> Result<(), Error> {
    if views::nodes::exists(&state.pool, id).await? {
        Ok(())
    } else {
        Err(Error::NoSuchNode(id.to_owned()))
    }
}

/// Remove a node and everything stored of it
#[utoipa::path(
    delete,
    path = "/api/v1/nodes/{id}",
    operation_id = "removeNode",
    tag = TAG_ADMIN,
    params(("id" = String, Path, description = "The node's id")),
    security(("adminToken" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 403, description = "The admin API is disabled (no --admin-token)", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn remove(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    known(&state, &id).await?;
    let removed = nodes::remove(&state.pool, &id).await?;
    tracing::info!(node = %removed, "node removed through the API");
    Ok(StatusCode::NO_CONTENT)
}

/// Reset one node's period counters
///
/// Sets the node's period upload and download to 0 and its period start to
/// now.
#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/period/reset",
    operation_id = "resetNodePeriod",
    tag = TAG_ADMIN,
    params(("id" = String, Path, description = "The node's id")),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The node and its new period start", body = PeriodReset),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 403, description = "The admin API is disabled (no --admin-token)", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn reset_node(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PeriodReset>, Error> {
    known(&state, &id).await?;
    period::reset_now(&state.pool, &Target::Node(id.clone())).await?;
    tracing::info!(node = %id, "period reset through the API");
    reset_response(&state, Some(&id)).await
}

/// Reset every node's period counters
#[utoipa::path(
    post,
    path = "/api/v1/period/reset",
    operation_id = "resetAllPeriods",
    tag = TAG_ADMIN,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "Every node and its new period start", body = PeriodReset),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 403, description = "The admin API is disabled (no --admin-token)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn reset_all(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<PeriodReset>, Error> {
    let nodes = period::reset_now(&state.pool, &Target::All).await?;
    tracing::info!(nodes, "period reset for every node through the API");
    reset_response(&state, None).await
}

async fn reset_response(state: &AppState, id: Option<&str>) -> Result<Json<PeriodReset>, Error> {
    let starts = views::nodes::period_starts(&state.pool, id).await?;
    Ok(Json(PeriodReset {
        reset: starts
            .into_iter()
            .map(|(id, start)| ResetNode {
                id,
                period_start: Time(start),
            })
            .collect(),
    }))
}
