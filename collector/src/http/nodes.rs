//! `GET /api/v1/nodes`: every node with its status, load and traffic (the
//! seed's field names; counters as decimal strings).

use axum::{Json, extract::State};
use chrono::{NaiveDateTime, Utc};
use serde::Serialize;
use sqlx::Row as _;

use super::{AppState, auth::Reader};
use crate::error::Error;

#[derive(Debug, Serialize)]
pub struct NodesResponse {
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub id: String,
    pub name: String,
    pub hostname: Option<String>,
    pub online: bool,
    pub last_seen: Option<String>,
    pub load: Option<Load>,
    pub kernel: Option<String>,
    pub agent_version: Option<String>,
    pub source: Option<String>,
    pub traffic: Traffic,
}

#[derive(Debug, Serialize)]
pub struct Load {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// The seed's `traffic_stats` fields, BIGINTs as decimal strings.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    pub total_upload: String,
    pub total_download: String,
    pub period_upload: String,
    pub period_download: String,
    pub period_start: String,
    pub updated_at: String,
}

/// RFC 3339 in UTC, milliseconds, as the seed's TIMESTAMP(3) holds them.
fn rfc3339(t: NaiveDateTime) -> String {
    t.and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub async fn list(_: Reader, State(state): State<AppState>) -> Result<Json<NodesResponse>, Error> {
    let rows = sqlx::query(
        r#"SELECT n."id", n."name", n."hostname", n."lastSeen", n."load1", n."load5",
                  n."load15", n."kernel", n."agentVersion", n."source",
                  t."totalUpload", t."totalDownload", t."periodUpload", t."periodDownload",
                  t."periodStart", t."updatedAt"
           FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id"
           ORDER BY n."name", n."id""#,
    )
    .fetch_all(&state.pool)
    .await?;
    let now = Utc::now().naive_utc();
    let offline_after =
        chrono::Duration::from_std(state.offline_after).unwrap_or(chrono::Duration::MAX);
    let nodes = rows
        .iter()
        .map(|row| {
            let last_seen: Option<NaiveDateTime> = row.try_get("lastSeen")?;
            let load = match (
                row.try_get::<Option<f64>, _>("load1")?,
                row.try_get::<Option<f64>, _>("load5")?,
                row.try_get::<Option<f64>, _>("load15")?,
            ) {
                (Some(one), Some(five), Some(fifteen)) => Some(Load { one, five, fifteen }),
                _ => None,
            };
            let big = |c: &str| row.try_get::<i64, _>(c).map(|v| v.to_string());
            Ok(NodeView {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                hostname: row.try_get("hostname")?,
                online: last_seen.is_some_and(|seen| now - seen <= offline_after),
                last_seen: last_seen.map(rfc3339),
                load,
                kernel: row.try_get("kernel")?,
                agent_version: row.try_get("agentVersion")?,
                source: row.try_get("source")?,
                traffic: Traffic {
                    total_upload: big("totalUpload")?,
                    total_download: big("totalDownload")?,
                    period_upload: big("periodUpload")?,
                    period_download: big("periodDownload")?,
                    period_start: rfc3339(row.try_get("periodStart")?),
                    updated_at: rfc3339(row.try_get("updatedAt")?),
                },
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Json(NodesResponse { nodes }))
}
