//! `GET /api/v1/rankings` against a real PostgreSQL and real HTTP: order,
//! ties broken by name, direction, limit, by=period after a reset,
//! by=window counting only recent history, exact counters above 2^53, and
//! the bounds of every parameter.

use crate::common;

use std::time::Duration;

use common::{
    fleet::Fleet,
    http::{Client, Response},
};
use sqlx::PgPool;
use tally_collector::period::{self, Target};

const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);

async fn set_traffic(pool: &PgPool, node: &str, columns: &str, up: i64, down: i64) {
    let (up_column, down_column) = match columns {
        "total" => ("totalUpload", "totalDownload"),
        _ => ("periodUpload", "periodDownload"),
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"UPDATE "traffic_stats" SET "{up_column}" = $1, "{down_column}" = $2 WHERE "nodeId" = $3"#
    )))
    .bind(up)
    .bind(down)
    .bind(node)
    .execute(pool)
    .await
    .expect("set traffic");
}

/// A minute of history `minutes_ago` minutes before the current minute.
async fn history(pool: &PgPool, node: &str, minutes_ago: i32, up: i64, down: i64) {
    sqlx::query(
        r#"INSERT INTO "node_history"
             ("nodeId", "bucket", "upload", "download", "load1", "load5", "load15", "heartbeats")
           VALUES ($1, date_trunc('minute', now() AT TIME ZONE 'UTC') - make_interval(mins => $2),
                   $3, $4, 0, 0, 0, 1)"#,
    )
    .bind(node)
    .bind(minutes_ago)
    .bind(up)
    .bind(down)
    .execute(pool)
    .await
    .expect("history row");
}

/// `(name, upload, download, value)` of each ranked node, in order, and
/// checks the ranks and the shape.
fn ranked(response: &Response) -> Vec<(String, String, String, String)> {
    assert_eq!(response.status, 200, "{}", response.body);
    let rankings = response.json["rankings"].as_array().expect("rankings");
    rankings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r["rank"], i + 1, "{r}");
            let keys: Vec<&str> = r
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys.len(), 6, "{r}");
            assert!(r["id"].is_string());
            let text = |key: &str| {
                r[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("{key} is a string: {r}"))
                    .to_owned()
            };
            (
                text("name"),
                text("upload"),
                text("download"),
                text("value"),
            )
        })
        .collect()
}

fn names(response: &Response) -> Vec<String> {
    ranked(response).into_iter().map(|r| r.0).collect()
}

fn row(name: &str, up: i128, down: i128, value: i128) -> (String, String, String, String) {
    (
        name.to_owned(),
        up.to_string(),
        down.to_string(),
        value.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rankings_order_ties_directions_and_exact_values() {
    let Some(fleet) = Fleet::start("api_rankings").await else {
        return;
    };
    // `c` is enrolled before `b`: its id sorts first, its name after.
    let c = fleet.add_node("c").await;
    let b = fleet.add_node("b").await;
    let a = fleet.add_node("a").await;
    let big = fleet.add_node("big").await;
    let _quiet = fleet.add_node("quiet").await;
    assert!(c.id < b.id);
    let pool = &fleet.pool;
    let above: i64 = (1 << 53) + 1;
    set_traffic(pool, &a.id, "total", 100, 1).await;
    set_traffic(pool, &b.id, "total", 50, 60).await;
    set_traffic(pool, &c.id, "total", 100, 10).await;
    set_traffic(pool, &big.id, "total", above, i64::MAX).await;
    let server = fleet.serve_here().await;
    let api = Client::new(server.http_address);

    // The defaults: by total, both directions, 10 nodes.
    let r = api.get("/api/v1/rankings").await;
    assert_eq!(r.json["by"], "total");
    assert_eq!(r.json["direction"], "both");
    assert_eq!(r.json["limit"], 10);
    assert!(r.json["window"].is_null() && r.json["since"].is_null());
    let both = i128::from(above) + i128::from(i64::MAX);
    assert_eq!(
        ranked(&r),
        [
            row("big", above.into(), i64::MAX.into(), both),
            row("b", 50, 60, 110),
            row("c", 100, 10, 110),
            row("a", 100, 1, 101),
            row("quiet", 0, 0, 0),
        ],
        "value desc, then name (not id)"
    );
    let first = &r.json["rankings"][0];
    assert_eq!(first["id"], big.id.as_str());
    assert_eq!(first["upload"], "9007199254740993", "exact above 2^53");

    let r = api.get("/api/v1/rankings?direction=upload").await;
    assert_eq!(r.json["direction"], "upload");
    assert_eq!(names(&r), ["big", "a", "c", "b", "quiet"]);
    assert_eq!(ranked(&r)[1], row("a", 100, 1, 100));
    let r = api
        .get("/api/v1/rankings?direction=download&by=total")
        .await;
    assert_eq!(names(&r), ["big", "b", "c", "a", "quiet"]);
    assert_eq!(ranked(&r)[0].3, i64::MAX.to_string());

    let r = api.get("/api/v1/rankings?limit=2").await;
    assert_eq!(r.json["limit"], 2);
    assert_eq!(names(&r), ["big", "b"]);
    let r = api.get("/api/v1/rankings?limit=1000&unknown=ignored").await;
    assert_eq!(names(&r).len(), 5);
    let r = api.get("/api/v1/rankings?limit=1").await;
    assert_eq!(names(&r), ["big"]);

    // By period, after a reset of `a`.
    set_traffic(pool, &a.id, "period", 500, 0).await;
    set_traffic(pool, &b.id, "period", 10, 0).await;
    set_traffic(pool, &c.id, "period", 300, 0).await;
    set_traffic(pool, &big.id, "period", 0, 0).await;
    let r = api.get("/api/v1/rankings?by=period&direction=upload").await;
    assert_eq!(names(&r), ["a", "c", "b", "big", "quiet"]);
    period::reset_now(pool, &Target::Node(a.id.clone()))
        .await
        .expect("reset");
    let r = api.get("/api/v1/rankings?by=period&direction=upload").await;
    assert_eq!(r.json["by"], "period");
    assert!(r.json["window"].is_null() && r.json["since"].is_null());
    assert_eq!(names(&r), ["c", "b", "a", "big", "quiet"]);
    assert_eq!(ranked(&r)[2], row("a", 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rankings_by_window_count_only_recent_history() {
    let Some(fleet) = Fleet::start("api_rankings_window").await else {
        return;
    };
    let a = fleet.add_node("a").await;
    let b = fleet.add_node("b").await;
    let _c = fleet.add_node("c").await;
    let pool = &fleet.pool;
    history(pool, &a.id, 10, 5, 1).await;
    history(pool, &a.id, 120, 1000, 0).await;
    history(pool, &b.id, 30, 7, 0).await;
    history(pool, &b.id, 3 * 24 * 60, 1, 0).await;
    // Totals do not count for a window.
    set_traffic(pool, &b.id, "total", 1 << 40, 0).await;
    let server = fleet
        .serve_here_with(|options| options.history_retention = CENTURY)
        .await;
    let api = Client::new(server.http_address);

    let r = api
        .get("/api/v1/rankings?by=window&window=1h&direction=upload")
        .await;
    assert_eq!(r.json["window"], "1h");
    assert_eq!(
        ranked(&r),
        [row("b", 7, 0, 7), row("a", 5, 1, 5), row("c", 0, 0, 0)]
    );
    let since = chrono::DateTime::parse_from_rfc3339(r.json["since"].as_str().expect("since"))
        .expect("since is RFC 3339");
    let ago = chrono::Utc::now().signed_duration_since(since);
    assert!(
        (3595..=3660).contains(&ago.num_seconds()),
        "since is now - 1h: {since}"
    );
    let r = api.get("/api/v1/rankings?by=window&window=3h").await;
    assert_eq!(r.json["window"], "3h");
    assert_eq!(
        ranked(&r),
        [
            row("a", 1005, 1, 1006),
            row("b", 7, 0, 7),
            row("c", 0, 0, 0)
        ]
    );
    // The default window is 24h; a window is shown in its largest unit.
    let r = api.get("/api/v1/rankings?by=window").await;
    assert_eq!(r.json["window"], "24h");
    assert_eq!(names(&r), ["a", "b", "c"]);
    let r = api.get("/api/v1/rankings?by=window&window=90m").await;
    assert_eq!(r.json["window"], "90m");
    assert_eq!(names(&r), ["b", "a", "c"]);
    let r = api.get("/api/v1/rankings?by=window&window=4d").await;
    assert_eq!(r.json["window"], "96h");
    assert_eq!(ranked(&r)[1], row("b", 8, 0, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused_naming_them() {
    let Some(fleet) = Fleet::start("api_rankings_bounds").await else {
        return;
    };
    fleet.add_node("a").await;
    let server = fleet.serve_here().await;
    let api = Client::new(server.http_address);
    let snapshot = || async {
        sqlx::query_scalar::<_, String>(
            r#"SELECT string_agg(row_to_json(t)::text, ',') FROM "traffic_stats" t"#,
        )
        .fetch_one(&fleet.pool)
        .await
        .expect("snapshot")
    };
    let before = snapshot().await;
    for (query, parameter) in [
        ("limit=0", "limit:"),
        ("limit=1001", "limit:"),
        ("limit=x", "limit:"),
        ("limit=-1", "limit:"),
        ("limit=", "limit:"),
        ("limit=99999999999999999999", "limit:"),
        ("by=bogus", "by:"),
        ("by=Total", "by:"),
        ("direction=sideways", "direction:"),
        ("by=window&window=soon", "window:"),
        ("by=window&window=30s", "window:"),
        ("by=window&window=0m", "window:"),
        ("by=window&window=367d", "window:"),
        ("window=1x", "window:"),
        ("limit=1&limit=2", "query string:"),
    ] {
        let r = api.get(&format!("/api/v1/rankings?{query}")).await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert_eq!(r.error_code(), Some("invalid_argument"), "{query}");
        let message = r.json["error"]["message"].as_str().unwrap_or("");
        assert!(message.starts_with(parameter), "{query}: {message}");
    }
    // The bounds themselves are fine.
    for query in [
        "limit=1",
        "limit=1000",
        "by=window&window=1m",
        "by=window&window=366d",
    ] {
        let r = api.get(&format!("/api/v1/rankings?{query}")).await;
        assert_eq!(r.status, 200, "{query}: {}", r.body);
    }
    assert_eq!(snapshot().await, before);
}
