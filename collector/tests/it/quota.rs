//! Quota events and their webhook against a real PostgreSQL: `quota::record`
//! fires once per node, period and threshold (live event, webhook row), the
//! deliverer POSTs signed calls to a test server on 127.0.0.1, retries with
//! growing pauses, gives up after its last attempt, shares rows between
//! replicas without delivering one twice, and the upkeep's check fires once
//! what the 95th percentile, a calibration or a lowered quota reached; the
//! HTTP listing shows the events newest first.

use crate::common;

use std::{
    collections::{BTreeMap, VecDeque},
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
use chrono::{NaiveDate, NaiveDateTime, Utc};
use common::{fleet::Fleet, http::Client};
use hmac::{KeyInit as _, Mac as _};
use serde_json::json;
use sqlx::{PgPool, Row as _};
use tally_collector::{
    billing::Mode,
    corrections::{
        Audit,
        calibrate::{self, Adjustment, Changes},
    },
    db,
    events::{self, Kind, Outbox},
    metrics::Metrics,
    quota::{self, Crossing},
    webhook::{self, Url},
};
use tokio::sync::watch;

const SECRET: &str = "a-webhook-secret-for-the-tests";

fn at(day: u32, h: u32, m: u32, ms: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, day)
        .and_then(|d| d.and_hms_milli_opt(h, m, 0, ms))
        .expect("valid time")
}

fn crossing(node: &str, period_start: NaiveDateTime, threshold: i32) -> Crossing {
    Crossing {
        node_id: node.to_owned(),
        node_name: None,
        period_start,
        threshold,
        usage: 800,
        quota: 1000,
        mode: Mode::Sum,
        at: at(10, 12, 0, 250),
    }
}

/// Records `crossings` in a transaction of its own, as ingestion does.
async fn record(
    pool: &PgPool,
    crossings: &[Crossing],
    webhook: bool,
) -> (Vec<quota::Event>, Vec<events::Event>) {
    let mut tx = pool.begin().await.expect("begin");
    let mut outbox = Outbox::new();
    let fired = quota::record_events(&mut tx, crossings, &mut outbox, &quota::Config { webhook })
        .await
        .expect("record");
    outbox.send(&mut tx).await.expect("notify");
    tx.commit().await.expect("commit");
    let announced = outbox
        .payloads()
        .iter()
        .flat_map(|p| events::unpack(p).collect::<Vec<_>>())
        .collect();
    (fired, announced)
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// What the test server received.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
}

#[derive(Default)]
struct HookState {
    received: Vec<Received>,
    /// Statuses to answer, in order; 200 once they run out.
    script: VecDeque<u16>,
    delay: Duration,
}

/// A webhook receiver on 127.0.0.1.
#[derive(Clone, Default)]
struct Hook(Arc<Mutex<HookState>>);

impl Hook {
    async fn start(script: &[u16], delay: Duration) -> (Hook, Url) {
        let hook = Hook::default();
        {
            let mut state = hook.0.lock().expect("lock");
            state.script = script.iter().copied().collect();
            state.delay = delay;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let router = Router::new()
            .route("/hook/T1/secret-path", post(receive))
            .with_state(hook.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let url = Url::parse(&format!("http://{address}/hook/T1/secret-path")).expect("url");
        (hook, url)
    }

    fn received(&self) -> Vec<Received> {
        self.0.lock().expect("lock").received.clone()
    }
}

async fn receive(State(hook): State<Hook>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let (status, delay) = {
        let mut state = hook.0.lock().expect("lock");
        state.received.push(Received {
            headers,
            body,
            at: Instant::now(),
        });
        (state.script.pop_front().unwrap_or(200), state.delay)
    };
    tokio::time::sleep(delay).await;
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A deliverer with short pauses (50 ms doubling), stopped when dropped.
struct Deliverer {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl Deliverer {
    fn start(pool: &PgPool, url: &Url, tweak: impl FnOnce(&mut webhook::Config)) -> Deliverer {
        let mut config = webhook::Config::new(url.clone(), SECRET).expect("config");
        config.base_delay = Duration::from_millis(50);
        config.max_delay = Duration::from_secs(2);
        config.timeout = Duration::from_secs(3);
        config.poll = Duration::from_millis(500);
        tweak(&mut config);
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (stop, stopping) = watch::channel(false);
        let task = webhook::start(pool.clone(), config, metrics.clone(), stopping).expect("start");
        Deliverer {
            stop,
            task: Some(task),
            metrics,
        }
    }

    /// The value of `tally_webhook_deliveries_total{outcome}`.
    fn counted(&self, outcome: &str) -> u64 {
        self.metrics
            .gather()
            .iter()
            .filter(|f| f.name() == "tally_webhook_deliveries_total")
            .flat_map(|f| f.get_metric())
            .find(|m| m.get_label().iter().any(|l| l.value() == outcome))
            .map(|m| m.get_counter().get_value() as u64)
            .unwrap_or_else(|| panic!("no {outcome} counter"))
    }

    async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the deliverer stops")
                .expect("the deliverer task");
        }
    }
}

impl Drop for Deliverer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Waits (up to `limit`) until `done` holds.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A delivery row: (attempts, delivered, lastError).
async fn delivery(pool: &PgPool, id: i64) -> (i32, bool, Option<String>) {
    let row = sqlx::query(
        r#"SELECT "attempts", "deliveredAt" IS NOT NULL AS "delivered", "lastError"
           FROM "webhook_deliveries" WHERE "id" = $1"#,
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("delivery row");
    (
        row.get("attempts"),
        row.get("delivered"),
        row.get("lastError"),
    )
}

/// Queues one quota event for a new node; the delivery's id.
async fn one_delivery(fleet: &Fleet, name: &str) -> i64 {
    let node = fleet.add_node(name).await;
    let (fired, _) = record(&fleet.pool, &[crossing(&node.id, at(1, 0, 0, 0), 80)], true).await;
    assert_eq!(fired.len(), 1);
    sqlx::query_scalar(r#"SELECT max("id") FROM "webhook_deliveries""#)
        .fetch_one(&fleet.pool)
        .await
        .expect("delivery id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_fires_once_per_node_period_and_threshold() {
    let Some(fleet) = Fleet::start("quota_record").await else {
        return;
    };
    let node = fleet.add_node("edge-1").await;
    let other = fleet.add_node("edge-2").await;
    let november = at(1, 0, 0, 0);

    // The same crossing twice in one batch, and another node's.
    let (fired, announced) = record(
        &fleet.pool,
        &[
            crossing(&node.id, november, 80),
            crossing(&node.id, november, 80),
            crossing(&other.id, november, 100),
        ],
        true,
    )
    .await;
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(fired[0].node_name, "edge-1", "the name is read from nodes");
    assert_eq!(
        announced.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [Kind::Quota, Kind::Quota]
    );
    let live: serde_json::Value = serde_json::from_str(&announced[0].data).expect("JSON");
    assert_eq!(
        live,
        json!({
            "type": "quota", "nodeId": node.id, "nodeName": "edge-1",
            "periodStart": "2026-11-01T00:00:00.000Z", "threshold": 80,
            "usage": "800", "quota": "1000", "mode": "sum", "at": "2026-11-10T12:00:00.250Z"
        })
    );
    let payload: serde_json::Value =
        sqlx::query_scalar(r#"SELECT "payload" FROM "webhook_deliveries" ORDER BY "id" LIMIT 1"#)
            .fetch_one(&fleet.pool)
            .await
            .expect("payload");
    assert_eq!(
        payload,
        json!({
            "event": "quota", "node": {"id": node.id, "name": "edge-1"},
            "periodStart": "2026-11-01T00:00:00.000Z", "threshold": 80,
            "usage": "800", "quota": "1000", "mode": "sum", "at": "2026-11-10T12:00:00.250Z"
        })
    );

    // Again: nothing fires, nothing is announced or queued.
    let (fired, announced) = record(&fleet.pool, &[crossing(&node.id, november, 80)], true).await;
    assert!(fired.is_empty() && announced.is_empty(), "{fired:?}");
    // A higher threshold of the same period fires.
    let (fired, _) = record(&fleet.pool, &[crossing(&node.id, november, 100)], true).await;
    assert_eq!(fired.len(), 1);
    // A new period fires again.
    let december = NaiveDate::from_ymd_opt(2026, 12, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("date");
    let (fired, _) = record(&fleet.pool, &[crossing(&node.id, december, 80)], true).await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].period_start, december);
    let events = r#"SELECT count(*) FROM "quota_events""#;
    let deliveries = r#"SELECT count(*) FROM "webhook_deliveries""#;
    assert_eq!(count(&fleet.pool, events).await, 4);
    assert_eq!(count(&fleet.pool, deliveries).await, 4);

    // Without a webhook: the event, no delivery.
    let (fired, announced) = record(&fleet.pool, &[crossing(&other.id, december, 80)], false).await;
    assert_eq!((fired.len(), announced.len()), (1, 1));
    assert_eq!(count(&fleet.pool, events).await, 5);
    assert_eq!(count(&fleet.pool, deliveries).await, 4);

    // No crossing, no statement: even a failed transaction is fine.
    let mut tx = fleet.pool.begin().await.expect("begin");
    let _ = sqlx::query("SELECT 1/0").execute(&mut *tx).await;
    let mut outbox = Outbox::new();
    quota::record(&mut tx, &[], &mut outbox, &quota::Config { webhook: true })
        .await
        .expect("no statement is sent");
    assert!(outbox.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_listed_newest_first() {
    let Some(fleet) = Fleet::start("quota_list").await else {
        return;
    };
    let node = fleet.add_node("edge-1").await;
    let quiet = fleet.add_node("quiet").await;
    let mut later = crossing(&node.id, at(1, 0, 0, 0), 100);
    later.at = at(20, 8, 30, 0);
    later.usage = 1000;
    record(
        &fleet.pool,
        &[crossing(&node.id, at(1, 0, 0, 0), 80), later],
        false,
    )
    .await;
    let server = fleet.serve_here().await;
    let client = Client::new(server.http_address);

    let response = client
        .get(&format!("/api/v1/nodes/{}/quota-events", node.id))
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let events = &response.json["events"];
    assert_eq!(response.json["nodeId"], node.id.as_str());
    assert_eq!(events.as_array().map(Vec::len), Some(2));
    assert_eq!(events[0]["threshold"], 100);
    assert_eq!(events[0]["usage"], "1000");
    assert_eq!(events[0]["at"], "2026-11-20T08:30:00.000Z");
    assert_eq!(events[1]["threshold"], 80);
    assert_eq!(events[1]["quota"], "1000");
    assert_eq!(events[1]["mode"], "sum");
    assert_eq!(events[1]["periodStart"], "2026-11-01T00:00:00.000Z");

    let one = client
        .get(&format!("/api/v1/nodes/{}/quota-events?limit=1", node.id))
        .await;
    assert_eq!(one.json["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(one.json["events"][0]["threshold"], 100);
    let none = client
        .get(&format!("/api/v1/nodes/{}/quota-events", quiet.id))
        .await;
    assert_eq!(none.status, 200);
    assert_eq!(none.json["events"], json!([]));
    let missing = client.get("/api/v1/nodes/no-such-node/quota-events").await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (404, Some("not_found"))
    );
    let bad = client
        .get(&format!("/api/v1/nodes/{}/quota-events?limit=0", node.id))
        .await;
    assert_eq!(
        (bad.status, bad.error_code()),
        (400, Some("invalid_argument"))
    );
}

/// Whether `call` carries a valid signature of its own timestamp, id and
/// body, as docs/billing.md tells receivers to check it; the timestamp.
fn verify(call: &Received) -> Option<i64> {
    let timestamp: i64 = call.header("x-tally-timestamp").parse().ok()?;
    let delivery = call.header("x-tally-delivery");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{timestamp}.{delivery}.").as_bytes());
    mac.update(&call.body);
    let expected = format!("v1={}", hex(&mac.finalize().into_bytes()));
    (call.header("x-tally-signature") == expected).then_some(timestamp)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_a_signed_call() {
    let Some(fleet) = Fleet::start("quota_webhook_signed").await else {
        return;
    };
    let (hook, url) = Hook::start(&[], Duration::ZERO).await;
    let deliverer = Deliverer::start(&fleet.pool, &url, |config| {
        config.poll = Duration::from_secs(5);
    });
    // Queued after the deliverer started: it is woken by the notification
    // (it would look again only after its 5 s poll).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued = Instant::now();
    let id = one_delivery(&fleet, "edge-1").await;
    wait_for("the call", Duration::from_secs(10), || async {
        !hook.received().is_empty()
    })
    .await;
    let woken_after = queued.elapsed();
    assert!(
        woken_after < Duration::from_secs(1),
        "the deliverer took {woken_after:?}: not woken by the notification"
    );
    wait_for("the delivery row", Duration::from_secs(10), || async {
        delivery(&fleet.pool, id).await.1
    })
    .await;

    let calls = hook.received();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.header("content-type"), "application/json");
    assert_eq!(call.header("x-tally-event"), "quota");
    assert_eq!(call.header("x-tally-delivery"), id.to_string());
    let timestamp = verify(call).expect("a valid signature");
    assert!(
        (Utc::now().timestamp() - timestamp).abs() <= 5,
        "{timestamp}"
    );
    // The id and the timestamp are signed: the same call under another id
    // or at another time does not verify.
    let mut replayed = call.clone();
    replayed.headers.insert(
        "x-tally-delivery",
        (id + 1).to_string().parse().expect("value"),
    );
    assert_eq!(verify(&replayed), None, "replayed under another id");
    let mut replayed = call.clone();
    replayed.headers.insert(
        "x-tally-timestamp",
        (timestamp + 600).to_string().parse().expect("value"),
    );
    assert_eq!(verify(&replayed), None, "replayed later");
    let body: serde_json::Value = serde_json::from_slice(&call.body).expect("JSON body");
    assert_eq!(body["event"], "quota");
    assert_eq!(body["node"]["name"], "edge-1");
    assert_eq!(body["threshold"], 80);
    assert_eq!(body["usage"], "800");
    assert_eq!(body["periodStart"], "2026-11-01T00:00:00.000Z");
    assert_eq!(delivery(&fleet.pool, id).await, (1, true, None));
    assert_eq!(deliverer.counted("delivered"), 1);
    deliverer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_rows_are_deleted_after_their_retention_only() {
    let Some(fleet) = Fleet::start("quota_webhook_prune").await else {
        return;
    };
    let ids: Vec<i64> = sqlx::query_scalar(
        r#"INSERT INTO "webhook_deliveries"
               ("event", "payload", "createdAt", "nextAttemptAt", "attempts", "deliveredAt")
           VALUES ('quota', '{}', now() - interval '40 days', now(), 1, now() - interval '31 days'),
                  ('quota', '{}', now() - interval '40 days', now(), 1, now() - interval '29 days'),
                  ('quota', '{}', now() - interval '40 days', now(), 12, NULL),
                  ('quota', '{}', now() - interval '40 days', now(), 0, NULL)
           RETURNING "id""#,
    )
    .fetch_all(&fleet.pool)
    .await
    .expect("rows");
    let deleted = webhook::prune(&fleet.pool, webhook::DEFAULT_RETENTION)
        .await
        .expect("prune");
    assert_eq!(deleted, 1);
    let left: Vec<i64> =
        sqlx::query_scalar(r#"SELECT "id" FROM "webhook_deliveries" ORDER BY "id""#)
            .fetch_all(&fleet.pool)
            .await
            .expect("rows");
    assert_eq!(
        left,
        ids[1..],
        "only the row delivered 31 days ago goes; pending and given-up rows stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_calls_are_retried_until_delivered() {
    let Some(fleet) = Fleet::start("quota_webhook_retry").await else {
        return;
    };
    let (hook, url) = Hook::start(&[500, 500, 200], Duration::ZERO).await;
    let id = one_delivery(&fleet, "edge-1").await;
    let deliverer = Deliverer::start(&fleet.pool, &url, |_| {});
    wait_for("the delivery", Duration::from_secs(10), || async {
        delivery(&fleet.pool, id).await.1
    })
    .await;
    // Time for a (wrong) fourth attempt.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = hook.received();
    assert_eq!(calls.len(), 3, "exactly three attempts");
    for call in &calls {
        assert_eq!(call.header("x-tally-delivery"), id.to_string());
        assert_eq!(
            call.body, calls[0].body,
            "every attempt sends the same body"
        );
        assert!(
            verify(call).is_some(),
            "each attempt is signed with its own timestamp"
        );
    }
    // 50 ms, then 100 ms apart.
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(45), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(95), "{gaps:?}");
    assert_eq!(delivery(&fleet.pool, id).await, (3, true, None));
    assert_eq!(deliverer.counted("failed"), 2);
    assert_eq!(deliverer.counted("delivered"), 1);
    deliverer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_webhook_backs_off_then_is_given_up() {
    let Some(fleet) = Fleet::start("quota_webhook_give_up").await else {
        return;
    };
    // A port nobody listens on: connections are refused at once.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = closed.local_addr().expect("address");
    drop(closed);
    let url = Url::parse(&format!("http://{address}/hook/T1/secret-path")).expect("url");
    let id = one_delivery(&fleet, "edge-1").await;
    let deliverer = Deliverer::start(&fleet.pool, &url, |config| {
        config.base_delay = Duration::from_millis(80);
        config.max_attempts = 5;
    });
    // After each failed attempt, when the next one is due (the smallest
    // value seen: a replica's lease moves it further ahead while it calls).
    let mut due: std::collections::BTreeMap<i32, chrono::NaiveDateTime> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (attempts, delivered, _) = delivery(&fleet.pool, id).await;
        assert!(!delivered);
        if attempts > 0 {
            let next: chrono::NaiveDateTime = sqlx::query_scalar(
                r#"SELECT "nextAttemptAt" FROM "webhook_deliveries" WHERE "id" = $1"#,
            )
            .bind(id)
            .fetch_one(&fleet.pool)
            .await
            .expect("nextAttemptAt");
            let entry = due.entry(attempts).or_insert(next);
            *entry = (*entry).min(next);
        }
        if attempts >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "attempts so far: {due:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        due.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "each attempt seen"
    );
    // Attempt k+1 starts no sooner than it was due after attempt k, and is
    // due its backoff (80, 160, 320, 640 ms) after it failed: so the due
    // times are at least that far apart. From the database's clock, not
    // the test's. (The fifth failed attempt was the last: nothing is due
    // after it.)
    let due: Vec<chrono::NaiveDateTime> = due.into_values().collect();
    for (k, pair) in due[..4].windows(2).enumerate() {
        let backoff = chrono::Duration::milliseconds(80 << (k + 1));
        assert!(pair[1] - pair[0] >= backoff, "attempt {}: {due:?}", k + 2);
    }

    // Given up: no more attempts, the row kept with its error.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (attempts, delivered, error) = delivery(&fleet.pool, id).await;
    assert_eq!((attempts, delivered), (5, false));
    let error = error.expect("the last error is kept");
    assert!(!error.is_empty(), "an error is kept");
    assert!(
        !error.contains("secret-path"),
        "the URL is not kept: {error}"
    );
    assert_eq!(deliverer.counted("failed"), 4);
    assert_eq!(deliverer.counted("given_up"), 1);
    assert_eq!(deliverer.counted("delivered"), 0);
    deliverer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliverers_deliver_each_row_once() {
    let Some(fleet) = Fleet::start("quota_webhook_replicas").await else {
        return;
    };
    const ROWS: usize = 40;
    let (hook, url) = Hook::start(&[], Duration::from_millis(30)).await;
    let mut tx = fleet.pool.begin().await.expect("begin");
    let payloads: Vec<String> = (0..ROWS).map(|i| json!({ "n": i }).to_string()).collect();
    webhook::queue(&mut tx, "quota", &payloads, Utc::now().naive_utc())
        .await
        .expect("queue");
    tx.commit().await.expect("commit");
    // Two replicas: each with its own pool, as two processes have.
    let other = db::connect(&fleet.url, 4).await.expect("second pool");
    let small = |config: &mut webhook::Config| config.batch = 3;
    let one = Deliverer::start(&fleet.pool, &url, small);
    let two = Deliverer::start(&other, &url, small);
    wait_for("every delivery", Duration::from_secs(30), || async {
        count(
            &fleet.pool,
            r#"SELECT count(*) FROM "webhook_deliveries" WHERE "deliveredAt" IS NULL"#,
        )
        .await
            == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut calls: BTreeMap<String, usize> = BTreeMap::new();
    for call in hook.received() {
        *calls
            .entry(call.header("x-tally-delivery").to_owned())
            .or_default() += 1;
    }
    assert_eq!(calls.len(), ROWS, "every row delivered");
    assert!(
        calls.values().all(|&n| n == 1),
        "a row delivered twice: {calls:?}"
    );
    let (a, b) = (one.counted("delivered"), two.counted("delivered"));
    assert_eq!(a + b, ROWS as u64);
    assert!(a > 0 && b > 0, "both replicas delivered ({a} + {b})");
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_p95_check_fires_once_per_threshold() {
    let Some(fleet) = Fleet::start("quota_p95").await else {
        return;
    };
    let node = fleet.add_node("p95-node").await;
    let bytes_node = fleet.add_node("sum-node").await;
    // The period began 30 minutes ago (on a 5-minute boundary).
    let now = Utc::now().naive_utc();
    let start = chrono::DateTime::from_timestamp(
        (now.and_utc().timestamp() - 1800).div_euclid(300) * 300,
        0,
    )
    .expect("start")
    .naive_utc();
    for (id, mode) in [(&node.id, "p95"), (&bytes_node.id, "sum")] {
        sqlx::query(
            r#"INSERT INTO "node_settings" ("nodeId", "mode", "quota", "thresholds")
               VALUES ($1, $2, 1500, '{50,100}')"#,
        )
        .bind(id)
        .bind(mode)
        .execute(&fleet.pool)
        .await
        .expect("settings");
        sqlx::query(r#"UPDATE "traffic_stats" SET "periodStart" = $2 WHERE "nodeId" = $1"#)
            .bind(id)
            .bind(start)
            .execute(&fleet.pool)
            .await
            .expect("period start");
    }
    // Every minute of the period: 60 kB up, so full 5-minute slots run at
    // 1000 B/s.
    let history = |per_minute: i64| {
        let pool = fleet.pool.clone();
        let ids = [node.id.clone(), bytes_node.id.clone()];
        async move {
            for id in ids {
                sqlx::query(
                    r#"INSERT INTO "node_history"
                           ("nodeId", "bucket", "upload", "download", "load1", "load5", "load15", "heartbeats")
                       SELECT $1, b, $3, 0, 0, 0, 0, 1
                       FROM generate_series($2::timestamp, $4::timestamp, INTERVAL '1 minute') AS b
                       ON CONFLICT ("nodeId", "bucket") DO UPDATE SET "upload" = EXCLUDED."upload""#,
                )
                .bind(&id)
                .bind(start)
                .bind(per_minute)
                .bind(start + chrono::Duration::minutes(24))
                .execute(&pool)
                .await
                .expect("history");
            }
        }
    };
    history(60_000).await;
    let config = quota::Config { webhook: true };
    let fired = quota::check(&fleet.pool, &config, None)
        .await
        .expect("check");
    // 1000 B/s of a 1500 B/s quota: 50 % only, and only the p95 node.
    assert_eq!(
        fired
            .iter()
            .map(|e| (e.node_id.as_str(), e.threshold, e.usage, e.mode))
            .collect::<Vec<_>>(),
        [(node.id.as_str(), 50, 1000, Mode::P95)]
    );
    assert_eq!(fired[0].period_start, start);
    let again = quota::check(&fleet.pool, &config, None)
        .await
        .expect("check");
    assert!(again.is_empty(), "fired twice: {again:?}");

    // Busier: 2000 B/s crosses 100 %, and 50 % does not fire again.
    history(120_000).await;
    let fired = quota::check(&fleet.pool, &config, None)
        .await
        .expect("check");
    assert_eq!(
        fired
            .iter()
            .map(|e| (e.threshold, e.usage))
            .collect::<Vec<_>>(),
        [(100, 2000)]
    );
    assert!(
        quota::check(&fleet.pool, &config, None)
            .await
            .expect("check")
            .is_empty()
    );
    assert_eq!(
        count(&fleet.pool, r#"SELECT count(*) FROM "quota_events""#).await,
        2
    );
    assert_eq!(
        count(&fleet.pool, r#"SELECT count(*) FROM "webhook_deliveries""#).await,
        2
    );
}

/// Usage that got past a threshold without a heartbeat crossing it — a
/// calibration, a quota lowered under usage already there — fires at the
/// upkeep's next check, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_fires_what_calibrations_and_lowered_quotas_reached() {
    let Some(fleet) = Fleet::start("quota_reached").await else {
        return;
    };
    let node = fleet.add_node("calibrated").await;
    let quiet = fleet.add_node("quiet").await;
    for id in [&node.id, &quiet.id] {
        fleet
            .set_node_settings(
                id,
                r#""mode" = 'max', "quota" = 1000, "thresholds" = '{80,100}'"#,
            )
            .await;
    }
    let config = quota::Config { webhook: true };
    let check = || quota::check(&fleet.pool, &config, None);
    assert!(check().await.expect("check").is_empty(), "no usage yet");

    // The provider's bill says 850 bytes were downloaded this period.
    calibrate::calibrate(
        &fleet.pool,
        &node.id,
        &Changes {
            period_download: Some(Adjustment::Set(850)),
            ..Changes::default()
        },
        &Audit::new("alice", "match the provider's bill").expect("audit"),
    )
    .await
    .expect("calibrated");
    let fired = check().await.expect("check");
    assert_eq!(
        fired
            .iter()
            .map(|e| (e.node_id.as_str(), e.threshold, e.usage, e.quota, e.mode))
            .collect::<Vec<_>>(),
        [(node.id.as_str(), 80, 850, 1000, Mode::Max)]
    );
    assert_eq!(fired[0].node_name, "calibrated");
    assert!(check().await.expect("check").is_empty(), "fired twice");

    // A lower quota puts the same usage past 100 %.
    fleet.set_node_settings(&node.id, r#""quota" = 800"#).await;
    let fired = check().await.expect("check");
    assert_eq!(
        fired
            .iter()
            .map(|e| (e.threshold, e.usage, e.quota))
            .collect::<Vec<_>>(),
        [(100, 850, 800)]
    );
    assert!(check().await.expect("check").is_empty(), "fired twice");
    assert_eq!(
        count(&fleet.pool, r#"SELECT count(*) FROM "quota_events""#).await,
        2
    );
    assert_eq!(
        count(&fleet.pool, r#"SELECT count(*) FROM "webhook_deliveries""#).await,
        2,
        "each event queued for the webhook"
    );
}
