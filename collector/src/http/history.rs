//! `GET /api/v1/nodes/{id}/history`: a node's traffic, heartbeats and load
//! over a time range, and each interface's traffic, as dense series (one
//! point per step), with the calibrations of its counters in the range.

use std::time::Duration;

use axum::{Json, extract::State};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    auth::Reader,
    corrections::Calibration,
    openapi::{ErrorBody, TAG_NODES},
    params::{self, Counter, Path, Query, Time},
};
use crate::{
    error::Error,
    load::Load,
    views::history::{self as view, Range},
};

/// The range and the step.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Start of the range, RFC 3339 (default: `to` minus 1 hour). Rounded
    /// down to a multiple of `step` (counted from the Unix epoch).
    #[param(format = DateTime, example = "2026-11-25T09:00:00Z")]
    pub from: Option<String>,
    /// End of the range, exclusive, RFC 3339 (default: now).
    #[param(format = DateTime, example = "2026-11-25T10:00:00Z")]
    pub to: Option<String>,
    /// The width of a point: a whole number of minutes from 1m to 366d
    /// (default 1m), such as `1m`, `5m`, `1h`, `1d`. At most 1440 points.
    #[param(example = "5m")]
    pub step: Option<String>,
    /// Whether to answer each interface's series too (default true). At
    /// most 200,000 interface points (interfaces × points) are answered.
    pub interfaces: Option<bool>,
}

/// A node's series.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeHistory {
    pub node_id: String,
    /// The first point's time.
    pub from: Time,
    /// Where the last point's step ends: the points cover [from, to).
    pub to: Time,
    pub step_seconds: i64,
    /// One per step, oldest first.
    pub points: Vec<HistoryPoint>,
    /// Every interface the node has now or had traffic on in the range, by
    /// name; its points are at the same times as `points`.
    pub interfaces: Vec<InterfaceHistory>,
    /// The calibrations of the node's counters made in [from, to), oldest
    /// first.
    pub calibrations: Vec<Calibration>,
}

/// The node in one step [time, time + step).
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPoint {
    pub time: Time,
    /// Bytes sent in the step.
    pub upload: Counter,
    /// Bytes received in the step.
    pub download: Counter,
    /// Heartbeats applied in the step.
    pub heartbeats: i64,
    /// The load of the step's last recorded minute; null when nothing was
    /// recorded in the step.
    #[schema(required = true)]
    pub load: Option<Load>,
}

/// One interface's series.
#[derive(Debug, Serialize, ToSchema)]
pub struct InterfaceHistory {
    pub name: String,
    pub points: Vec<InterfacePoint>,
}

/// One interface in one step.
#[derive(Debug, Serialize, ToSchema)]
pub struct InterfacePoint {
    pub time: Time,
    /// Bytes received in the step.
    pub rx: Counter,
    /// Bytes sent in the step.
    pub tx: Counter,
}

const DEFAULT_RANGE: chrono::Duration = chrono::Duration::hours(1);
const DEFAULT_STEP: Duration = Duration::from_secs(60);

impl HistoryQuery {
    /// The range asked for, with the defaults filled in.
    fn range(&self) -> Result<Range, Error> {
        let to = match &self.to {
            Some(to) => params::timestamp("to", to)?,
            None => Utc::now().naive_utc(),
        };
        let from = match &self.from {
            Some(from) => params::timestamp("from", from)?,
            None => to - DEFAULT_RANGE,
        };
        let step = match &self.step {
            Some(step) => params::duration("step", step)?,
            None => DEFAULT_STEP,
        };
        Range::new(from, to, step)
    }
}

/// A node's history
///
/// The node's minute rows added up per step: bytes and heartbeats summed,
/// the load of the step's last recorded minute. Dense: one point per step,
/// zeros (and a null load) where nothing was recorded. With the
/// calibrations of the node's counters made in the range.
#[utoipa::path(
    get,
    path = "/api/v1/nodes/{id}/history",
    operation_id = "nodeHistory",
    tag = TAG_NODES,
    params(("id" = String, Path, description = "The node's id"), HistoryQuery),
    security((), ("readToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "The node's series", body = NodeHistory),
        (status = 400, description = "A malformed timestamp or duration, from not before to, a step that is not whole minutes, more than 1440 points, or more than 200,000 interface points", body = ErrorBody),
        (status = 401, description = "A read token is configured and missing or wrong", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 503, description = "Busy (too many history and ranking requests at once) or the database is unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn get(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<NodeHistory>, Error> {
    let range = query.range()?;
    let _permit = state.expensive_read().await?;
    let history = view::node(&state.pool, &id, range, query.interfaces.unwrap_or(true)).await?;
    Ok(Json(NodeHistory {
        node_id: id,
        from: Time(history.range.start),
        to: Time(history.range.end()),
        step_seconds: history.range.step_seconds,
        points: history
            .points
            .into_iter()
            .map(|p| HistoryPoint {
                time: Time(p.time),
                upload: p.upload.into(),
                download: p.download.into(),
                heartbeats: p.heartbeats,
                load: p.load,
            })
            .collect(),
        interfaces: history
            .interfaces
            .into_iter()
            .map(|series| InterfaceHistory {
                name: series.name,
                points: series
                    .points
                    .into_iter()
                    .map(|p| InterfacePoint {
                        time: Time(p.time),
                        rx: p.rx.into(),
                        tx: p.tx.into(),
                    })
                    .collect(),
            })
            .collect(),
        calibrations: history
            .calibrations
            .into_iter()
            .map(Calibration::from)
            .collect(),
    }))
}
