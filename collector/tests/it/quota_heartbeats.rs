//! Quota thresholds crossed by real heartbeats (through the gRPC channel of
//! a collector serving here, with a webhook to a test server on 127.0.0.1):
//! each threshold fires once per period — one `quota_events` row and one
//! signed webhook call — and again after the period is reset.

use crate::common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use chrono::NaiveDateTime;
use common::fleet::{self, Fleet};
use hmac::{KeyInit as _, Mac as _};
use sqlx::{PgPool, Row as _};
use tally_collector::{
    period::{self, Target},
    webhook::{self, Url},
};

const SECRET: &str = "the-end-to-end-webhook-secret";

/// The calls a webhook receiver on 127.0.0.1 got: (headers, body).
type Calls = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn receiver() -> (Calls, Url) {
    let calls = Calls::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let router = Router::new()
        .route("/hook", post(receive))
        .with_state(calls.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let url = Url::parse(&format!("http://{address}/hook")).expect("url");
    (calls, url)
}

async fn receive(State(calls): State<Calls>, headers: HeaderMap, body: Bytes) -> StatusCode {
    calls.lock().expect("lock").push((headers, body));
    StatusCode::NO_CONTENT
}

/// The node's quota events: (periodStart, threshold, usage), oldest first.
async fn events(pool: &PgPool, node: &str) -> Vec<(NaiveDateTime, i32, i64)> {
    sqlx::query(
        r#"SELECT "periodStart", "threshold", "usage" FROM "quota_events"
           WHERE "nodeId" = $1 ORDER BY "id""#,
    )
    .bind(node)
    .fetch_all(pool)
    .await
    .expect("events")
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect()
}

/// Waits until the receiver got `n` calls, then a little longer for a
/// (wrong) extra one.
async fn calls_settle(calls: &Calls, n: usize) -> Vec<(HeaderMap, Bytes)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while calls.lock().expect("lock").len() < n {
        assert!(Instant::now() < deadline, "waiting for {n} webhook calls");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    calls.lock().expect("lock").clone()
}

fn signed(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(
        format!(
            "{}.{}.",
            header("x-tally-timestamp"),
            header("x-tally-delivery")
        )
        .as_bytes(),
    );
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    headers
        .get("x-tally-signature")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("v1={hex}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_crossed_by_heartbeats_fire_once_per_period() {
    let Some(fleet) = Fleet::start("quota_heartbeats").await else {
        return;
    };
    let (calls, url) = receiver().await;
    let mut config = webhook::Config::new(url, SECRET).expect("webhook config");
    config.base_delay = Duration::from_millis(50);
    let server = fleet
        .serve_here_with(|options| options.webhook = Some(config))
        .await;
    let node = fleet.add_node("metered").await;
    // 1000 bytes per period, upload + download; thresholds 80 % and 100 %
    // (the defaults).
    sqlx::query(r#"INSERT INTO "node_settings" ("nodeId", "quota") VALUES ($1, 1000)"#)
        .bind(&node.id)
        .execute(&fleet.pool)
        .await
        .expect("quota");
    let mut client = fleet::client(server.address).await;
    let token = Some(node.token.as_str());
    let mut send = async |sequence: u64, rx: u64, tx: u64| {
        fleet::send(&mut client, token, fleet::heartbeat("e", sequence, rx, tx))
            .await
            .expect("heartbeat applied");
    };

    send(1, 500, 300).await; // 800: 80 %
    send(2, 550, 300).await; // 850
    send(3, 700, 400).await; // 1100: 100 %
    send(4, 900, 500).await; // 1400
    let first = events(&fleet.pool, &node.id).await;
    assert_eq!(
        first.iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(),
        [(80, 800), (100, 1100)],
        "each threshold once, with the usage that crossed it"
    );
    assert_eq!(first[0].0, first[1].0, "one period");
    let received = calls_settle(&calls, 2).await;
    assert_eq!(received.len(), 2, "one call per event");
    for (headers, body) in &received {
        assert!(signed(headers, body), "{headers:?}");
        assert_eq!(
            headers.get("x-tally-event").map(|v| v.as_bytes()),
            Some(&b"quota"[..])
        );
    }

    // A new period: the thresholds fire again, once.
    assert_eq!(
        period::reset_now(&fleet.pool, &Target::Node(node.id.clone()))
            .await
            .expect("reset"),
        1
    );
    send(5, 1500, 700).await; // 800 in the new period: 80 %
    send(6, 1520, 700).await; // 820
    let all = events(&fleet.pool, &node.id).await;
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!((all[2].1, all[2].2), (80, 800));
    assert!(all[2].0 > first[0].0, "in the new period");
    let received = calls_settle(&calls, 3).await;
    assert_eq!(received.len(), 3);
    let last: serde_json::Value = serde_json::from_slice(&received[2].1).expect("JSON");
    assert_eq!(last["node"]["id"], node.id.as_str());
    assert_eq!(last["node"]["name"], "metered");
    assert_eq!(last["threshold"], 80);
    assert_eq!(last["usage"], "800");
    assert_eq!(last["quota"], "1000");
    assert_eq!(last["mode"], "sum");
}
