//! Corrections by admins over HTTP: calibrate a node's counters and list
//! its calibrations; list the held anomalies and accept or discard them.
//! Changes need the admin token and an `actor` and a `reason` in the body;
//! they go through [`crate::corrections`], as the command line's do.

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{
    IntoParams, ToSchema,
    openapi::{ObjectBuilder, OneOfBuilder, RefOr, Schema, Type, schema::AdditionalProperties},
};

use super::{
    AppState,
    admin::known,
    auth::{Admin, Reader},
    openapi::{ErrorBody, TAG_ADMIN, TAG_NODES},
    params::{Body, Counter, Path, Query, Time},
};
use crate::{
    corrections::{
        self, Audit,
        anomalies::{self, Credit, Decision},
        calibrate::{self, Adjustment, Changes},
    },
    error::Error,
    events,
};

/// How to change one counter: exactly one of `set` and `offset` (its
/// schema, one of two objects, is written out below).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterChange {
    /// The counter's new value in bytes (0 to 2^63 - 1), as a decimal
    /// string.
    pub set: Option<String>,
    /// Bytes to add (negative: to take away), as a decimal string.
    pub offset: Option<String>,
}

impl utoipa::PartialSchema for CounterChange {
    fn schema() -> RefOr<Schema> {
        // Up to 18 digits: always within 2^63 - 1 (19-digit values up to it
        // are taken too).
        let one = |name: &str, pattern: &str, description: &str, example: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property(
                    name,
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(pattern))
                        .description(Some(description))
                        .examples([example]),
                )
                .required(name)
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        OneOfBuilder::new()
            .description(Some(
                "How to change one counter: exactly one of `set` and `offset`.",
            ))
            .item(one(
                "set",
                "^[0-9]{1,18}$",
                "The counter's new value in bytes (0 to 2^63 - 1), as a decimal string.",
                "1000000000",
            ))
            .item(one(
                "offset",
                "^-?[0-9]{1,18}$",
                "Bytes to add (negative: to take away), as a decimal string.",
                "-5000",
            ))
            .into()
    }
}

impl ToSchema for CounterChange {}

/// Changes of one pair of counters (the period's, or the totals).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectionChanges {
    /// Bytes sent.
    pub upload: Option<CounterChange>,
    /// Bytes received.
    pub download: Option<CounterChange>,
}

/// A calibration of a node's counters.
///
/// Changing the period by Δ (by setting or offsetting it) changes the total
/// by Δ too: the period is part of the total. Setting a total makes it that
/// value whatever the period does; offsetting it adds on top of the
/// period's Δ. Refused (nothing changed) when a counter would go below 0 or
/// above 2^63 - 1, a period would exceed its total, or nothing would change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "period": {"upload": {"set": "100"}, "download": {"offset": "-5"}},
    "actor": "alice",
    "reason": "match provider bill #123"
}))]
pub struct NewCalibration {
    /// Changes of the current period's counters.
    pub period: Option<DirectionChanges>,
    /// Changes of the totals.
    pub total: Option<DirectionChanges>,
    /// Who makes the change: 1 to 200 characters on one line.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub actor: String,
    /// Why: 1 to 1000 characters, without control characters other than
    /// line breaks and tabs.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub reason: String,
}

impl NewCalibration {
    fn changes(&self) -> Result<Changes, Error> {
        let change =
            |field: &str, change: Option<&CounterChange>| -> Result<Option<Adjustment>, Error> {
                match change {
                    None => Ok(None),
                    Some(CounterChange {
                        set: Some(value),
                        offset: None,
                    }) => Adjustment::set(&format!("{field}.set"), value).map(Some),
                    Some(CounterChange {
                        set: None,
                        offset: Some(value),
                    }) => Adjustment::offset(&format!("{field}.offset"), value).map(Some),
                    Some(_) => Err(Error::InvalidArgument(format!(
                        "{field}: give exactly one of set and offset"
                    ))),
                }
            };
        let period = self.period.as_ref();
        let total = self.total.as_ref();
        Ok(Changes {
            period_upload: change("period.upload", period.and_then(|p| p.upload.as_ref()))?,
            period_download: change("period.download", period.and_then(|p| p.download.as_ref()))?,
            total_upload: change("total.upload", total.and_then(|t| t.upload.as_ref()))?,
            total_download: change("total.download", total.and_then(|t| t.download.as_ref()))?,
        })
    }
}

/// A node's four counters in bytes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CalibrationCounters {
    pub total_upload: Counter,
    pub total_download: Counter,
    pub period_upload: Counter,
    pub period_download: Counter,
}

impl From<calibrate::Counters> for CalibrationCounters {
    fn from(c: calibrate::Counters) -> Self {
        CalibrationCounters {
            total_upload: c.total_upload.into(),
            total_download: c.total_download.into(),
            period_upload: c.period_upload.into(),
            period_download: c.period_download.into(),
        }
    }
}

/// A calibration as stored: who, when, why, the counters before and after.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Calibration {
    pub id: i64,
    pub node_id: String,
    pub at: Time,
    pub actor: String,
    pub reason: String,
    pub before: CalibrationCounters,
    pub after: CalibrationCounters,
}

impl From<calibrate::Calibration> for Calibration {
    fn from(c: calibrate::Calibration) -> Self {
        Calibration {
            id: c.id,
            node_id: c.node_id,
            at: Time(c.at),
            actor: c.actor,
            reason: c.reason,
            before: c.before.into(),
            after: c.after.into(),
        }
    }
}

/// A node's calibrations.
#[derive(Debug, Serialize, ToSchema)]
pub struct CalibrationList {
    /// Newest first.
    pub calibrations: Vec<Calibration>,
}

/// How many rows.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000, example = 100)]
    pub limit: Option<i64>,
}

/// Which anomalies.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnomalyQuery {
    /// `held`, `accepted`, `discarded` or `all` (default `all`).
    #[param(value_type = Option<AnomalyFilter>, inline)]
    pub status: Option<String>,
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000, example = 100)]
    pub limit: Option<i64>,
}

impl AnomalyQuery {
    fn filter(&self) -> Result<anomalies::Filter, Error> {
        self.status.as_deref().map_or(Ok(None), anomalies::filter)
    }
}

/// Where an anomaly stands.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "only documents the values of `status`")]
enum AnomalyStatus {
    /// Not counted; waiting for a decision.
    Held,
    /// Counted by an admin's decision.
    Accepted,
    /// Not counted, by an admin's decision.
    Discarded,
}

/// Which anomalies a list shows.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "only documents the values of `status`")]
enum AnomalyFilter {
    Held,
    Accepted,
    Discarded,
    All,
}

/// A delta held instead of counted: larger than the interface could carry
/// at the node's maximum rate in the time it covers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Anomaly {
    pub id: i64,
    pub node_id: String,
    /// The interface entry whose delta it is.
    pub interface: String,
    pub ifindex: i64,
    pub detected_at: Time,
    /// The held bytes sent.
    pub upload: Counter,
    /// The held bytes received.
    pub download: Counter,
    /// The time the delta covers, by the node's clock, in milliseconds.
    pub elapsed_ms: i64,
    /// The most bytes per direction the interface could carry in that time.
    pub limit_bytes: Counter,
    /// The node's period when it was held.
    pub period_start: Time,
    #[schema(value_type = AnomalyStatus)]
    pub status: String,
    /// When it was accepted or discarded.
    #[schema(required = true)]
    pub decided_at: Option<Time>,
    /// Who accepted or discarded it.
    #[schema(required = true)]
    pub decided_by: Option<String>,
    /// Why it was accepted or discarded.
    #[schema(required = true)]
    pub reason: Option<String>,
}

impl From<anomalies::Anomaly> for Anomaly {
    fn from(a: anomalies::Anomaly) -> Self {
        Anomaly {
            id: a.id,
            node_id: a.node_id,
            interface: a.interface,
            ifindex: a.ifindex,
            detected_at: Time(a.detected_at),
            upload: a.upload.into(),
            download: a.download.into(),
            elapsed_ms: a.elapsed_ms,
            limit_bytes: a.limit_bytes.into(),
            period_start: Time(a.period_start),
            status: a.status.as_str().to_owned(),
            decided_at: a.decided_at.map(Time),
            decided_by: a.decided_by,
            reason: a.reason,
        }
    }
}

/// Anomalies.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnomalyList {
    /// Newest first.
    pub anomalies: Vec<Anomaly>,
}

/// Who decides and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"actor": "alice", "reason": "a backup job really ran at line rate"}))]
pub struct NewDecision {
    /// Who decides: 1 to 200 characters on one line.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub actor: String,
    /// Why: 1 to 1000 characters, without control characters other than
    /// line breaks and tabs.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub reason: String,
}

/// Where an anomaly's bytes were added.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code, reason = "only documents the values of `credited`")]
enum Credited {
    /// Discarded: nowhere.
    Nothing,
    /// The totals and the current period (the one it was held in).
    CurrentPeriod,
    /// The totals and the archived period it was held in.
    ArchivedPeriod,
    /// Only the totals: its period is neither current nor archived.
    TotalsOnly,
}

/// An archived period.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArchivedPeriod {
    pub id: i64,
    pub start: Time,
    pub end: Time,
}

/// A node's counters after a change.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorrectedTraffic {
    pub total_upload: Counter,
    pub total_download: Counter,
    pub period_upload: Counter,
    pub period_download: Counter,
    pub period_start: Time,
}

impl From<events::TrafficCounters> for CorrectedTraffic {
    fn from(t: events::TrafficCounters) -> Self {
        CorrectedTraffic {
            total_upload: t.total_upload.into(),
            total_download: t.total_download.into(),
            period_upload: t.period_upload.into(),
            period_download: t.period_download.into(),
            period_start: Time(t.period_start),
        }
    }
}

/// An anomaly just decided.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecidedAnomaly {
    pub anomaly: Anomaly,
    #[schema(value_type = Credited)]
    pub credited: String,
    /// With `credited` = `archived_period`: that period.
    #[schema(required = true)]
    pub archived_period: Option<ArchivedPeriod>,
    /// What happened, for people.
    pub message: String,
    /// The node's counters after the decision.
    pub traffic: CorrectedTraffic,
}

/// Calibrate a node's counters
///
/// Sets or offsets the node's period and total counters (e.g. to match the
/// provider's bill), in one transaction with its audit row (who, when, why,
/// the counters before and after) and a `calibration` live event.
#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/calibrations",
    operation_id = "calibrateNode",
    tag = TAG_ADMIN,
    params(("id" = String, Path, description = "The node's id")),
    request_body = NewCalibration,
    security(("adminToken" = [])),
    responses(
        (status = 201, description = "The calibration as stored", body = Calibration),
        (status = 400, description = "A malformed body, a missing actor or reason, or no change given (nothing was changed)", body = ErrorBody),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 403, description = "The admin API is disabled (no --admin-token)", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 409, description = "A calibration that, from the counters as they are, changes nothing or would leave a counter below 0, above 2^63 - 1 or a period above its total (nothing was changed)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn calibrate(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<NewCalibration>,
) -> Result<(StatusCode, Json<Calibration>), Error> {
    let changes = body.changes()?;
    let audit = Audit::new(&body.actor, &body.reason)?;
    known(&state, &id).await?;
    let calibration = calibrate::calibrate(&state.pool, &id, &changes, &audit).await?;
    Ok((StatusCode::CREATED, Json(calibration.into())))
}

/// A node's calibrations
#[utoipa::path(
    get,
    path = "/api/v1/nodes/{id}/calibrations",
    operation_id = "nodeCalibrations",
    tag = TAG_NODES,
    params(("id" = String, Path, description = "The node's id"), LimitQuery),
    security((), ("readToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "The node's calibrations, newest first", body = CalibrationList),
        (status = 400, description = "A limit out of 1..=1000", body = ErrorBody),
        (status = 401, description = "A read token is configured and missing or wrong", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn calibrations(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<CalibrationList>, Error> {
    let limit = query.limit.unwrap_or(corrections::DEFAULT_LIMIT);
    corrections::check_limit(limit)?;
    known(&state, &id).await?;
    let list = calibrate::list(&state.pool, &id, limit).await?;
    Ok(Json(CalibrationList {
        calibrations: list.into_iter().map(Calibration::from).collect(),
    }))
}

/// Every node's anomalies
#[utoipa::path(
    get,
    path = "/api/v1/anomalies",
    operation_id = "listAnomalies",
    tag = TAG_NODES,
    params(AnomalyQuery),
    security((), ("readToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "The anomalies, newest first", body = AnomalyList),
        (status = 400, description = "An unknown status or a limit out of 1..=1000", body = ErrorBody),
        (status = 401, description = "A read token is configured and missing or wrong", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn list_anomalies(
    _: Reader,
    State(state): State<AppState>,
    Query(query): Query<AnomalyQuery>,
) -> Result<Json<AnomalyList>, Error> {
    let status = query.filter()?;
    let limit = query.limit.unwrap_or(corrections::DEFAULT_LIMIT);
    let list = anomalies::list(&state.pool, status, limit).await?;
    Ok(Json(AnomalyList {
        anomalies: list.into_iter().map(Anomaly::from).collect(),
    }))
}

/// A node's anomalies
#[utoipa::path(
    get,
    path = "/api/v1/nodes/{id}/anomalies",
    operation_id = "nodeAnomalies",
    tag = TAG_NODES,
    params(("id" = String, Path, description = "The node's id"), AnomalyQuery),
    security((), ("readToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "The node's anomalies, newest first", body = AnomalyList),
        (status = 400, description = "An unknown status or a limit out of 1..=1000", body = ErrorBody),
        (status = 401, description = "A read token is configured and missing or wrong", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn node_anomalies(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<AnomalyQuery>,
) -> Result<Json<AnomalyList>, Error> {
    let status = query.filter()?;
    let limit = query.limit.unwrap_or(corrections::DEFAULT_LIMIT);
    corrections::check_limit(limit)?;
    known(&state, &id).await?;
    let list = anomalies::of_node(&state.pool, &id, status, limit).await?;
    Ok(Json(AnomalyList {
        anomalies: list.into_iter().map(Anomaly::from).collect(),
    }))
}

async fn decide(
    state: &AppState,
    id: i64,
    decision: Decision,
    body: NewDecision,
) -> Result<Json<DecidedAnomaly>, Error> {
    let audit = Audit::new(&body.actor, &body.reason)?;
    let decided = anomalies::decide(&state.pool, id, decision, &audit).await?;
    let message = decided.credit.describe(&decided.anomaly);
    let archived_period = match decided.credit {
        Credit::ArchivedPeriod { id, start, end } => Some(ArchivedPeriod {
            id,
            start: Time(start),
            end: Time(end),
        }),
        _ => None,
    };
    Ok(Json(DecidedAnomaly {
        credited: decided.credit.as_str().to_owned(),
        anomaly: decided.anomaly.into(),
        archived_period,
        message,
        traffic: decided.traffic.into(),
    }))
}

/// Accept an anomaly
///
/// Adds the held bytes to the node's totals and to the period they were
/// held in: the current period if it still is, else the archived period
/// that started then (if there is none, only the totals: `credited` says
/// which). An anomaly is decided once.
#[utoipa::path(
    post,
    path = "/api/v1/anomalies/{id}/accept",
    operation_id = "acceptAnomaly",
    tag = TAG_ADMIN,
    params(("id" = i64, Path, description = "The anomaly's id")),
    request_body = NewDecision,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The anomaly, where its bytes were added, and the node's counters after", body = DecidedAnomaly),
        (status = 400, description = "A malformed id or body, or a missing actor or reason", body = ErrorBody),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 403, description = "The admin API is disabled (no --admin-token)", body = ErrorBody),
        (status = 404, description = "No anomaly has this id", body = ErrorBody),
        (status = 409, description = "The anomaly was decided already, or a counter would exceed 2^63 - 1 (nothing was changed)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn accept(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Body(body): Body<NewDecision>,
) -> Result<Json<DecidedAnomaly>, Error> {
    decide(&state, id, Decision::Accept, body).await
}

/// Discard an anomaly
///
/// Adds nothing; the anomaly stays listed with the decision. An anomaly is
/// decided once.
#[utoipa::path(
    post,
    path = "/api/v1/anomalies/{id}/discard",
    operation_id = "discardAnomaly",
    tag = TAG_ADMIN,
    params(("id" = i64, Path, description = "The anomaly's id")),
    request_body = NewDecision,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The anomaly and the node's (unchanged) counters", body = DecidedAnomaly),
        (status = 400, description = "A malformed id or body, or a missing actor or reason", body = ErrorBody),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 403, description = "The admin API is disabled (no --admin-token)", body = ErrorBody),
        (status = 404, description = "No anomaly has this id", body = ErrorBody),
        (status = 409, description = "The anomaly was decided already", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn discard(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Body(body): Body<NewDecision>,
) -> Result<Json<DecidedAnomaly>, Error> {
    decide(&state, id, Decision::Discard, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(json: &str) -> Result<Changes, Error> {
        serde_json::from_str::<NewCalibration>(json)
            .map_err(|e| Error::InvalidArgument(e.to_string()))
            .and_then(|body| body.changes())
    }

    #[test]
    fn bodies_map_to_changes_and_name_the_field_at_fault() {
        let parsed = changes(
            r#"{"period": {"upload": {"set": "100"}, "download": {"offset": "-5"}},
                "total": {"download": {"offset": "+7"}}, "actor": "a", "reason": "r"}"#,
        )
        .expect("valid");
        assert_eq!(
            parsed,
            Changes {
                period_upload: Some(Adjustment::Set(100)),
                period_download: Some(Adjustment::Offset(-5)),
                total_upload: None,
                total_download: Some(Adjustment::Offset(7)),
            }
        );
        for (json, starts) in [
            (
                r#"{"period": {"upload": {"set": "1", "offset": "2"}}, "actor": "a", "reason": "r"}"#,
                "period.upload: give exactly one",
            ),
            (
                r#"{"total": {"upload": {}}, "actor": "a", "reason": "r"}"#,
                "total.upload: give exactly one",
            ),
            (
                r#"{"total": {"download": {"set": "-1"}}, "actor": "a", "reason": "r"}"#,
                "total.download.set: ",
            ),
            (
                r#"{"period": {"download": {"offset": "x"}}, "actor": "a", "reason": "r"}"#,
                "period.download.offset: ",
            ),
        ] {
            let error = changes(json).expect_err(json).to_string();
            assert!(error.starts_with(starts), "{error}");
        }
        for json in [
            r#"{"period": {"upload": {"set": 100}}, "actor": "a", "reason": "r"}"#,
            r#"{"period": {"up": {"set": "100"}}, "actor": "a", "reason": "r"}"#,
            r#"{"period": {"upload": {"set": "100"}}, "reason": "r"}"#,
        ] {
            assert!(changes(json).is_err(), "{json}");
        }
    }
}
