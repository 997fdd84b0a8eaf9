//! The HTTP side against a real PostgreSQL and real HTTP: health,
//! readiness, `GET /api/v1/nodes` (seed field names, counters as decimal
//! strings, exact above 2^53), JSON errors.

mod common;

use std::net::SocketAddr;

use common::fleet::{self, Fleet};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// `GET path` over HTTP/1.1: (status, JSON body).
async fn get(address: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: tally\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8(response).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_the_node_list() {
    let Some(fleet) = Fleet::start("http_nodes").await else {
        return;
    };
    let quiet = fleet.add_node("quiet").await;
    let busy = fleet.add_node("busy").await;
    let server = fleet.serve_here().await;
    let http = server.http_address;

    assert_eq!(get(http, "/healthz").await.0, 200);
    let (status, body) = get(http, "/readyz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));

    let mut client = fleet::client(server.address).await;
    fleet::send(
        &mut client,
        Some(&busy.token),
        fleet::heartbeat("e", 1, 1000, 10),
    )
    .await
    .expect("applied");
    // Above 2^53, where a JSON number would lose the last digits.
    let big: i64 = (1 << 53) + 1;
    sqlx::query(r#"UPDATE "traffic_stats" SET "totalUpload" = $1 WHERE "nodeId" = $2"#)
        .bind(big)
        .bind(&quiet.id)
        .execute(&fleet.pool)
        .await
        .expect("set a big counter");

    let (status, body) = get(http, "/api/v1/nodes").await;
    assert_eq!(status, 200, "{body}");
    let nodes = body["nodes"].as_array().expect("nodes array");
    assert_eq!(nodes.len(), 2);
    let (b, q) = (&nodes[0], &nodes[1]);
    assert_eq!(
        (b["name"].as_str(), q["name"].as_str()),
        (Some("busy"), Some("quiet"))
    );
    assert_eq!(b["online"], true);
    assert_eq!(q["online"], false, "never heard from");
    assert_eq!(b["hostname"], "test-host");
    assert_eq!(b["load"]["one"], 0.5);
    assert!(q["load"].is_null());
    assert_eq!(b["traffic"]["totalDownload"], "1000");
    assert_eq!(b["traffic"]["totalUpload"], "10");
    assert_eq!(b["traffic"]["periodDownload"], "1000");
    assert_eq!(q["traffic"]["totalUpload"], "9007199254740993");
    let seen = b["lastSeen"].as_str().expect("lastSeen");
    assert!(
        seen.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(seen).is_ok(),
        "{seen}"
    );
    assert!(
        q["traffic"]["periodStart"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );

    // An unknown path: 404.
    assert_eq!(get(http, "/api/v1/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_every_migration_is_applied() {
    let Some(fleet) = Fleet::start("http_readyz").await else {
        return;
    };
    let server = fleet.serve_here().await;
    // Revert all but the first migration under the running collector.
    let versions: Vec<i64> = tally_collector::db::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .collect();
    tally_collector::db::revert(&fleet.pool, versions[0])
        .await
        .expect("revert");
    let (status, body) = get(server.http_address, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let expected = format!("1 of {} migrations", versions.len());
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&expected)),
        "{body}"
    );
    // Without traffic_stats the node list fails: a JSON error, 503.
    let (status, body) = get(server.http_address, "/api/v1/nodes").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("traffic_stats")),
        "{body}"
    );
}
