//! The admin endpoints of a node's token: rotate it and revoke it, through
//! the same functions as `tally-collector node rotate-token|revoke`
//! ([`crate::token_rotation`]).

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AppState,
    admin::known,
    auth::Admin,
    openapi::{ErrorBody, TAG_ADMIN},
    params::{Body, Path, Time},
};
use crate::{error::Error, token_rotation};

/// The grace of the token before a rotation, unless one is asked for.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);

/// How to rotate.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rotation {
    /// How long the token before stays valid, in seconds (0 to 2592000;
    /// 600 if not given), unless the new token is used sooner: then it ends
    /// at once. 0 ends it now (a token that leaked).
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 2_592_000, example = 600)]
    #[serde(default, deserialize_with = "whole_seconds")]
    pub grace_seconds: Option<u64>,
}

/// A whole number of seconds, also when JSON writes it with a fraction of
/// zero (`600.0`: an integer to JSON Schema).
fn whole_seconds<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(seconds) = number.as_u64() {
        return Ok(Some(seconds));
    }
    match number.as_f64() {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a whole, non-negative number below 2^53, checked first"
        )]
        Some(value) if value.fract() == 0.0 && (0.0..9.0e15).contains(&value) => {
            Ok(Some(value as u64))
        }
        _ => Err(serde::de::Error::custom(format!(
            "graceSeconds: {number} is not a whole number of seconds from 0"
        ))),
    }
}

/// A node's new token.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedToken {
    pub id: String,
    pub name: String,
    /// The node's new secret token for its agent (`--token-file`). Shown
    /// once: only a hash is stored.
    pub token: String,
    /// Until when the token before it is valid, at the latest; `null` when
    /// it is not valid any more.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_valid_until: Option<Time>,
}

/// Give a node a new token
///
/// The token before stays valid for the grace, or until the new one is
/// first used, whichever comes first. A revoked node gets a token again
/// (and the revoked one stays invalid).
#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/token",
    operation_id = "rotateNodeToken",
    tag = TAG_ADMIN,
    params(("id" = String, Path, description = "The node's id")),
    request_body = Rotation,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The new token (shown once)", body = RotatedToken),
        (status = 400, description = "A malformed body or grace", body = ErrorBody),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 403, description = "The admin API is disabled (no --admin-token)", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn rotate(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(rotation): Body<Rotation>,
) -> Result<Json<RotatedToken>, Error> {
    let grace = rotation
        .grace_seconds
        .map_or(DEFAULT_GRACE, Duration::from_secs);
    if grace > token_rotation::MAX_GRACE {
        return Err(Error::InvalidArgument(format!(
            "graceSeconds: at most {}",
            token_rotation::MAX_GRACE.as_secs()
        )));
    }
    known(&state, &id).await?;
    let rotated = token_rotation::rotate(&state.pool, &id, grace).await?;
    tracing::info!(node = %rotated.id, "node token rotated through the API");
    Ok(Json(RotatedToken {
        id: rotated.id,
        name: rotated.name,
        token: rotated.token,
        previous_valid_until: rotated.previous_valid_until.map(Time),
    }))
}

/// Revoke a node's tokens
///
/// No token of the node is valid any more; everything else of it (its
/// counters, history, billing periods, audit trail) stays. A rotation gives
/// it a token again.
#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/revoke",
    operation_id = "revokeNodeTokens",
    tag = TAG_ADMIN,
    params(("id" = String, Path, description = "The node's id")),
    security(("adminToken" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 403, description = "The admin API is disabled (no --admin-token)", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn revoke(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    known(&state, &id).await?;
    let revoked = token_rotation::revoke(&state.pool, &id).await?;
    tracing::info!(node = %revoked, "node tokens revoked through the API");
    Ok(StatusCode::NO_CONTENT)
}
