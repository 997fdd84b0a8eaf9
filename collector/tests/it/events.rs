//! Live events against a real PostgreSQL and real HTTP: what one collector
//! replica stores reaches the event stream (`GET /api/v1/events`) of
//! another through LISTEN/NOTIFY, with the numbers that were committed;
//! refusals and duplicates announce nothing; period resets and enrolment
//! changes are announced; equal events of one transaction all arrive; a lost
//! database connection is reported as `resync`; the stream ends when the
//! collector stops.

use crate::common;

use std::{net::SocketAddr, time::Duration};

use chrono::{Datelike as _, NaiveDate, NaiveDateTime, Utc};
use common::fleet::{self, Fleet};
use sqlx::{PgPool, Row as _};
use tally_collector::{
    auth,
    events::{self, Notice, Outbox},
    ingest::{BatchTime, Job, store},
    nodes, period, validate,
};
use tally_proto::v1::Outcome;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

/// An open `GET /api/v1/events` over raw HTTP/1.1 (chunked body).
struct EventStream {
    reader: BufReader<TcpStream>,
    /// Body text not yet split into events.
    pending: String,
}

/// One event of the stream: its name and its data.
#[derive(Debug)]
struct Received {
    event: String,
    data: serde_json::Value,
}

impl EventStream {
    /// Opens the stream; panics unless the answer is 200 with
    /// `text/event-stream`.
    async fn open(address: SocketAddr) -> EventStream {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let request =
            "GET /api/v1/events HTTP/1.1\r\nHost: tally\r\nAccept: text/event-stream\r\n\r\n";
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("read the head");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let lower = head.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 200"), "{head}");
        assert!(lower.contains("content-type: text/event-stream"), "{head}");
        assert!(lower.contains("transfer-encoding: chunked"), "{head}");
        EventStream {
            reader,
            pending: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped); `None` when the
    /// collector ended the stream. Panics after 10 s without either.
    async fn next(&mut self) -> Option<Received> {
        tokio::time::timeout(Duration::from_secs(10), self.next_event())
            .await
            .expect("an event (or the end of the stream) within 10 s")
    }

    async fn next_event(&mut self) -> Option<Received> {
        loop {
            while let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = name.trim().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
                if !data.is_empty() {
                    let data = serde_json::from_str(&data).expect("the data is JSON");
                    return Some(Received { event, data });
                }
            }
            let mut size = String::new();
            if self.reader.read_line(&mut size).await.expect("read") == 0 {
                return None;
            }
            let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
            if size == 0 {
                return None;
            }
            let mut chunk = vec![0; size + 2];
            self.reader
                .read_exact(&mut chunk)
                .await
                .expect("a whole chunk");
            chunk.truncate(size);
            self.pending
                .push_str(&String::from_utf8(chunk).expect("UTF-8"));
        }
    }

    /// The next event, which must be named `event`.
    async fn expect(&mut self, event: &str) -> serde_json::Value {
        let received = self.next().await.expect("the stream goes on");
        assert_eq!(received.event, event, "{received:?}");
        assert_eq!(received.data["type"], event, "the data carries its type");
        received.data
    }
}

/// Waits until `n` connections LISTEN for events (each replica's listener).
async fn wait_for_listeners(pool: &PgPool, n: i64) {
    for _ in 0..200 {
        let listening: i64 = sqlx::query_scalar(
            r#"SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN "tally_events"%'"#,
        )
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        if listening >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the collectors do not LISTEN for events");
}

/// The node's `traffic_stats` as an event shows them.
async fn stored_traffic(pool: &PgPool, node: &str) -> serde_json::Value {
    let row = sqlx::query(
        r#"SELECT "totalUpload", "totalDownload", "periodUpload", "periodDownload",
                  "periodStart" FROM "traffic_stats" WHERE "nodeId" = $1"#,
    )
    .bind(node)
    .fetch_one(pool)
    .await
    .expect("traffic_stats row");
    let big = |c: &str| row.get::<i64, _>(c).to_string();
    serde_json::json!({
        "totalUpload": big("totalUpload"),
        "totalDownload": big("totalDownload"),
        "periodUpload": big("periodUpload"),
        "periodDownload": big("periodDownload"),
        "periodStart": timestamp(row.get("periodStart")),
    })
}

fn timestamp(t: NaiveDateTime) -> String {
    t.and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_on_one_replica_reaches_the_stream_of_another() {
    let Some(fleet) = Fleet::start("events_replicas").await else {
        return;
    };
    let node = fleet.add_node("alpha").await;
    let a = fleet.serve_here().await;
    let b = fleet.serve_here().await;
    wait_for_listeners(&fleet.pool, 2).await;
    let mut stream = EventStream::open(a.http_address).await;
    let mut client = fleet::client(b.address).await;

    let reply = fleet::send(
        &mut client,
        Some(&node.token),
        fleet::heartbeat("e", 1, 1000, 10),
    )
    .await
    .expect("applied");
    assert_eq!(reply.outcome(), Outcome::Applied);
    let data = stream.expect("heartbeat").await;
    assert_eq!(data["nodeId"], node.id.as_str());
    assert_eq!(data["traffic"]["totalDownload"], "1000");
    assert_eq!(data["traffic"]["totalUpload"], "10");
    assert_eq!(data["traffic"]["periodDownload"], "1000");
    assert_eq!(data["traffic"]["periodUpload"], "10");
    assert_eq!(data["traffic"], stored_traffic(&fleet.pool, &node.id).await);
    assert_eq!(
        data["load"],
        serde_json::json!({"one": 0.5, "five": 0.25, "fifteen": 0.125})
    );
    let last_seen: NaiveDateTime =
        sqlx::query_scalar(r#"SELECT "lastSeen" FROM "nodes" WHERE "id" = $1"#)
            .bind(&node.id)
            .fetch_one(&fleet.pool)
            .await
            .expect("lastSeen");
    assert_eq!(data["lastSeen"], timestamp(last_seen));

    // A duplicate and refused heartbeats announce nothing: the next event
    // is the next applied heartbeat's.
    let duplicate = fleet::send(
        &mut client,
        Some(&node.token),
        fleet::heartbeat("e", 1, 1000, 10),
    )
    .await
    .expect("answered");
    assert_eq!(duplicate.outcome(), Outcome::Duplicate);
    let wrong = format!("{}.{}", node.id, "0".repeat(64));
    fleet::send(
        &mut client,
        Some(&wrong),
        fleet::heartbeat("e", 2, 9999, 9999),
    )
    .await
    .expect_err("a wrong token is refused");
    fleet::send(
        &mut client,
        Some(&node.token),
        fleet::heartbeat("e", 2, 5, 5),
    )
    .await
    .expect_err("counters going backwards are refused");
    fleet::send(
        &mut client,
        Some(&node.token),
        fleet::heartbeat("e", 2, 3000, 30),
    )
    .await
    .expect("applied");
    let data = stream.expect("heartbeat").await;
    assert_eq!(data["traffic"]["totalDownload"], "3000");
    assert_eq!(data["traffic"]["totalUpload"], "30");

    // A manual period reset.
    period::reset_now(&fleet.pool, &period::Target::Node(node.id.clone()))
        .await
        .expect("reset");
    let data = stream.expect("period_reset").await;
    assert_eq!(data["nodeId"], node.id.as_str());
    assert_eq!(data["traffic"]["periodUpload"], "0");
    assert_eq!(data["traffic"]["periodDownload"], "0");
    assert_eq!(data["traffic"]["totalDownload"], "3000");
    assert_eq!(data["traffic"], stored_traffic(&fleet.pool, &node.id).await);

    // Enrolment changes.
    let beta = fleet.add_node("beta").await;
    let data = stream.expect("nodes").await;
    assert_eq!(
        data,
        serde_json::json!({"type": "nodes", "nodeId": beta.id, "change": "added"})
    );
    nodes::remove(&fleet.pool, "beta").await.expect("remove");
    let data = stream.expect("nodes").await;
    assert_eq!(data["nodeId"], beta.id.as_str());
    assert_eq!(data["change"], "removed");

    // The stream ends when its collector stops (the other one goes on).
    drop(a);
    assert!(stream.next().await.is_none(), "the stream ended");
    drop(b);
}

fn job(token: &str, sequence: u64, rx: u64, tx: u64) -> Job {
    Job {
        credentials: auth::from_bearer(Some(&format!("Bearer {token}"))).expect("token"),
        heartbeat: validate::heartbeat(fleet::heartbeat("e", sequence, rx, tx), i64::MAX / 2)
            .expect("valid"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_reset_in_a_batch_is_announced_before_its_heartbeats() {
    let Some(fleet) = Fleet::start("events_batch_reset").await else {
        return;
    };
    let node = fleet.add_node("p").await;
    let other = fleet.add_node("q").await;
    let server = fleet.serve_here().await;
    wait_for_listeners(&fleet.pool, 1).await;
    let mut stream = EventStream::open(server.http_address).await;
    let mut conn = fleet.pool.acquire().await.expect("connection");
    store::apply(
        &mut conn,
        &[job(&node.token, 1, 1000, 100)],
        BatchTime::new(Utc::now().naive_utc(), None),
    )
    .await
    .expect("commit");
    assert_eq!(
        stream.expect("heartbeat").await["traffic"]["periodDownload"],
        "1000"
    );
    // The start of this month: where periods anchored on day 1 (the
    // collector's --period-reset monthly:1) began.
    let today = Utc::now().date_naive();
    let boundary = NaiveDate::from_ymd_opt(today.year(), today.month(), 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("date");
    sqlx::query(
        r#"UPDATE "traffic_stats" SET "periodStart" = $2,
             "periodUpload" = 5, "periodDownload" = 7 WHERE "nodeId" = $1"#,
    )
    .bind(&node.id)
    .bind(boundary - chrono::Duration::days(20))
    .execute(&fleet.pool)
    .await
    .expect("age the period");

    // One batch: the period ends before it; a zero-traffic heartbeat twice
    // (equal events), a refused one, another node's, then more traffic.
    let jobs = [
        job(&node.token, 2, 1000, 100),
        job(&node.token, 3, 1000, 100),
        job(&other.token, 1, 1, 2),
        job(&format!("nobody.{}", "0".repeat(64)), 1, 1, 1),
        job(&node.token, 4, 1600, 150),
    ];
    let results = store::apply(
        &mut conn,
        &jobs,
        BatchTime::new(Utc::now().naive_utc(), Some(1)),
    )
    .await
    .expect("commit");
    assert!(results[3].is_err(), "{results:?}");

    let reset = stream.expect("period_reset").await;
    assert_eq!(reset["nodeId"], node.id.as_str());
    assert_eq!(
        reset["traffic"],
        serde_json::json!({"totalUpload": "100", "totalDownload": "1000",
                           "periodUpload": "0", "periodDownload": "0",
                           "periodStart": boundary.format("%Y-%m-%dT00:00:00.000Z").to_string()})
    );
    let first = stream.expect("heartbeat").await;
    let second = stream.expect("heartbeat").await;
    assert_eq!(first, second, "equal heartbeats, each announced");
    assert_eq!(first["traffic"]["periodDownload"], "0");
    assert_eq!(first["traffic"]["totalDownload"], "1000");
    let q = stream.expect("heartbeat").await;
    assert_eq!(q["nodeId"], other.id.as_str());
    let last = stream.expect("heartbeat").await;
    assert_eq!(last["traffic"]["periodDownload"], "600");
    assert_eq!(last["traffic"]["periodUpload"], "50");
    assert_eq!(last["traffic"], stored_traffic(&fleet.pool, &node.id).await);
    // The other node's period started after the boundary: not reset.
    assert_eq!(q["traffic"], stored_traffic(&fleet.pool, &other.id).await);
    assert_eq!(q["traffic"]["periodDownload"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_events_of_one_transaction_all_arrive_in_order() {
    let Some(fleet) = Fleet::start("events_packing").await else {
        return;
    };
    let server = fleet.serve_here().await;
    wait_for_listeners(&fleet.pool, 1).await;
    let mut stream = EventStream::open(server.http_address).await;
    // 1200 events in runs of 400 equal ones: several payloads, some of
    // them equal but for their part number.
    let mut outbox = Outbox::new();
    let ids: Vec<String> = (0..1200).map(|i| format!("node-{}", i / 400)).collect();
    for id in &ids {
        outbox.push(&Notice::Nodes {
            node_id: id,
            change: events::NodeChange::Added,
        });
    }
    let payloads = outbox.payloads();
    assert!(payloads.len() >= 6, "{}", payloads.len());
    let body = |p: &String| p.split_once('\n').map(|(_, events)| events.to_owned());
    assert_eq!(body(&payloads[0]), body(&payloads[1]), "equal packs");
    let mut tx = fleet.pool.begin().await.expect("begin");
    outbox.send(&mut tx).await.expect("notify");
    tx.commit().await.expect("commit");
    for id in &ids {
        let data = stream.expect("nodes").await;
        assert_eq!(&data["nodeId"], id.as_str());
    }
    // Nothing more: the next event is the one sent next.
    let mut outbox = Outbox::new();
    outbox.push(&Notice::Nodes {
        node_id: "last",
        change: events::NodeChange::Removed,
    });
    let mut conn = fleet.pool.acquire().await.expect("connection");
    outbox.send(&mut conn).await.expect("notify");
    assert_eq!(stream.expect("nodes").await["nodeId"], "last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_connection_is_a_resync() {
    let Some(fleet) = Fleet::start("events_resync").await else {
        return;
    };
    let node = fleet.add_node("r").await;
    let server = fleet.serve_here().await;
    wait_for_listeners(&fleet.pool, 1).await;
    let mut stream = EventStream::open(server.http_address).await;
    let terminated: Vec<bool> = sqlx::query_scalar(
        r#"SELECT pg_terminate_backend(pid) FROM pg_stat_activity
           WHERE query LIKE 'LISTEN "tally_events"%'"#,
    )
    .fetch_all(&fleet.pool)
    .await
    .expect("terminate the listener's connection");
    assert_eq!(terminated, [true]);
    let data = stream.expect("resync").await;
    assert_eq!(data, serde_json::json!({"type": "resync"}));
    // And it listens again.
    wait_for_listeners(&fleet.pool, 1).await;
    let mut client = fleet::client(server.address).await;
    fleet::send(
        &mut client,
        Some(&node.token),
        fleet::heartbeat("e", 1, 10, 20),
    )
    .await
    .expect("applied");
    let data = stream.expect("heartbeat").await;
    assert_eq!(data["traffic"]["totalUpload"], "20");
}
