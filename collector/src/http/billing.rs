//! Billing settings and periods: `GET`/`PUT /api/v1/billing/defaults` (the
//! fleet's), `GET`/`PUT /api/v1/nodes/{id}/billing` (a node's effective
//! settings, which are its own, and its current period) and
//! `GET /api/v1/nodes/{id}/periods` (its closed periods). They read and
//! change through [`crate::billing::settings`] and
//! [`crate::billing::view`], as the command line does; the response types
//! here are also what `tally-collector billing … --json` prints.
//!
//! The collector's `--period-reset monthly:DAY` (the anchor of nodes that
//! have none) reaches the handlers as the request extension
//! [`PeriodReset`]; without it, there is none.

use axum::{Extension, Json, extract::State};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    auth::{Admin, Reader},
    openapi::{ErrorBody, TAG_ADMIN, TAG_NODES},
    params::{Body, Counter, Path, Query, Time},
};
use crate::{
    billing::{
        CountRule, Mode,
        settings::{self, Defaults, Effective, JsonPatch, Values},
        view,
    },
    error::Error,
};

/// The collector's `--period-reset monthly:DAY`: the anchor day (in UTC)
/// of nodes whose settings have none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodReset(pub Option<u32>);

/// A whole set of billing settings.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillingSettings {
    /// The day of the month periods start on (1-31; the month's last day
    /// when it is shorter), at local midnight in `timeZone`; null: periods
    /// end only on request.
    #[schema(required = true, minimum = 1, maximum = 31)]
    pub anchor_day: Option<u32>,
    /// An IANA time zone name.
    #[schema(example = "Europe/Berlin")]
    pub time_zone: String,
    pub mode: Mode,
    pub count_rule: CountRule,
    /// Bytes per period (bytes per second in mode `p95`); null: none.
    #[schema(required = true)]
    pub quota: Option<Counter>,
    /// Percentages of the quota at which quota events fire, ascending.
    #[schema(example = json!([80, 100]))]
    pub thresholds: Vec<i32>,
    /// The most bytes per second one interface carries in one direction.
    pub max_rate: Counter,
}

impl From<&Values> for BillingSettings {
    fn from(values: &Values) -> Self {
        BillingSettings {
            anchor_day: values.anchor_day,
            time_zone: values.time_zone.clone(),
            mode: values.mode,
            count_rule: values.count_rule,
            quota: values.quota.map(Counter::from),
            thresholds: values.thresholds.clone(),
            max_rate: values.max_rate.into(),
        }
    }
}

/// The fleet's billing settings: what applies to every node that has no
/// value of its own.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillingDefaults {
    #[serde(flatten)]
    pub settings: BillingSettings,
    pub updated_at: Time,
}

impl From<&Defaults> for BillingDefaults {
    fn from(defaults: &Defaults) -> Self {
        BillingDefaults {
            settings: BillingSettings::from(&defaults.values),
            updated_at: Time(defaults.updated_at),
        }
    }
}

/// A setting's name.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code, reason = "only documents the values of `own`")]
enum SettingName {
    AnchorDay,
    TimeZone,
    Mode,
    CountRule,
    Quota,
    Thresholds,
    MaxRate,
}

/// Where a node's period anchor comes from.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code, reason = "only documents the values of `anchorSource`")]
enum AnchorSourceDoc {
    /// The node's own `anchorDay`.
    Node,
    /// The fleet's `anchorDay`.
    Fleet,
    /// Neither has one: the collector's `--period-reset monthly:DAY`, in
    /// UTC.
    PeriodReset,
    /// None: periods end only on request.
    None,
}

/// A node's billing: its settings and its current period.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeBilling {
    pub node_id: String,
    /// What applies to the node: its own values, else the fleet's. With
    /// `anchorSource` `periodReset`, `anchorDay` is the collector's
    /// `--period-reset` day and `timeZone` is `UTC`.
    pub settings: BillingSettings,
    /// The settings the node has its own value of (the rest are the
    /// fleet's).
    #[schema(value_type = Vec<SettingName>)]
    pub own: Vec<String>,
    #[schema(value_type = AnchorSourceDoc)]
    pub anchor_source: String,
    pub period: CurrentPeriod,
}

/// The period the node's `periodUpload`/`periodDownload` count.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentPeriod {
    /// The node's `periodStart`.
    pub start: Time,
    /// The anchor's next boundary after `start`; null without an anchor
    /// (the period ends on request). A changed anchor moves the end, never
    /// the start.
    #[schema(required = true)]
    pub end: Option<Time>,
    pub upload: Counter,
    pub download: Counter,
    /// Under the node's mode: bytes, or bytes per second for `p95`.
    pub usage: Counter,
    /// Null: no quota.
    #[schema(required = true)]
    pub quota: Option<Counter>,
    /// `usage` in percent of `quota` (to 0.01); null without a quota.
    #[schema(required = true, example = 42.5)]
    pub percent: Option<f64>,
    /// The usage expected at `end`: linear over the elapsed part for the
    /// byte modes, the current percentile for `p95`; null without an end.
    #[schema(required = true)]
    pub forecast: Option<Counter>,
    /// The busiest 5-minute slot so far, bytes per second of the larger
    /// direction.
    pub peak_rate: Counter,
    /// The 95th percentile of the 5-minute slots so far (UTC-aligned,
    /// empty slots count as 0), bytes per second of the larger direction.
    pub p95_rate: Counter,
}

fn anchor_shown(effective: &Effective) -> BillingSettings {
    let mut shown = BillingSettings::from(&effective.values);
    if let Some(anchor) = effective.settings.anchor {
        shown.anchor_day = Some(anchor.day());
        shown.time_zone = anchor.zone().name().to_owned();
    }
    shown
}

impl From<&view::NodeBilling> for NodeBilling {
    fn from(billing: &view::NodeBilling) -> Self {
        let effective = &billing.settings;
        let period = &billing.period;
        NodeBilling {
            node_id: effective.node_id.clone(),
            settings: anchor_shown(effective),
            own: effective
                .own
                .fields()
                .iter()
                .map(|f| f.name().to_owned())
                .collect(),
            anchor_source: effective.anchor_source.as_str().to_owned(),
            period: CurrentPeriod {
                start: Time(period.start),
                end: period.end.map(Time),
                upload: period.upload.into(),
                download: period.download.into(),
                usage: period.usage.into(),
                quota: period.quota.map(Counter::from),
                percent: period.percent,
                forecast: period.forecast.map(Counter::from),
                peak_rate: period.peak_rate.into(),
                p95_rate: period.p95_rate.into(),
            },
        }
    }
}

/// A node's closed periods.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeriodList {
    pub node_id: String,
    /// Newest first.
    pub periods: Vec<ArchivedPeriod>,
}

/// What closed a period.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "only documents the values of `closedBy`")]
enum ClosedBy {
    /// The anchor day came.
    Schedule,
    /// A manual reset.
    Request,
}

/// A closed period, `[start, end)`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchivedPeriod {
    pub id: i64,
    pub start: Time,
    pub end: Time,
    pub upload: Counter,
    pub download: Counter,
    /// The mode it was closed under.
    #[schema(value_type = Mode)]
    pub mode: String,
    /// Under `mode`: bytes, or bytes per second for `p95`. Null for a mode
    /// this collector does not know, and for `p95` until its rates are
    /// computed.
    #[schema(required = true)]
    pub usage: Option<Counter>,
    /// Its busiest 5-minute slot, bytes per second of the larger direction;
    /// null until computed (within a minute of the period's close: the
    /// collector reads its history after, outside the locks of the close).
    #[schema(required = true)]
    pub peak_rate: Option<Counter>,
    /// Its 95th percentile 5-minute rate, bytes per second of the larger
    /// direction; null until computed.
    #[schema(required = true)]
    pub p95_rate: Option<Counter>,
    #[schema(value_type = ClosedBy)]
    pub closed_by: String,
    pub closed_at: Time,
}

impl From<&view::Archived> for ArchivedPeriod {
    fn from(period: &view::Archived) -> Self {
        ArchivedPeriod {
            id: period.id,
            start: Time(period.start),
            end: Time(period.end),
            upload: period.upload.into(),
            download: period.download.into(),
            mode: period.mode.clone(),
            usage: period.usage.map(Counter::from),
            peak_rate: period.peak_rate.map(Counter::from),
            p95_rate: period.p95_rate.map(Counter::from),
            closed_by: period.closed_by.clone(),
            closed_at: Time(period.closed_at),
        }
    }
}

/// How many periods.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeriodsQuery {
    /// At most this many, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, example = 100)]
    pub limit: Option<String>,
}

impl PeriodsQuery {
    fn limit(&self) -> Result<u32, Error> {
        match &self.limit {
            None => Ok(view::DEFAULT_LIMIT),
            Some(text) => match text.parse::<i64>() {
                Ok(limit) => view::check_limit(limit),
                Err(_) => Err(Error::InvalidArgument(format!(
                    "limit: {text:?} is not a whole number from 1 to {}",
                    view::MAX_LIMIT
                ))),
            },
        }
    }
}

fn fallback(extension: Option<Extension<PeriodReset>>) -> Option<u32> {
    extension.and_then(|Extension(PeriodReset(day))| day)
}

/// The fleet's billing settings
#[utoipa::path(
    get,
    path = "/api/v1/billing/defaults",
    operation_id = "getBillingDefaults",
    tag = TAG_NODES,
    security((), ("readToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "The fleet's settings", body = BillingDefaults),
        (status = 401, description = "A read token is configured and missing or wrong", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn get_defaults(
    _: Reader,
    State(state): State<AppState>,
) -> Result<Json<BillingDefaults>, Error> {
    let defaults = settings::defaults(&state.pool).await?;
    Ok(Json(BillingDefaults::from(&defaults)))
}

/// Change the fleet's billing settings
///
/// A patch: members absent are unchanged; `null` sets none (`anchorDay`,
/// `quota`) or the built-in default (`UTC`, `sum`, `all`, `[80, 100]`,
/// 12500000000). Every value is checked first: a bad one is a 400 naming
/// it, and nothing changes. A changed anchor day or time zone moves the end
/// of current periods, not their start.
#[utoipa::path(
    put,
    path = "/api/v1/billing/defaults",
    operation_id = "putBillingDefaults",
    tag = TAG_ADMIN,
    request_body = JsonPatch,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The fleet's settings now", body = BillingDefaults),
        (status = 400, description = "A malformed body, an unknown member or a bad value (the message names it)", body = ErrorBody),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 403, description = "The admin API is disabled (no --admin-token)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn put_defaults(
    _: Admin,
    State(state): State<AppState>,
    Body(patch): Body<JsonPatch>,
) -> Result<Json<BillingDefaults>, Error> {
    let patch = patch.parse()?;
    let defaults = settings::update_defaults(&state.pool, &patch).await?;
    Ok(Json(BillingDefaults::from(&defaults)))
}

/// A node's billing settings and current period
#[utoipa::path(
    get,
    path = "/api/v1/nodes/{id}/billing",
    operation_id = "getNodeBilling",
    tag = TAG_NODES,
    params(("id" = String, Path, description = "The node's id")),
    security((), ("readToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "The node's billing", body = NodeBilling),
        (status = 401, description = "A read token is configured and missing or wrong", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn get_node(
    _: Reader,
    State(state): State<AppState>,
    period_reset: Option<Extension<PeriodReset>>,
    Path(id): Path<String>,
) -> Result<Json<NodeBilling>, Error> {
    let billing = view::node(&state.pool, &id, fallback(period_reset), Utc::now()).await?;
    Ok(Json(NodeBilling::from(&billing)))
}

/// Change a node's own billing settings
///
/// A patch of the node's overrides: members absent are unchanged; `null`
/// removes the node's own value (the fleet's applies again). Every value is
/// checked first: a bad one is a 400 naming it, and nothing changes. A
/// changed anchor day or time zone moves the end of the current period,
/// not its start.
#[utoipa::path(
    put,
    path = "/api/v1/nodes/{id}/billing",
    operation_id = "putNodeBilling",
    tag = TAG_ADMIN,
    params(("id" = String, Path, description = "The node's id")),
    request_body = JsonPatch,
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The node's billing now", body = NodeBilling),
        (status = 400, description = "A malformed body, an unknown member or a bad value (the message names it)", body = ErrorBody),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 403, description = "The admin API is disabled (no --admin-token)", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn put_node(
    _: Admin,
    State(state): State<AppState>,
    period_reset: Option<Extension<PeriodReset>>,
    Path(id): Path<String>,
    Body(patch): Body<JsonPatch>,
) -> Result<Json<NodeBilling>, Error> {
    let patch = patch.parse()?;
    settings::patch_node(&state.pool, &id, &patch).await?;
    let billing = view::node(&state.pool, &id, fallback(period_reset), Utc::now()).await?;
    Ok(Json(NodeBilling::from(&billing)))
}

/// A node's closed billing periods
///
/// Newest first, each with its usage under the mode it was closed under.
#[utoipa::path(
    get,
    path = "/api/v1/nodes/{id}/periods",
    operation_id = "listNodePeriods",
    tag = TAG_NODES,
    params(("id" = String, Path, description = "The node's id"), PeriodsQuery),
    security((), ("readToken" = []), ("adminToken" = [])),
    responses(
        (status = 200, description = "The node's closed periods", body = PeriodList),
        (status = 400, description = "A limit out of 1..=1000", body = ErrorBody),
        (status = 401, description = "A read token is configured and missing or wrong", body = ErrorBody),
        (status = 404, description = "No node has this id", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn periods(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<PeriodsQuery>,
) -> Result<Json<PeriodList>, Error> {
    let limit = query.limit()?;
    let periods = view::periods(&state.pool, &id, limit).await?;
    Ok(Json(PeriodList {
        node_id: id,
        periods: periods.iter().map(ArchivedPeriod::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::settings::AnchorSource;

    #[test]
    fn limits_default_and_are_checked() {
        let query = |limit: Option<&str>| PeriodsQuery {
            limit: limit.map(str::to_owned),
        };
        assert_eq!(query(None).limit().ok(), Some(view::DEFAULT_LIMIT));
        assert_eq!(query(Some("7")).limit().ok(), Some(7));
        for bad in ["0", "1001", "ten", "-3", ""] {
            let error = query(Some(bad)).limit().expect_err(bad).to_string();
            assert!(error.starts_with("limit: "), "{error}");
        }
    }

    #[test]
    fn anchor_sources_have_their_documented_names() {
        let names: Vec<_> = [
            AnchorSource::Node,
            AnchorSource::Fleet,
            AnchorSource::PeriodReset,
            AnchorSource::None,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        assert_eq!(names, ["node", "fleet", "periodReset", "none"]);
    }
}
