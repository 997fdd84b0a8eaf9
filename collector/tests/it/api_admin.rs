//! The admin endpoints and the tokens against a real PostgreSQL and real
//! HTTP: enrol (201, the token works for heartbeats), duplicate (409), bad
//! names and bodies (400), remove (204/404), period resets; missing, wrong
//! and read tokens refused (401) without changing anything; the admin API
//! disabled without an admin token (403); reads behind a read token.

use crate::common;

use common::{
    fleet::{self, Fleet},
    http::{Client, Response},
};
use sqlx::PgPool;
use tally_collector::http::{TokenSet, Tokens};

const ADMIN: &str = "admin-token-for-the-tests-0123456789";
const READ: &str = "read-token-for-the-tests-0123456789";

/// Every row of `nodes` and `traffic_stats`, as text.
async fn snapshot(pool: &PgPool) -> String {
    sqlx::query_scalar::<_, Option<String>>(
        r#"SELECT string_agg(row_to_json(n)::text || row_to_json(t)::text, ',' ORDER BY n."id")
           FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id""#,
    )
    .fetch_one(pool)
    .await
    .expect("snapshot")
    .unwrap_or_default()
}

fn assert_error(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.body);
    assert_eq!(response.error_code(), Some(code), "{}", response.body);
    assert!(response.json["error"]["message"].is_string());
}

/// Each admin request: (method, path, body).
fn admin_requests(id: &str) -> Vec<(&'static str, String, Option<&'static str>)> {
    vec![
        ("POST", "/api/v1/nodes".into(), Some(r#"{"name": "new"}"#)),
        ("DELETE", format!("/api/v1/nodes/{id}"), None),
        ("POST", format!("/api/v1/nodes/{id}/period/reset"), None),
        ("POST", "/api/v1/period/reset".into(), None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_reading_and_changing() {
    let Some(fleet) = Fleet::start("api_tokens").await else {
        return;
    };
    let node = fleet.add_node("web-1").await;
    sqlx::query(r#"UPDATE "traffic_stats" SET "periodUpload" = 5"#)
        .execute(&fleet.pool)
        .await
        .expect("period counters");
    let server = fleet
        .serve_here_with(|options| {
            // Wrong tokens on purpose, many: not held off here
            // (http_tokens.rs tests that).
            options.tokens = Tokens::with_failure_limit(
                TokenSet {
                    admin: vec![ADMIN.into()],
                    read: vec![READ.into()],
                },
                10_000,
            )
        })
        .await;
    let anonymous = Client::new(server.http_address);
    let admin = anonymous.with_token(Some(ADMIN));
    let reader = anonymous.with_token(Some(READ));
    let wrong = anonymous.with_token(Some("not-the-token"));

    // The admin endpoints refuse every other token, and change nothing.
    let before = snapshot(&fleet.pool).await;
    for (method, path, body) in admin_requests(&node.id) {
        for client in [&anonymous, &wrong, &reader] {
            let response = client.send(method, &path, body).await;
            assert_error(&response, 401, "unauthenticated");
            assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        }
    }
    assert_eq!(snapshot(&fleet.pool).await, before);

    // Reading needs the read token (or the admin token).
    let reads = [
        "/api/v1/nodes".to_owned(),
        format!("/api/v1/nodes/{}", node.id),
        format!("/api/v1/nodes/{}/history", node.id),
        "/api/v1/rankings".to_owned(),
    ];
    for path in &reads {
        assert_error(&anonymous.get(path).await, 401, "unauthenticated");
        assert_error(&wrong.get(path).await, 401, "unauthenticated");
        assert_eq!(reader.get(path).await.status, 200, "{path}");
        assert_eq!(admin.get(path).await.status, 200, "{path}");
    }
    // Refused before the parameters are looked at.
    assert_error(
        &anonymous.get("/api/v1/rankings?limit=0").await,
        401,
        "unauthenticated",
    );
    // The document and health are open.
    assert_eq!(anonymous.get("/api/v1/openapi.json").await.status, 200);
    assert_eq!(anonymous.get("/healthz").await.status, 200);

    // The admin token works on every admin endpoint.
    let added = admin
        .post("/api/v1/nodes", Some(r#"{"name": "new"}"#))
        .await;
    assert_eq!(added.status, 201, "{}", added.body);
    let reset = admin
        .post(&format!("/api/v1/nodes/{}/period/reset", node.id), None)
        .await;
    assert_eq!(reset.status, 200, "{}", reset.body);
    assert_eq!(admin.post("/api/v1/period/reset", None).await.status, 200);
    let removed = admin.delete(&format!("/api/v1/nodes/{}", node.id)).await;
    assert_eq!(removed.status, 204, "{}", removed.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_the_admin_api_is_disabled() {
    let Some(fleet) = Fleet::start("api_no_admin").await else {
        return;
    };
    let node = fleet.add_node("web-1").await;
    let server = fleet.serve_here().await;
    let anonymous = Client::new(server.http_address);
    let before = snapshot(&fleet.pool).await;
    for (method, path, body) in admin_requests(&node.id) {
        for client in [&anonymous, &anonymous.with_token(Some(ADMIN))] {
            assert_error(&client.send(method, &path, body).await, 403, "forbidden");
        }
    }
    assert_eq!(snapshot(&fleet.pool).await, before);
    // Reading is open without a read token.
    assert_eq!(anonymous.get("/api/v1/nodes").await.status, 200);
    assert_eq!(anonymous.get("/api/v1/rankings").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_enrolled_removed_and_reset() {
    let Some(fleet) = Fleet::start("api_admin").await else {
        return;
    };
    let old = fleet.add_node("old").await;
    let server = fleet
        .serve_here_with(|options| {
            options.tokens = Tokens::new(TokenSet {
                admin: vec![ADMIN.into()],
                read: vec![],
            })
        })
        .await;
    let admin = Client::new(server.http_address).with_token(Some(ADMIN));

    // Enrol: 201 with the token, which the node's agent can use at once.
    let added = admin
        .post(
            "/api/v1/nodes",
            Some(r#"{"name": "  web-2  ", "extra": 1}"#),
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.body);
    let keys: Vec<&str> = added
        .json
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["id", "name", "token"]);
    assert_eq!(added.json["name"], "web-2", "trimmed");
    let id = added.json["id"].as_str().expect("id").to_owned();
    let token = added.json["token"].as_str().expect("token").to_owned();
    assert!(token.starts_with(&format!("{id}.")), "{token}");
    let mut client = fleet::client(server.address).await;
    fleet::send(&mut client, Some(&token), fleet::heartbeat("e", 1, 700, 70))
        .await
        .expect("the new token is accepted");
    let node = admin.get(&format!("/api/v1/nodes/{id}")).await;
    assert_eq!(node.json["traffic"]["totalDownload"], "700");

    // Refusals change nothing.
    let before = snapshot(&fleet.pool).await;
    assert_error(
        &admin
            .post("/api/v1/nodes", Some(r#"{"name": "web-2"}"#))
            .await,
        409,
        "already_exists",
    );
    let long = format!(r#"{{"name": "{}"}}"#, "x".repeat(129));
    for body in [
        r#"{"name": ""}"#,
        r#"{"name": "   "}"#,
        r#"{"name": "a\u0001b"}"#,
        long.as_str(),
    ] {
        let response = admin.post("/api/v1/nodes", Some(body)).await;
        assert_error(&response, 400, "invalid_argument");
        let message = response.json["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with("name: a node name is 1 to 128 bytes"),
            "{message}"
        );
    }
    for body in [
        Some("not json"),
        Some("{}"),
        Some(r#"{"name": 5}"#),
        Some("[]"),
        // serde takes an array as a struct, members in order: not here.
        Some(r#"["web-9"]"#),
        None,
    ] {
        let response = admin.post("/api/v1/nodes", body).await;
        assert_error(&response, 400, "invalid_argument");
        let message = response.json["error"]["message"].as_str().unwrap_or("");
        assert!(message.starts_with("request body:"), "{body:?}: {message}");
    }
    assert_error(&admin.delete("/api/v1/nodes/nope").await, 404, "not_found");
    assert_error(&admin.delete("/api/v1/nodes/old").await, 404, "not_found");
    assert_error(
        &admin.post("/api/v1/nodes/nope/period/reset", None).await,
        404,
        "not_found",
    );
    assert_error(
        &admin.post("/api/v1/nodes/old/period/reset", None).await,
        404,
        "not_found",
    );
    assert_eq!(snapshot(&fleet.pool).await, before, "ids only, not names");

    // Reset one node, then all.
    sqlx::query(
        r#"UPDATE "traffic_stats" SET "periodUpload" = 3, "periodDownload" = 4,
             "periodStart" = '2020-01-01'"#,
    )
    .execute(&fleet.pool)
    .await
    .expect("period counters");
    let reset = admin
        .post(&format!("/api/v1/nodes/{id}/period/reset"), None)
        .await;
    assert_eq!(reset.status, 200, "{}", reset.body);
    let list = reset.json["reset"].as_array().expect("reset");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    let start = list[0]["periodStart"].as_str().expect("periodStart");
    assert!(
        start.ends_with('Z') && !start.starts_with("2020"),
        "{start}"
    );
    let (_, total_up, period_down, period_up) = fleet.totals(&id).await;
    assert_eq!((total_up, period_down, period_up), (70, 0, 0));
    assert_eq!(
        fleet.totals(&old.id).await.3,
        3,
        "the other node keeps its period"
    );
    let stored: chrono::NaiveDateTime =
        sqlx::query_scalar(r#"SELECT "periodStart" FROM "traffic_stats" WHERE "nodeId" = $1"#)
            .bind(&id)
            .fetch_one(&fleet.pool)
            .await
            .expect("periodStart");
    assert_eq!(
        stored
            .and_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        start
    );

    let reset = admin.post("/api/v1/period/reset", None).await;
    assert_eq!(reset.status, 200, "{}", reset.body);
    let mut ids = vec![old.id.clone(), id.clone()];
    ids.sort();
    let reset_ids: Vec<_> = reset.json["reset"]
        .as_array()
        .expect("reset")
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(reset_ids, ids);
    assert_eq!(fleet.totals(&old.id).await.3, 0);

    // Remove: 204 without a body, then 404.
    let removed = admin.delete(&format!("/api/v1/nodes/{id}")).await;
    assert_eq!((removed.status, removed.body.as_str()), (204, ""));
    let rows: i64 =
        sqlx::query_scalar(r#"SELECT count(*) FROM "traffic_stats" WHERE "nodeId" = $1"#)
            .bind(&id)
            .fetch_one(&fleet.pool)
            .await
            .expect("count");
    assert_eq!(rows, 0);
    assert_error(
        &admin.delete(&format!("/api/v1/nodes/{id}")).await,
        404,
        "not_found",
    );
    assert_error(
        &admin.get(&format!("/api/v1/nodes/{id}")).await,
        404,
        "not_found",
    );
}
