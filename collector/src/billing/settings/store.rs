//! The billing settings in PostgreSQL: the fleet's row
//! (`billing_defaults`), the nodes' rows (`node_settings`), and patches
//! applied to them. A stored value this collector cannot read is an error,
//! never a default.

use std::str::FromStr;

use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row as _, postgres::PgRow};

use super::model::{AnchorSource, Defaults, Effective, Overrides, SettingsPatch, Values};
use crate::{
    billing::{SETTINGS_COLUMNS, SETTINGS_JOIN, Stored},
    error::Error,
};

/// The log target of the changes, as before the settings were split into
/// modules (log filters and readers keep working).
const LOG_TARGET: &str = "tally_collector::billing::settings";

/// A stored value this collector cannot read (written by a newer
/// version?): reported as a database error, not as the caller's fault.
fn unreadable(what: String) -> Error {
    Error::Database(sqlx::Error::Decode(what.into()))
}

fn stored_day(day: Option<i32>) -> Result<Option<u32>, Error> {
    day.map(|d| u32::try_from(d).map_err(|_| unreadable(format!("stored anchor day {d}"))))
        .transpose()
}

fn stored<T: FromStr>(what: &str, value: Option<String>) -> Result<Option<T>, Error> {
    value
        .map(|v| {
            v.parse()
                .map_err(|_| unreadable(format!("stored {what} {v:?} is unknown")))
        })
        .transpose()
}

impl Values {
    fn from_stored(stored: &Stored) -> Result<Values, Error> {
        let unknown = |what: &str, v: &str| unreadable(format!("stored {what} {v:?} is unknown"));
        Ok(Values {
            anchor_day: stored_day(stored.anchor_day)?,
            time_zone: stored.time_zone.clone(),
            mode: stored
                .mode
                .parse()
                .map_err(|_| unknown("mode", &stored.mode))?,
            count_rule: stored
                .count_rule
                .parse()
                .map_err(|_| unknown("count rule", &stored.count_rule))?,
            quota: stored.quota,
            thresholds: stored.thresholds.clone(),
            max_rate: stored.max_rate,
        })
    }
}

/// The id of the node with this id or name (an id wins over a name).
pub async fn node_id(pool: &PgPool, node: &str) -> Result<String, Error> {
    sqlx::query_scalar(
        r#"SELECT "id" FROM "nodes" WHERE "id" = $1 OR "name" = $1
           ORDER BY ("id" = $1) DESC LIMIT 1"#,
    )
    .bind(node)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| Error::NoSuchNode(node.to_owned()))
}

const DEFAULTS_COLUMNS: &str = r#""anchorDay", "timeZone", "mode", "countRule", "quota",
    "thresholds", "maxRate", "updatedAt""#;

fn defaults_of(row: &PgRow) -> Result<Defaults, Error> {
    let stored = Stored::from_row(row)?;
    Ok(Defaults {
        values: Values::from_stored(&stored)?,
        updated_at: row.try_get("updatedAt")?,
    })
}

fn missing_defaults() -> Error {
    unreadable("the billing_defaults row is missing (run `tally-collector migrate`)".into())
}

/// Binds a patch's fields in the order the update statements take them:
/// for each field, whether it is written, then its value.
trait BindPatch<'q> {
    fn bind_patch(self, patch: &'q SettingsPatch) -> Self;
}

impl<'q> BindPatch<'q> for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_patch(self, patch: &'q SettingsPatch) -> Self {
        let (anchor_set, anchor) = patch.anchor_day.write();
        let (zone_set, zone) = patch.time_zone.write();
        let (mode_set, mode) = patch.mode.write();
        let (rule_set, rule) = patch.count_rule.write();
        let (quota_set, quota) = patch.quota.write();
        let (thresholds_set, thresholds) = patch.thresholds.write();
        let (rate_set, rate) = patch.max_rate.write();
        self.bind(anchor_set)
            .bind(anchor.map(|&d| d as i32))
            .bind(zone_set)
            .bind(zone)
            .bind(mode_set)
            .bind(mode.map(|m| m.as_str()))
            .bind(rule_set)
            .bind(rule.map(|r| r.as_str()))
            .bind(quota_set)
            .bind(quota)
            .bind(thresholds_set)
            .bind(thresholds)
            .bind(rate_set)
            .bind(rate)
    }
}

/// The fleet's defaults.
pub async fn defaults(pool: &PgPool) -> Result<Defaults, Error> {
    let row = sqlx::query(AssertSqlSafe(format!(
        r#"SELECT {DEFAULTS_COLUMNS} FROM "billing_defaults""#
    )))
    .fetch_optional(pool)
    .await?
    .ok_or_else(missing_defaults)?;
    defaults_of(&row)
}

/// Applies `patch` to the fleet's defaults; returns them as they are now.
pub async fn update_defaults(pool: &PgPool, patch: &SettingsPatch) -> Result<Defaults, Error> {
    let patch = patch.check()?.for_fleet();
    let row = sqlx::query(AssertSqlSafe(format!(
        r#"UPDATE "billing_defaults" SET
             "anchorDay" = CASE WHEN $1 THEN $2 ELSE "anchorDay" END,
             "timeZone" = CASE WHEN $3 THEN $4 ELSE "timeZone" END,
             "mode" = CASE WHEN $5 THEN $6 ELSE "mode" END,
             "countRule" = CASE WHEN $7 THEN $8 ELSE "countRule" END,
             "quota" = CASE WHEN $9 THEN $10 ELSE "quota" END,
             "thresholds" = CASE WHEN $11 THEN $12 ELSE "thresholds" END,
             "maxRate" = CASE WHEN $13 THEN $14 ELSE "maxRate" END,
             "updatedAt" = date_trunc('milliseconds', now() AT TIME ZONE 'UTC')
           RETURNING {DEFAULTS_COLUMNS}"#
    )))
    .bind_patch(&patch)
    .fetch_optional(pool)
    .await?
    .ok_or_else(missing_defaults)?;
    let defaults = defaults_of(&row)?;
    tracing::info!(
        target: LOG_TARGET,
        anchor_day = ?defaults.values.anchor_day,
        time_zone = %defaults.values.time_zone,
        mode = %defaults.values.mode,
        count_rule = %defaults.values.count_rule,
        quota = ?defaults.values.quota,
        thresholds = ?defaults.values.thresholds,
        max_rate = defaults.values.max_rate,
        "fleet billing defaults changed"
    );
    Ok(defaults)
}

/// The node's own settings (all `None` when it has none); `NoSuchNode`
/// when there is no node of this id.
pub async fn overrides(pool: &PgPool, node_id: &str) -> Result<Overrides, Error> {
    let mut conn = pool.acquire().await?;
    Ok(effective_in(&mut conn, node_id, None).await?.own)
}

/// The node's effective settings; `fallback_day` is the collector's
/// `--period-reset monthly:DAY`, if any.
pub async fn effective(
    pool: &PgPool,
    node_id: &str,
    fallback_day: Option<u32>,
) -> Result<Effective, Error> {
    let mut conn = pool.acquire().await?;
    effective_in(&mut conn, node_id, fallback_day).await
}

/// As [`effective`], on `conn` (e.g. in a transaction).
pub async fn effective_in(
    conn: &mut PgConnection,
    node_id: &str,
    fallback_day: Option<u32>,
) -> Result<Effective, Error> {
    let row = sqlx::query(AssertSqlSafe(format!(
        r#"SELECT {SETTINGS_COLUMNS},
                  s."anchorDay" AS "ownAnchorDay", s."timeZone" AS "ownTimeZone",
                  s."mode" AS "ownMode", s."countRule" AS "ownCountRule",
                  s."quota" AS "ownQuota", s."thresholds" AS "ownThresholds",
                  s."maxRate" AS "ownMaxRate", s."updatedAt" AS "ownUpdatedAt"
           FROM "nodes" n {SETTINGS_JOIN}
           WHERE n."id" = $1"#
    )))
    .bind(node_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(Error::NoSuchNode(node_id.to_owned()));
    };
    let stored_values = Stored::from_row(&row)?;
    let values = Values::from_stored(&stored_values)?;
    let own = Overrides {
        anchor_day: stored_day(row.try_get("ownAnchorDay")?)?,
        time_zone: row.try_get("ownTimeZone")?,
        mode: stored("mode", row.try_get("ownMode")?)?,
        count_rule: stored("count rule", row.try_get("ownCountRule")?)?,
        quota: row.try_get("ownQuota")?,
        thresholds: row.try_get("ownThresholds")?,
        max_rate: row.try_get("ownMaxRate")?,
        updated_at: row.try_get("ownUpdatedAt")?,
    };
    let settings = stored_values
        .resolve(fallback_day)
        .map_err(|error| unreadable(format!("stored settings of node {node_id}: {error}")))?;
    let anchor_source = match (own.anchor_day, values.anchor_day, fallback_day) {
        (Some(_), _, _) => AnchorSource::Node,
        (None, Some(_), _) => AnchorSource::Fleet,
        (None, None, Some(_)) => AnchorSource::PeriodReset,
        (None, None, None) => AnchorSource::None,
    };
    Ok(Effective {
        node_id: node_id.to_owned(),
        values,
        own,
        settings,
        anchor_source,
    })
}

/// Applies `patch` to the node's own settings (`Change::Clear` removes an
/// override); returns them as they are now. `NoSuchNode` when there is no
/// node of this id. The current period keeps its start whatever changes.
pub async fn patch_node(
    pool: &PgPool,
    node_id: &str,
    patch: &SettingsPatch,
) -> Result<Overrides, Error> {
    let patch = patch.check()?;
    let mut tx = pool.begin().await?;
    let found: Option<String> =
        sqlx::query_scalar(r#"SELECT "id" FROM "nodes" WHERE "id" = $1 FOR SHARE"#)
            .bind(node_id)
            .fetch_optional(&mut *tx)
            .await?;
    if found.is_none() {
        return Err(Error::NoSuchNode(node_id.to_owned()));
    }
    if !patch.is_empty() {
        // A node without a row gets one: what the patch does not set is
        // NULL there, i.e. the fleet's.
        sqlx::query(
            r#"INSERT INTO "node_settings" ("nodeId", "anchorDay", "timeZone", "mode",
                   "countRule", "quota", "thresholds", "maxRate", "updatedAt")
               VALUES ($1, $3, $5, $7, $9, $11, $13, $15,
                       date_trunc('milliseconds', now() AT TIME ZONE 'UTC'))
               ON CONFLICT ("nodeId") DO UPDATE SET
                 "anchorDay" = CASE WHEN $2 THEN $3 ELSE "node_settings"."anchorDay" END,
                 "timeZone" = CASE WHEN $4 THEN $5 ELSE "node_settings"."timeZone" END,
                 "mode" = CASE WHEN $6 THEN $7 ELSE "node_settings"."mode" END,
                 "countRule" = CASE WHEN $8 THEN $9 ELSE "node_settings"."countRule" END,
                 "quota" = CASE WHEN $10 THEN $11 ELSE "node_settings"."quota" END,
                 "thresholds" = CASE WHEN $12 THEN $13 ELSE "node_settings"."thresholds" END,
                 "maxRate" = CASE WHEN $14 THEN $15 ELSE "node_settings"."maxRate" END,
                 "updatedAt" = EXCLUDED."updatedAt""#,
        )
        .bind(node_id)
        .bind_patch(&patch)
        .execute(&mut *tx)
        .await?;
    }
    let own = effective_in(&mut tx, node_id, None).await?.own;
    tx.commit().await?;
    tracing::info!(
        target: LOG_TARGET,
        node = %node_id,
        own = ?own.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
        calendar_changed = patch.moves_the_calendar(),
        "node billing settings changed"
    );
    Ok(own)
}
