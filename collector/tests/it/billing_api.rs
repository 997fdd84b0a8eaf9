//! Billing settings and periods against a real PostgreSQL, over real HTTP
//! and through the real `tally-collector` binary: the fleet's defaults read,
//! changed (fully, partly, cleared) and refused field by field without any
//! change; node overrides resolved against the defaults and cleared; the
//! admin token required for changes; archived periods listed newest first;
//! the current period's end, usage per mode, quota share, forecast and
//! rates from history rows written here.

use crate::common;

use std::process::{Command, Output};

use chrono::{DateTime, Datelike as _, Duration, NaiveDateTime, TimeZone as _, Timelike as _, Utc};
use chrono_tz::Asia::Tokyo;
use common::{
    fleet::Fleet,
    http::{Client, Response},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tally_collector::http::{TokenSet, Tokens};

const ADMIN: &str = "admin-token-for-the-billing-tests-0123";
const READ: &str = "read-token-for-the-billing-tests-0123";

fn tokens() -> Tokens {
    Tokens::new(TokenSet {
        admin: vec![ADMIN.into()],
        read: vec![READ.into()],
    })
}

/// The fleet's row, as text.
async fn defaults_row(pool: &PgPool) -> String {
    sqlx::query_scalar(r#"SELECT row_to_json(d)::text FROM "billing_defaults" d"#)
        .fetch_one(pool)
        .await
        .expect("billing_defaults")
}

/// The node's `node_settings` row as text, or "none".
async fn settings_row(pool: &PgPool, node: &str) -> String {
    sqlx::query_scalar::<_, String>(
        r#"SELECT row_to_json(s)::text FROM "node_settings" s WHERE "nodeId" = $1"#,
    )
    .bind(node)
    .fetch_optional(pool)
    .await
    .expect("node_settings")
    .unwrap_or_else(|| "none".into())
}

fn assert_error(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.body);
    assert_eq!(response.error_code(), Some(code), "{}", response.body);
}

fn message(response: &Response) -> &str {
    response.json["error"]["message"].as_str().unwrap_or("")
}

async fn put(client: &Client, path: &str, body: &Value) -> Response {
    client.send("PUT", path, Some(&body.to_string())).await
}

/// Each member refused, with the start of the message that names it.
fn bad_members() -> Vec<(Value, &'static str)> {
    vec![
        (json!({"anchorDay": 0}), "anchorDay: 0"),
        (json!({"anchorDay": 32}), "anchorDay: 32"),
        (json!({"anchorDay": "15"}), "anchorDay: \"15\""),
        (
            json!({"timeZone": "Mars/Olympus"}),
            "timeZone: \"Mars/Olympus\"",
        ),
        (json!({"timeZone": 3}), "timeZone: 3"),
        (json!({"mode": "median"}), "mode: \"median\""),
        (json!({"countRule": "physical"}), "countRule: \"physical\""),
        (json!({"quota": 0}), "quota: 0"),
        (json!({"quota": -1}), "quota: -1"),
        (json!({"quota": "1TB"}), "quota: \"1TB\""),
        (
            json!({"quota": "9223372036854775808"}),
            "quota: 9223372036854775808",
        ),
        (json!({"thresholds": [0]}), "thresholds: 0"),
        (json!({"thresholds": [1001]}), "thresholds: 1001"),
        (
            json!({"thresholds": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}),
            "thresholds: 11",
        ),
        (json!({"thresholds": "80,100"}), "thresholds: \"80,100\""),
        (json!({"maxRate": 0}), "maxRate: 0"),
        // A good member does not carry a bad one through.
        (json!({"mode": "download", "maxRate": -5}), "maxRate: -5"),
        (json!({"anchor_day": 1}), "request body:"),
        (
            json!([null, null]),
            "request body: a JSON object is expected",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_defaults_are_read_checked_and_changed() {
    let Some(fleet) = Fleet::start("billing_defaults").await else {
        return;
    };
    let server = fleet.serve_here_with(|o| o.tokens = tokens()).await;
    let anonymous = Client::new(server.http_address);
    let reader = anonymous.with_token(Some(READ));
    let admin = anonymous.with_token(Some(ADMIN));
    let path = "/api/v1/billing/defaults";

    // The built-in defaults, counters as decimal strings.
    let got = reader.get(path).await;
    assert_eq!(got.status, 200, "{}", got.body);
    let d = &got.json;
    assert_eq!(d["anchorDay"], Value::Null);
    assert_eq!(d["timeZone"], "UTC");
    assert_eq!(d["mode"], "sum");
    assert_eq!(d["countRule"], "all");
    assert_eq!(d["quota"], Value::Null);
    assert_eq!(d["thresholds"], json!([80, 100]));
    assert_eq!(d["maxRate"], "12500000000");
    assert!(d["updatedAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_error(&anonymous.get(path).await, 401, "unauthenticated");

    // Only the admin token changes them.
    let before = defaults_row(&fleet.pool).await;
    let full = json!({
        "anchorDay": 15, "timeZone": "Europe/Berlin", "mode": "max", "countRule": "uplink",
        "quota": "9007199254740993", "thresholds": [100, 50, 50], "maxRate": 125000000
    });
    for client in [&anonymous, &reader, &anonymous.with_token(Some("wrong"))] {
        assert_error(&put(client, path, &full).await, 401, "unauthenticated");
    }
    assert_eq!(defaults_row(&fleet.pool).await, before);
    // Without an admin token configured, nobody changes them.
    let no_admin = fleet.serve_here().await;
    let closed = Client::new(no_admin.http_address).with_token(Some(ADMIN));
    assert_error(&put(&closed, path, &full).await, 403, "forbidden");
    assert_eq!(defaults_row(&fleet.pool).await, before);

    // A whole set.
    let changed = put(&admin, path, &full).await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let expected = json!({
        "anchorDay": 15, "timeZone": "Europe/Berlin", "mode": "max", "countRule": "uplink",
        "quota": "9007199254740993", "thresholds": [50, 100], "maxRate": "125000000"
    });
    let settings_of = |value: &Value| {
        let mut value = value.clone();
        value.as_object_mut().expect("object").remove("updatedAt");
        value
    };
    assert_eq!(settings_of(&changed.json), expected);
    assert_eq!(settings_of(&reader.get(path).await.json), expected);
    let stored: (i64, Vec<i32>) =
        sqlx::query_as(r#"SELECT "quota", "thresholds" FROM "billing_defaults""#)
            .fetch_one(&fleet.pool)
            .await
            .expect("row");
    assert_eq!(stored, (9_007_199_254_740_993, vec![50, 100]), "exact");

    // Part of it: the rest stays.
    let part = put(&admin, path, &json!({"quota": 5000, "mode": "download"})).await;
    assert_eq!(part.status, 200, "{}", part.body);
    let mut expected = expected;
    expected["quota"] = json!("5000");
    expected["mode"] = json!("download");
    assert_eq!(settings_of(&part.json), expected);

    // Each bad member: a 400 naming it, and nothing changes.
    let before = defaults_row(&fleet.pool).await;
    for (body, named) in bad_members() {
        let refused = put(&admin, path, &body).await;
        assert_error(&refused, 400, "invalid_argument");
        assert!(
            message(&refused).starts_with(named),
            "{body}: {}",
            refused.body
        );
    }
    let unknown = put(&admin, path, &json!({"anchor_day": 1})).await;
    assert!(message(&unknown).contains("anchor_day"), "{}", unknown.body);
    assert_error(
        &admin.send("PUT", path, Some("{")).await,
        400,
        "invalid_argument",
    );
    assert_eq!(defaults_row(&fleet.pool).await, before);

    // null: none, or the built-in default.
    let cleared = put(
        &admin,
        path,
        &json!({"anchorDay": null, "quota": null, "timeZone": null, "mode": null,
                "thresholds": null, "maxRate": null}),
    )
    .await;
    assert_eq!(cleared.status, 200, "{}", cleared.body);
    assert_eq!(
        settings_of(&cleared.json),
        json!({
            "anchorDay": null, "timeZone": "UTC", "mode": "sum", "countRule": "uplink",
            "quota": null, "thresholds": [80, 100], "maxRate": "12500000000"
        })
    );
    // No thresholds at all is a choice too.
    let none = put(&admin, path, &json!({"thresholds": []})).await;
    assert_eq!(none.json["thresholds"], json!([]), "{}", none.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_overrides_resolve_against_the_fleet_and_clear() {
    let Some(fleet) = Fleet::start("billing_overrides").await else {
        return;
    };
    let web = fleet.add_node("web-1").await;
    let db = fleet.add_node("db-1").await;
    let server = fleet.serve_here_with(|o| o.tokens = tokens()).await;
    let anonymous = Client::new(server.http_address);
    let reader = anonymous.with_token(Some(READ));
    let admin = anonymous.with_token(Some(ADMIN));
    let web_path = format!("/api/v1/nodes/{}/billing", web.id);
    let db_path = format!("/api/v1/nodes/{}/billing", db.id);
    let fleet_path = "/api/v1/billing/defaults";

    let set = put(
        &admin,
        fleet_path,
        &json!({"anchorDay": 1, "quota": 1000, "thresholds": [90]}),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.body);

    // Without overrides, the fleet's values.
    let got = reader.get(&web_path).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.json["nodeId"], web.id.as_str());
    assert_eq!(got.json["own"], json!([]));
    assert_eq!(got.json["anchorSource"], "fleet");
    assert_eq!(got.json["settings"]["anchorDay"], 1);
    assert_eq!(got.json["settings"]["quota"], "1000");
    assert_eq!(got.json["settings"]["thresholds"], json!([90]));
    assert_eq!(settings_row(&fleet.pool, &web.id).await, "none");

    // The node's own values.
    let changed = put(
        &admin,
        &web_path,
        &json!({"anchorDay": 15, "timeZone": "Asia/Tokyo", "mode": "p95"}),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let s = &changed.json["settings"];
    assert_eq!(
        changed.json["own"],
        json!(["anchorDay", "timeZone", "mode"])
    );
    assert_eq!(changed.json["anchorSource"], "node");
    assert_eq!(
        (&s["anchorDay"], &s["timeZone"], &s["mode"], &s["quota"]),
        (
            &json!(15),
            &json!("Asia/Tokyo"),
            &json!("p95"),
            &json!("1000")
        )
    );
    let row: (Option<i32>, Option<String>, Option<String>, Option<i64>) = sqlx::query_as(
        r#"SELECT "anchorDay", "timeZone", "mode", "quota" FROM "node_settings"
           WHERE "nodeId" = $1"#,
    )
    .bind(&web.id)
    .fetch_one(&fleet.pool)
    .await
    .expect("row");
    assert_eq!(
        row,
        (
            Some(15),
            Some("Asia/Tokyo".into()),
            Some("p95".into()),
            None
        ),
        "only what was set is the node's"
    );

    // The fleet's changes reach what the node inherits, not its own.
    let fleet_change = put(&admin, fleet_path, &json!({"quota": 2000, "mode": "max"})).await;
    assert_eq!(fleet_change.status, 200, "{}", fleet_change.body);
    let got = reader.get(&web_path).await;
    assert_eq!(got.json["settings"]["quota"], "2000");
    assert_eq!(got.json["settings"]["mode"], "p95");
    let other = reader.get(&db_path).await;
    assert_eq!(other.json["settings"]["mode"], "max", "{}", other.body);
    assert_eq!(other.json["own"], json!([]));

    // A node's own quota wins over the fleet's.
    let own_quota = put(&admin, &web_path, &json!({"quota": "500"})).await;
    assert_eq!(
        own_quota.json["settings"]["quota"], "500",
        "{}",
        own_quota.body
    );
    assert_eq!(
        own_quota.json["own"],
        json!(["anchorDay", "timeZone", "mode", "quota"]),
        "what the patch leaves out stays"
    );
    assert_eq!(own_quota.json["settings"]["mode"], "p95");
    put(&admin, fleet_path, &json!({"quota": 3000})).await;
    assert_eq!(reader.get(&web_path).await.json["settings"]["quota"], "500");
    assert_eq!(reader.get(&db_path).await.json["settings"]["quota"], "3000");

    // null clears an override: the fleet's value applies again.
    let cleared = put(&admin, &web_path, &json!({"mode": null, "anchorDay": null})).await;
    assert_eq!(cleared.status, 200, "{}", cleared.body);
    assert_eq!(cleared.json["own"], json!(["timeZone", "quota"]));
    assert_eq!(cleared.json["settings"]["mode"], "max");
    assert_eq!(cleared.json["settings"]["anchorDay"], 1);
    assert_eq!(cleared.json["anchorSource"], "fleet");
    assert_eq!(cleared.json["settings"]["timeZone"], "Asia/Tokyo");

    // An empty patch changes nothing.
    let before = settings_row(&fleet.pool, &web.id).await;
    let empty = put(&admin, &web_path, &json!({})).await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(settings_row(&fleet.pool, &web.id).await, before);

    // Bad members: 400 naming them, nothing changes (a node without a row
    // gets none).
    for (body, named) in bad_members() {
        let refused = put(&admin, &web_path, &body).await;
        assert_error(&refused, 400, "invalid_argument");
        assert!(
            message(&refused).starts_with(named),
            "{body}: {}",
            refused.body
        );
        assert_error(&put(&admin, &db_path, &body).await, 400, "invalid_argument");
    }
    assert_eq!(settings_row(&fleet.pool, &web.id).await, before);
    assert_eq!(settings_row(&fleet.pool, &db.id).await, "none");

    // The admin token only.
    for client in [&anonymous, &reader] {
        let refused = put(client, &web_path, &json!({"mode": "sum"})).await;
        assert_error(&refused, 401, "unauthenticated");
    }
    assert_eq!(settings_row(&fleet.pool, &web.id).await, before);
    assert_error(&anonymous.get(&web_path).await, 401, "unauthenticated");

    // Unknown nodes (the API takes ids, as elsewhere).
    for path in ["/api/v1/nodes/nope/billing", "/api/v1/nodes/web-1/billing"] {
        assert_error(&reader.get(path).await, 404, "not_found");
        let refused = put(&admin, path, &json!({"mode": "sum"})).await;
        assert_error(&refused, 404, "not_found");
    }
    let rows: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM "node_settings""#)
        .fetch_one(&fleet.pool)
        .await
        .expect("count");
    assert_eq!(rows, 1);
}

/// Writes a closed period of `node`.
#[allow(clippy::too_many_arguments)]
async fn archive(
    pool: &PgPool,
    node: &str,
    start: &str,
    end: &str,
    (upload, download): (i64, i64),
    (peak, p95): (i64, i64),
    mode: &str,
    closed_by: &str,
) {
    let at = |t: &str| {
        DateTime::parse_from_rfc3339(t)
            .expect("RFC 3339")
            .naive_utc()
    };
    sqlx::query(
        r#"INSERT INTO "billing_periods" ("nodeId", "start", "end", "upload", "download",
               "peakRate", "p95Rate", "mode", "closedBy", "closedAt")
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $3)"#,
    )
    .bind(node)
    .bind(at(start))
    .bind(at(end))
    .bind(upload)
    .bind(download)
    .bind(peak)
    .bind(p95)
    .bind(mode)
    .bind(closed_by)
    .execute(pool)
    .await
    .expect("billing_periods row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_periods_are_listed_newest_first() {
    let Some(fleet) = Fleet::start("billing_periods").await else {
        return;
    };
    let web = fleet.add_node("web-1").await;
    let other = fleet.add_node("other").await;
    let big = (1_i64 << 53) + 1;
    archive(
        &fleet.pool,
        &web.id,
        "2026-08-01T00:00:00Z",
        "2026-09-01T00:00:00Z",
        (big, 300),
        (50, 40),
        "sum",
        "schedule",
    )
    .await;
    archive(
        &fleet.pool,
        &web.id,
        "2026-10-01T00:00:00Z",
        "2026-10-15T12:30:00Z",
        (7, 9),
        (70, 33),
        "p95",
        "request",
    )
    .await;
    archive(
        &fleet.pool,
        &web.id,
        "2026-09-01T00:00:00Z",
        "2026-10-01T00:00:00Z",
        (500, 200),
        (60, 45),
        "max",
        "schedule",
    )
    .await;
    archive(
        &fleet.pool,
        &other.id,
        "2026-10-01T00:00:00Z",
        "2026-11-01T00:00:00Z",
        (1, 1),
        (1, 1),
        "sum",
        "schedule",
    )
    .await;
    let server = fleet.serve_here_with(|o| o.tokens = tokens()).await;
    let anonymous = Client::new(server.http_address);
    let reader = anonymous.with_token(Some(READ));
    let path = format!("/api/v1/nodes/{}/periods", web.id);

    let listed = reader.get(&path).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.json["nodeId"], web.id.as_str());
    let periods = listed.json["periods"].as_array().expect("periods");
    let starts: Vec<_> = periods.iter().map(|p| p["start"].clone()).collect();
    assert_eq!(
        starts,
        [
            "2026-10-01T00:00:00.000Z",
            "2026-09-01T00:00:00.000Z",
            "2026-08-01T00:00:00.000Z"
        ],
        "newest first, this node's only"
    );
    let first = &periods[0];
    assert_eq!(first["end"], "2026-10-15T12:30:00.000Z");
    assert_eq!(first["mode"], "p95");
    assert_eq!(first["usage"], "33", "p95: the 95th percentile rate");
    assert_eq!(first["peakRate"], "70");
    assert_eq!(first["p95Rate"], "33");
    assert_eq!(first["closedBy"], "request");
    assert_eq!(first["closedAt"], "2026-10-15T12:30:00.000Z");
    assert!(first["id"].is_i64());
    assert_eq!(periods[1]["usage"], "500", "max: the larger direction");
    assert_eq!(periods[2]["upload"], big.to_string().as_str(), "exact");
    assert_eq!(
        periods[2]["usage"],
        (big + 300).to_string().as_str(),
        "sum: both"
    );

    let limited = reader.get(&format!("{path}?limit=2")).await;
    let limited = limited.json["periods"].as_array().expect("periods");
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[1]["start"], "2026-09-01T00:00:00.000Z");
    for bad in ["0", "1001", "many", "-1"] {
        let refused = reader.get(&format!("{path}?limit={bad}")).await;
        assert_error(&refused, 400, "invalid_argument");
        assert!(message(&refused).starts_with("limit: "), "{}", refused.body);
    }
    assert_error(
        &reader.get("/api/v1/nodes/nope/periods").await,
        404,
        "not_found",
    );
    assert_error(&anonymous.get(&path).await, 401, "unauthenticated");
    let fresh = fleet.add_node("fresh").await;
    let empty = reader
        .get(&format!("/api/v1/nodes/{}/periods", fresh.id))
        .await;
    assert_eq!(empty.json["periods"], json!([]), "{}", empty.body);
}

/// A minute of a node's history.
async fn history(pool: &PgPool, node: &str, bucket: NaiveDateTime, upload: i64, download: i64) {
    sqlx::query(
        r#"INSERT INTO "node_history" ("nodeId", "bucket", "upload", "download", "load1",
               "load5", "load15", "heartbeats")
           VALUES ($1, $2, $3, $4, 0, 0, 0, 1)"#,
    )
    .bind(node)
    .bind(bucket)
    .bind(upload)
    .bind(download)
    .execute(pool)
    .await
    .expect("node_history row");
}

fn counter(value: &Value) -> i64 {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a counter: {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_period_shows_usage_quota_forecast_and_rates() {
    let Some(fleet) = Fleet::start("billing_current").await else {
        return;
    };
    let web = fleet.add_node("web-1").await;
    let open = fleet.add_node("open").await;

    // The period began two hours ago, at a 5-minute slot's start: 24 full
    // slots and the one now is in, so the 95th percentile is the second
    // largest rate of each direction.
    let now = Utc::now();
    let slot = now.timestamp() - now.timestamp().rem_euclid(300);
    let start = DateTime::from_timestamp(slot, 0).expect("time") - Duration::hours(2);
    let start_naive = start.naive_utc();
    sqlx::query(
        r#"UPDATE "traffic_stats" SET "periodStart" = $1, "periodUpload" = 3000,
             "periodDownload" = 1000 WHERE "nodeId" = $2"#,
    )
    .bind(start_naive)
    .bind(&web.id)
    .execute(&fleet.pool)
    .await
    .expect("traffic");
    let minute = |m: i64| start_naive + Duration::minutes(m);
    // Upload: 1000 B/s (two minutes of one slot), then 400 B/s; download:
    // 700 B/s once. Before the period: ignored.
    history(&fleet.pool, &web.id, minute(5), 300 * 600, 0).await;
    history(&fleet.pool, &web.id, minute(6), 300 * 400, 0).await;
    history(&fleet.pool, &web.id, minute(30), 0, 300 * 700).await;
    history(&fleet.pool, &web.id, minute(60), 300 * 400, 0).await;
    history(&fleet.pool, &web.id, minute(-10), 300 * 99_999, 0).await;

    // Anchored in Tokyo on the day ten days after the start's (local)
    // date: the period ends at that local midnight.
    let local_start = start.with_timezone(&Tokyo).date_naive();
    let end_date = local_start + Duration::days(10);
    let end = Tokyo
        .from_local_datetime(&end_date.and_hms_opt(0, 0, 0).expect("midnight"))
        .single()
        .expect("Tokyo has no DST")
        .with_timezone(&Utc);
    let server = fleet.serve_here_with(|o| o.tokens = tokens()).await;
    let client = Client::new(server.http_address).with_token(Some(READ));
    let admin = client.with_token(Some(ADMIN));
    let path = format!("/api/v1/nodes/{}/billing", web.id);
    let set = put(
        &admin,
        &path,
        &json!({"anchorDay": end_date.day(), "timeZone": "Asia/Tokyo", "quota": 8000}),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.body);

    let before = Utc::now();
    let got = client.get(&path).await;
    let after = Utc::now();
    assert_eq!(got.status, 200, "{}", got.body);
    let period = &got.json["period"];
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(period["start"], time(start).as_str());
    assert_eq!(period["end"], time(end).as_str(), "{}", got.body);
    assert_eq!(end.with_timezone(&Tokyo).hour(), 0);
    assert_eq!(period["upload"], "3000");
    assert_eq!(period["download"], "1000");
    assert_eq!(period["usage"], "4000", "sum");
    assert_eq!(period["quota"], "8000");
    assert_eq!(period["percent"], 50.0);
    assert_eq!(period["peakRate"], "1000");
    assert_eq!(
        period["p95Rate"], "400",
        "the larger of each direction's percentile (upload 400, download 0)"
    );
    // Linear over the elapsed part, within what the request's time allows.
    let length = (end - start).num_milliseconds() as f64;
    let bound = |at: DateTime<Utc>| 4000.0 * length / (at - start).num_milliseconds() as f64;
    let forecast = counter(&period["forecast"]) as f64;
    assert!(
        bound(after) - 1.0 <= forecast && forecast <= bound(before) + 1.0,
        "forecast {forecast} not within [{}, {}]",
        bound(after),
        bound(before)
    );

    // Usage by mode (and the quota's share of it).
    for (mode, usage) in [
        ("max", 3000),
        ("upload", 3000),
        ("download", 1000),
        ("p95", 400),
    ] {
        let changed = put(&admin, &path, &json!({"mode": mode})).await;
        assert_eq!(changed.status, 200, "{}", changed.body);
        let period = &changed.json["period"];
        assert_eq!(counter(&period["usage"]), usage, "{mode}");
        assert_eq!(
            period["percent"].as_f64(),
            Some(usage as f64 * 100.0 / 8000.0),
            "{mode}"
        );
    }
    let p95 = client.get(&path).await;
    assert_eq!(
        p95.json["period"]["forecast"], "400",
        "p95: the current percentile"
    );

    // Without an anchor or a quota: no end, no forecast, no share.
    let open = client
        .get(&format!("/api/v1/nodes/{}/billing", open.id))
        .await;
    assert_eq!(open.status, 200, "{}", open.body);
    let period = &open.json["period"];
    assert_eq!(open.json["anchorSource"], "none");
    assert_eq!(period["end"], Value::Null);
    assert_eq!(period["forecast"], Value::Null);
    assert_eq!(period["percent"], Value::Null);
    assert_eq!(period["quota"], Value::Null);
    assert_eq!(period["usage"], "0");
}

fn collector(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally-collector"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TALLY_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).env("DATABASE_URL", url).env("NO_COLOR", "1");
    cmd
}

fn run(url: &str, args: &[&str]) -> Output {
    collector(url, args).output().expect("run tally-collector")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout.clone()).expect("UTF-8")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).expect("JSON")
}

/// The text line that starts with `label`.
fn text_line<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_shows_and_changes_settings_and_lists_periods() {
    let Some(fleet) = Fleet::start("billing_cli").await else {
        return;
    };
    let url = fleet.url.clone();
    let web = fleet.add_node("web-1").await;

    // The fleet's defaults: shown, then changed.
    let text = ok(&run(&url, &["billing", "defaults"]));
    assert!(text_line(&text, "mode").ends_with(" sum"), "{text}");
    assert!(text_line(&text, "anchor day").contains("none"), "{text}");
    let changed = json_of(&run(
        &url,
        &[
            "billing",
            "defaults",
            "--anchor-day",
            "1",
            "--quota",
            "1TiB",
            "--json",
        ],
    ));
    assert_eq!(changed["anchorDay"], 1);
    assert_eq!(changed["quota"], "1099511627776");
    let quota: Option<i64> = sqlx::query_scalar(r#"SELECT "quota" FROM "billing_defaults""#)
        .fetch_one(&fleet.pool)
        .await
        .expect("quota");
    assert_eq!(quota, Some(1 << 40));

    // A node's own settings, by name, with units.
    let text = ok(&run(
        &url,
        &[
            "billing",
            "set",
            "web-1",
            "--anchor-day",
            "15",
            "--time-zone",
            "Asia/Tokyo",
            "--mode",
            "max",
            "--quota",
            "500GiB",
            "--thresholds",
            "90,50",
            "--max-rate",
            "10Gbit",
            "--count-rule",
            "uplink",
        ],
    ));
    assert!(text.contains("billing settings of web-1 changed"), "{text}");
    assert!(text.contains("keeps its start"), "{text}");
    assert!(text_line(&text, "mode").contains("max (own)"), "{text}");
    assert!(
        text_line(&text, "quota").contains("= 536870912000 bytes (own)"),
        "{text}"
    );
    assert!(text_line(&text, "start").contains("JST"), "{text}");
    let row: (i32, String, String, String, i64, Vec<i32>, i64) = sqlx::query_as(
        r#"SELECT "anchorDay", "timeZone", "mode", "countRule", "quota", "thresholds",
                  "maxRate" FROM "node_settings" WHERE "nodeId" = $1"#,
    )
    .bind(&web.id)
    .fetch_one(&fleet.pool)
    .await
    .expect("row");
    assert_eq!(
        row,
        (
            15,
            "Asia/Tokyo".into(),
            "max".into(),
            "uplink".into(),
            536_870_912_000,
            vec![50, 90],
            1_250_000_000
        )
    );
    let shown = json_of(&run(&url, &["billing", "show", &web.id, "--json"]));
    assert_eq!(
        shown["own"],
        json!([
            "anchorDay",
            "timeZone",
            "mode",
            "countRule",
            "quota",
            "thresholds",
            "maxRate"
        ])
    );
    assert_eq!(shown["settings"]["maxRate"], "1250000000");

    // Clearing: the fleet's values apply again.
    ok(&run(
        &url,
        &[
            "billing",
            "set",
            "web-1",
            "--clear",
            "quota,mode",
            "--clear",
            "anchor-day",
        ],
    ));
    let shown = json_of(&run(&url, &["billing", "show", "web-1", "--json"]));
    assert_eq!(shown["settings"]["quota"], "1099511627776");
    assert_eq!(shown["settings"]["mode"], "sum");
    assert_eq!(shown["anchorSource"], "fleet");
    let text = ok(&run(&url, &["billing", "show", "web-1"]));
    assert!(text_line(&text, "mode").contains("sum (fleet)"), "{text}");

    // Refusals name the option and change nothing.
    let before = settings_row(&fleet.pool, &web.id).await;
    for (args, named) in [
        (&["--anchor-day", "40"][..], "--anchor-day"),
        (&["--time-zone", "Mars/Olympus"], "--time-zone"),
        (&["--quota", "1G"], "--quota"),
        (&["--quota", "0"], "--quota"),
        (&["--thresholds", "80,2000"], "--thresholds"),
        (&["--mode", "median"], "--mode"),
        (&["--clear", "colour"], "--clear"),
        (&["--quota", "1TB", "--clear", "quota"], "--clear quota"),
        (&[], "at least one setting"),
    ] {
        let out = run(&url, &[&["billing", "set", "web-1"][..], args].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    let out = run(&url, &["billing", "set", "nobody", "--mode", "sum"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node \"nobody\""));
    assert_eq!(settings_row(&fleet.pool, &web.id).await, before);

    // Without an anchor anywhere, the --period-reset day applies (in UTC),
    // from the option or the serve command's variable.
    ok(&run(
        &url,
        &["billing", "defaults", "--clear", "anchor-day"],
    ));
    let shown = json_of(&run(&url, &["billing", "show", "web-1", "--json"]));
    assert_eq!(shown["anchorSource"], "none");
    assert_eq!(shown["period"]["end"], Value::Null);
    let shown = json_of(&run(
        &url,
        &[
            "billing",
            "show",
            "web-1",
            "--json",
            "--period-reset",
            "monthly:5",
        ],
    ));
    assert_eq!(shown["anchorSource"], "periodReset");
    assert_eq!(
        (
            &shown["settings"]["anchorDay"],
            &shown["settings"]["timeZone"]
        ),
        (&json!(5), &json!("UTC"))
    );
    let out = collector(&url, &["billing", "show", "web-1", "--json"])
        .env("TALLY_PERIOD_RESET", "monthly:7")
        .output()
        .expect("run");
    assert_eq!(json_of(&out)["settings"]["anchorDay"], 7);
    let text = ok(&run(
        &url,
        &["billing", "show", "web-1", "--period-reset", "monthly:7"],
    ));
    assert!(
        text_line(&text, "anchor day").contains("7 in UTC"),
        "{text}"
    );
    assert!(
        text_line(&text, "time zone").starts_with("time zone   UTC"),
        "{text}"
    );

    // A period the store has not closed yet ends where its anchor says,
    // after its start (not after now); its forecast is its usage.
    ok(&run(
        &url,
        &[
            "billing",
            "set",
            "web-1",
            "--anchor-day",
            "1",
            "--time-zone",
            "UTC",
        ],
    ));
    sqlx::query(
        r#"UPDATE "traffic_stats" SET "periodStart" = '2026-01-10 08:00', "periodUpload" = 10,
             "periodDownload" = 20 WHERE "nodeId" = $1"#,
    )
    .bind(&web.id)
    .execute(&fleet.pool)
    .await
    .expect("traffic");
    let shown = json_of(&run(&url, &["billing", "show", "web-1", "--json"]));
    let period = &shown["period"];
    assert_eq!(period["start"], "2026-01-10T08:00:00.000Z");
    assert_eq!(period["end"], "2026-02-01T00:00:00.000Z");
    assert_eq!(
        (&period["usage"], &period["forecast"]),
        (&json!("30"), &json!("30"))
    );

    // Closed periods.
    assert_eq!(ok(&run(&url, &["periods", "web-1"])), "no closed periods\n");
    archive(
        &fleet.pool,
        &web.id,
        "2026-09-01T00:00:00Z",
        "2026-10-01T00:00:00Z",
        (500, 200),
        (60, 45),
        "max",
        "schedule",
    )
    .await;
    archive(
        &fleet.pool,
        &web.id,
        "2026-10-01T00:00:00Z",
        "2026-10-15T12:30:00Z",
        (7, 9),
        (70, 33),
        "sum",
        "request",
    )
    .await;
    let text = ok(&run(&url, &["periods", "web-1"]));
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0][0], "START", "{text}");
    assert_eq!(
        lines[1],
        [
            "2026-10-01",
            "00:00:00",
            "2026-10-15",
            "12:30:00",
            "request",
            "sum",
            "7",
            "9",
            "16",
            "70",
            "33"
        ]
    );
    assert_eq!(
        lines[2][4..],
        ["schedule", "max", "500", "200", "500", "60", "45"]
    );
    let listed = json_of(&run(&url, &["periods", &web.id, "--limit", "1", "--json"]));
    assert_eq!(listed["periods"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["periods"][0]["usage"], "16");
    let out = run(&url, &["periods", "web-1", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(&url, &["periods", "nobody"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}
