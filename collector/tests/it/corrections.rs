//! Corrections by admins against a real PostgreSQL (and real HTTP and the
//! built binary): calibrations are audited exactly, keep period <= total,
//! change nothing when refused, compose with heartbeats (before, after and
//! concurrently, without deadlocks or lost bytes), show in the node's
//! history and are announced; held anomalies are accepted exactly once
//! (into the current or the archived period) or discarded; the admin token
//! guards every change; the command line round-trips.

use crate::common;

use std::{
    net::SocketAddr,
    process::{Command, Output},
    time::Duration,
};

use chrono::{NaiveDateTime, Utc};
use common::{
    fleet::{self, Fleet},
    http::{Client, Response},
};
use sqlx::{PgPool, Row as _};
use tally_collector::{
    corrections::{
        Audit,
        anomalies::{self, Credit, Decision, Status},
        calibrate::{self, Adjustment, Changes, Counters},
    },
    error::Error,
    http::{TokenSet, Tokens},
};
use tally_proto::v1::Outcome;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

const ADMIN: &str = "admin-token-for-the-corrections-tests";
const READ: &str = "read-token-for-the-corrections-tests";

fn audit(actor: &str, reason: &str) -> Audit {
    Audit::new(actor, reason).expect("a valid actor and reason")
}

/// Sets a node's four counters directly (the starting point of a test).
async fn set_counters(pool: &PgPool, node: &str, c: Counters) {
    sqlx::query(
        r#"UPDATE "traffic_stats" SET "totalUpload" = $2, "totalDownload" = $3,
             "periodUpload" = $4, "periodDownload" = $5 WHERE "nodeId" = $1"#,
    )
    .bind(node)
    .bind(c.total_upload)
    .bind(c.total_download)
    .bind(c.period_upload)
    .bind(c.period_download)
    .execute(pool)
    .await
    .expect("set counters");
}

async fn counters(fleet: &Fleet, node: &str) -> Counters {
    let (total_download, total_upload, period_download, period_upload) = fleet.totals(node).await;
    Counters {
        total_upload,
        total_download,
        period_upload,
        period_download,
    }
}

/// Every audit row of the node, oldest first, as stored.
async fn audit_rows(pool: &PgPool, node: &str) -> Vec<serde_json::Value> {
    sqlx::query_scalar::<_, serde_json::Value>(
        r#"SELECT row_to_json(c) FROM "calibrations" c WHERE "nodeId" = $1 ORDER BY "id""#,
    )
    .bind(node)
    .fetch_all(pool)
    .await
    .expect("calibrations")
}

async fn period_start(pool: &PgPool, node: &str) -> NaiveDateTime {
    sqlx::query_scalar(r#"SELECT "periodStart" FROM "traffic_stats" WHERE "nodeId" = $1"#)
        .bind(node)
        .fetch_one(pool)
        .await
        .expect("periodStart")
}

/// Holds an anomaly of `upload`/`download` bytes in the period that
/// started at `period`, as the ingest would; its id.
async fn hold(
    pool: &PgPool,
    node: &str,
    (upload, download): (i64, i64),
    period: NaiveDateTime,
    detected: NaiveDateTime,
) -> i64 {
    sqlx::query_scalar(
        r#"INSERT INTO "anomalies" ("nodeId", "interface", "ifindex", "detectedAt", "upload",
             "download", "elapsedMs", "limitBytes", "periodStart")
           VALUES ($1, 'eth0', 2, $2, $3, $4, 1000, 12500000000, $5) RETURNING "id""#,
    )
    .bind(node)
    .bind(detected)
    .bind(upload)
    .bind(download)
    .bind(period)
    .fetch_one(pool)
    .await
    .expect("anomaly")
}

fn at(text: &str) -> NaiveDateTime {
    chrono::DateTime::parse_from_rfc3339(text)
        .expect("timestamp")
        .naive_utc()
}

fn refused_message(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::InvalidArgument(message) | Error::Conflict(message)) => message,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibrations_are_audited_and_keep_the_counters_consistent() {
    let Some(fleet) = Fleet::start("corrections_audit").await else {
        return;
    };
    let node = fleet.add_node("web-1").await;
    let other = fleet.add_node("web-2").await;
    let start = Counters {
        total_upload: 4000,
        total_download: 10_000,
        period_upload: 1500,
        period_download: 6000,
    };
    set_counters(&fleet.pool, &node.id, start).await;
    set_counters(&fleet.pool, &other.id, start).await;

    // A period offset moves the total by the same amount.
    let first = calibrate::calibrate(
        &fleet.pool,
        &node.id,
        &Changes {
            period_upload: Some(Adjustment::Offset(-1000)),
            ..Changes::default()
        },
        &audit(" alice ", " match provider bill #123 "),
    )
    .await
    .expect("calibrated");
    let after_first = Counters {
        total_upload: 3000,
        period_upload: 500,
        ..start
    };
    assert_eq!(counters(&fleet, &node.id).await, after_first);
    assert_eq!((first.before, first.after), (start, after_first));
    assert_eq!(
        (first.actor.as_str(), first.reason.as_str()),
        ("alice", "match provider bill #123"),
        "trimmed"
    );
    let rows = audit_rows(&fleet.pool, &node.id).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    for (column, value) in [
        ("totalUploadBefore", 4000),
        ("totalDownloadBefore", 10_000),
        ("periodUploadBefore", 1500),
        ("periodDownloadBefore", 6000),
        ("totalUploadAfter", 3000),
        ("totalDownloadAfter", 10_000),
        ("periodUploadAfter", 500),
        ("periodDownloadAfter", 6000),
    ] {
        assert_eq!(row[column], value, "{column}: {row}");
    }
    assert_eq!(row["actor"], "alice");
    assert_eq!(row["reason"], "match provider bill #123");
    assert_eq!(row["id"], first.id);
    let age = Utc::now().naive_utc() - first.at;
    assert!(age >= chrono::Duration::zero() && age < chrono::Duration::minutes(1));

    // Setting a total (by name) changes only the total; setting a period
    // moves its total.
    let second = calibrate::calibrate(
        &fleet.pool,
        "web-1",
        &Changes {
            total_download: Some(Adjustment::Set(50_000)),
            period_upload: Some(Adjustment::Set(700)),
            ..Changes::default()
        },
        &audit("bob", "new bill"),
    )
    .await
    .expect("calibrated");
    let after_second = Counters {
        total_upload: 3200,
        total_download: 50_000,
        period_upload: 700,
        period_download: 6000,
    };
    assert_eq!(counters(&fleet, &node.id).await, after_second);
    assert_eq!(
        (second.node_id.as_str(), second.before, second.after),
        (node.id.as_str(), after_first, after_second)
    );

    // Refused: nothing changes, no audit row.
    let snapshot = fleet.snapshot(&node.id).await;
    let refusals = [
        (
            Changes {
                total_download: Some(Adjustment::Set(5999)),
                ..Changes::default()
            },
            "period download (6000) would exceed total download (5999)",
        ),
        (
            Changes {
                period_upload: Some(Adjustment::Offset(-701)),
                ..Changes::default()
            },
            "period upload would be -1 bytes",
        ),
        (
            Changes {
                total_upload: Some(Adjustment::Offset(i64::MAX - 3199)),
                ..Changes::default()
            },
            "more than 2^63 - 1",
        ),
        (
            Changes {
                period_upload: Some(Adjustment::Set(700)),
                total_download: Some(Adjustment::Offset(0)),
                ..Changes::default()
            },
            "changes nothing",
        ),
        (Changes::default(), "nothing to calibrate"),
    ];
    for (changes, expected) in refusals {
        let message = refused_message(
            calibrate::calibrate(&fleet.pool, &node.id, &changes, &audit("eve", "x")).await,
        );
        assert!(message.contains(expected), "{message}");
    }
    assert_eq!(fleet.snapshot(&node.id).await, snapshot, "nothing changed");
    assert_eq!(audit_rows(&fleet.pool, &node.id).await.len(), 2);
    assert!(matches!(
        calibrate::calibrate(
            &fleet.pool,
            "nobody",
            &Changes {
                total_upload: Some(Adjustment::Offset(1)),
                ..Changes::default()
            },
            &audit("eve", "x")
        )
        .await,
        Err(Error::NoSuchNode(_))
    ));
    // Right up to the limit is fine.
    calibrate::calibrate(
        &fleet.pool,
        &node.id,
        &Changes {
            total_upload: Some(Adjustment::Offset(i64::MAX - 3200)),
            ..Changes::default()
        },
        &audit("eve", "the largest total"),
    )
    .await
    .expect("2^63 - 1");
    assert_eq!(counters(&fleet, &node.id).await.total_upload, i64::MAX);

    // The other node was never touched; listing is newest first.
    assert_eq!(counters(&fleet, &other.id).await, start);
    assert!(audit_rows(&fleet.pool, &other.id).await.is_empty());
    let listed = calibrate::list(&fleet.pool, "web-1", 100)
        .await
        .expect("list");
    let ids: Vec<i64> = listed.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(&ids[1..], [second.id, first.id]);
    assert_eq!(listed[1], second);
    assert_eq!(
        calibrate::list(&fleet.pool, &node.id, 1)
            .await
            .expect("list")
            .len(),
        1
    );
    // The invariant holds for every node.
    let broken: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM "traffic_stats"
           WHERE "periodUpload" > "totalUpload" OR "periodDownload" > "totalDownload""#,
    )
    .fetch_one(&fleet.pool)
    .await
    .expect("count");
    assert_eq!(broken, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_after_a_calibration_add_on_top_exactly() {
    let Some(fleet) = Fleet::start("corrections_heartbeats").await else {
        return;
    };
    let (node, _server, mut client) = fleet.served_node("web-1", None).await;
    let send = |sequence, rx, tx| fleet::heartbeat("e", sequence, rx, tx);
    let reply = fleet::send(&mut client, Some(&node.token), send(1, 10_000, 4_000))
        .await
        .expect("applied");
    assert_eq!(reply.outcome(), Outcome::Applied);
    calibrate::calibrate(
        &fleet.pool,
        &node.id,
        &Changes {
            period_download: Some(Adjustment::Offset(-3000)),
            total_upload: Some(Adjustment::Set(1_000_000)),
            ..Changes::default()
        },
        &audit("alice", "bill"),
    )
    .await
    .expect("calibrated");
    assert_eq!(
        counters(&fleet, &node.id).await,
        Counters {
            total_upload: 1_000_000,
            total_download: 7_000,
            period_upload: 4_000,
            period_download: 7_000,
        }
    );
    let reply = fleet::send(&mut client, Some(&node.token), send(2, 10_500, 4_100))
        .await
        .expect("applied");
    assert_eq!(reply.outcome(), Outcome::Applied);
    assert_eq!(
        counters(&fleet, &node.id).await,
        Counters {
            total_upload: 1_000_100,
            total_download: 7_500,
            period_upload: 4_100,
            period_download: 7_500,
        },
        "the heartbeat's deltas (+100 up, +500 down) on top of the calibrated counters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calibrations_and_heartbeats_neither_deadlock_nor_lose_bytes() {
    let Some(fleet) = Fleet::start("corrections_concurrent").await else {
        return;
    };
    const HEARTBEATS: u64 = 40;
    const CALIBRATIONS: i64 = 40;
    let server = fleet.serve_here().await;
    let a = fleet.add_node("a").await;
    let b = fleet.add_node("b").await;
    let beats = |token: String| {
        let address = server.address;
        tokio::spawn(async move {
            let mut client = fleet::client(address).await;
            for i in 1..=HEARTBEATS {
                let reply = fleet::send(
                    &mut client,
                    Some(&token),
                    fleet::heartbeat("e", i, i * 1000, i * 100),
                )
                .await
                .expect("applied");
                assert_eq!(reply.outcome(), Outcome::Applied, "heartbeat {i}");
            }
        })
    };
    let calibrations = {
        let pool = fleet.pool.clone();
        let ids = [a.id.clone(), b.id.clone()];
        tokio::spawn(async move {
            for i in 0..CALIBRATIONS {
                // Alternating nodes; each call on its own transaction.
                let id = &ids[(i % 2) as usize];
                calibrate::calibrate(
                    &pool,
                    id,
                    &Changes {
                        period_download: Some(Adjustment::Offset(7)),
                        total_upload: Some(Adjustment::Offset(3)),
                        ..Changes::default()
                    },
                    &Audit::new("load", "concurrency test").expect("audit"),
                )
                .await
                .unwrap_or_else(|e| panic!("calibration {i}: {e}"));
            }
        })
    };
    let all = async {
        let (x, y, z) = tokio::join!(beats(a.token.clone()), beats(b.token.clone()), calibrations);
        x.expect("heartbeats of a");
        y.expect("heartbeats of b");
        z.expect("calibrations");
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("no deadlock: everything done within 2 minutes");
    let each = CALIBRATIONS / 2;
    let heartbeats = HEARTBEATS as i64;
    for node in [&a, &b] {
        assert_eq!(
            counters(&fleet, &node.id).await,
            Counters {
                total_upload: heartbeats * 100 + 3 * each,
                total_download: heartbeats * 1000 + 7 * each,
                period_upload: heartbeats * 100,
                period_download: heartbeats * 1000 + 7 * each,
            },
            "node {}",
            node.name
        );
        assert_eq!(audit_rows(&fleet.pool, &node.id).await.len(), each as usize);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_are_accepted_once_or_discarded() {
    let Some(fleet) = Fleet::start("corrections_anomalies").await else {
        return;
    };
    let node = fleet.add_node("web-1").await;
    let other = fleet.add_node("web-2").await;
    let start = Counters {
        total_upload: 1000,
        total_download: 2000,
        period_upload: 100,
        period_download: 200,
    };
    set_counters(&fleet.pool, &node.id, start).await;
    let current = period_start(&fleet.pool, &node.id).await;
    let first = hold(
        &fleet.pool,
        &node.id,
        (5_000, 70_000),
        current,
        at("2026-11-25T10:00:00Z"),
    )
    .await;
    let second = hold(
        &fleet.pool,
        &node.id,
        (1, 2),
        current,
        at("2026-11-25T11:00:00Z"),
    )
    .await;
    let elsewhere = hold(
        &fleet.pool,
        &other.id,
        (3, 4),
        period_start(&fleet.pool, &other.id).await,
        at("2026-11-25T12:00:00Z"),
    )
    .await;

    let held = anomalies::list(&fleet.pool, Some(Status::Held), 100)
        .await
        .expect("list");
    let ids: Vec<i64> = held.iter().map(|a| a.id).collect();
    assert_eq!(ids, [elsewhere, second, first], "newest first");
    let mine = anomalies::of_node(&fleet.pool, "web-1", None, 100)
        .await
        .expect("of node");
    assert_eq!(
        mine.iter().map(|a| a.id).collect::<Vec<_>>(),
        [second, first]
    );
    assert_eq!(
        anomalies::list(&fleet.pool, Some(Status::Held), 1)
            .await
            .expect("list")
            .len(),
        1
    );

    // Accepted once: the totals and the current period grow by its bytes.
    let decided = anomalies::decide(
        &fleet.pool,
        first,
        Decision::Accept,
        &audit("alice", "a backup really ran"),
    )
    .await
    .expect("accepted");
    assert_eq!(decided.credit, Credit::CurrentPeriod);
    let accepted = Counters {
        total_upload: 6000,
        total_download: 72_000,
        period_upload: 5100,
        period_download: 70_200,
    };
    assert_eq!(counters(&fleet, &node.id).await, accepted);
    assert_eq!(Counters::from(&decided.traffic), accepted);
    let a = &decided.anomaly;
    assert_eq!(a.status, Status::Accepted);
    assert_eq!(
        (a.decided_by.as_deref(), a.reason.as_deref()),
        (Some("alice"), Some("a backup really ran"))
    );
    assert!(a.decided_at.is_some());
    let snapshot = fleet.snapshot(&node.id).await;
    for decision in [Decision::Accept, Decision::Discard] {
        match anomalies::decide(&fleet.pool, first, decision, &audit("bob", "again")).await {
            Err(Error::Conflict(message)) => {
                assert!(
                    message.contains("accepted already by \"alice\""),
                    "{message}"
                )
            }
            other => panic!("{decision:?} a second time: {other:?}"),
        }
    }
    assert_eq!(
        fleet.snapshot(&node.id).await,
        snapshot,
        "a second decision adds nothing"
    );

    // Discarded: nothing added, the row stays with the decision.
    let decided = anomalies::decide(
        &fleet.pool,
        second,
        Decision::Discard,
        &audit("carol", "a counter glitch"),
    )
    .await
    .expect("discarded");
    assert_eq!(decided.credit, Credit::Nothing);
    assert_eq!(counters(&fleet, &node.id).await, accepted);
    let row = sqlx::query(
        r#"SELECT "status", "decidedBy", "reason", "decidedAt", "upload", "download"
           FROM "anomalies" WHERE "id" = $1"#,
    )
    .bind(second)
    .fetch_one(&fleet.pool)
    .await
    .expect("kept");
    assert_eq!(row.get::<String, _>("status"), "discarded");
    assert_eq!(row.get::<String, _>("decidedBy"), "carol");
    assert_eq!(row.get::<String, _>("reason"), "a counter glitch");
    assert!(row.get::<Option<NaiveDateTime>, _>("decidedAt").is_some());
    assert_eq!(
        (row.get::<i64, _>("upload"), row.get::<i64, _>("download")),
        (1, 2)
    );

    let held = anomalies::list(&fleet.pool, Some(Status::Held), 100)
        .await
        .expect("list");
    assert_eq!(held.iter().map(|a| a.id).collect::<Vec<_>>(), [elsewhere]);
    let discarded = anomalies::list(&fleet.pool, Some(Status::Discarded), 100)
        .await
        .expect("list");
    assert_eq!(discarded.iter().map(|a| a.id).collect::<Vec<_>>(), [second]);
    assert!(matches!(
        anomalies::decide(&fleet.pool, 999_999, Decision::Accept, &audit("a", "b")).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        anomalies::of_node(&fleet.pool, "nobody", None, 10).await,
        Err(Error::NoSuchNode(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_of_an_archived_period_goes_to_that_period() {
    let Some(fleet) = Fleet::start("corrections_archived").await else {
        return;
    };
    let node = fleet.add_node("web-1").await;
    let start = Counters {
        total_upload: 1000,
        total_download: 2000,
        period_upload: 10,
        period_download: 20,
    };
    set_counters(&fleet.pool, &node.id, start).await;
    let (old, end) = (at("2026-10-01T00:00:00Z"), at("2026-11-01T00:00:00Z"));
    let period: i64 = sqlx::query_scalar(
        r#"INSERT INTO "billing_periods" ("nodeId", "start", "end", "upload", "download",
             "peakRate", "p95Rate", "mode", "closedBy", "closedAt")
           VALUES ($1, $2, $3, 300, 400, 0, 0, 'sum', 'schedule', $3) RETURNING "id""#,
    )
    .bind(&node.id)
    .bind(old)
    .bind(end)
    .fetch_one(&fleet.pool)
    .await
    .expect("archived period");
    let archived = hold(
        &fleet.pool,
        &node.id,
        (50, 60),
        old,
        at("2026-10-20T00:00:00Z"),
    )
    .await;
    let lost = hold(
        &fleet.pool,
        &node.id,
        (7, 8),
        at("2026-09-01T00:00:00Z"),
        at("2026-09-20T00:00:00Z"),
    )
    .await;

    let decided = anomalies::decide(&fleet.pool, archived, Decision::Accept, &audit("a", "ok"))
        .await
        .expect("accepted");
    assert_eq!(
        decided.credit,
        Credit::ArchivedPeriod {
            id: period,
            start: old,
            end
        }
    );
    let stored: (i64, i64) =
        sqlx::query_as(r#"SELECT "upload", "download" FROM "billing_periods" WHERE "id" = $1"#)
            .bind(period)
            .fetch_one(&fleet.pool)
            .await
            .expect("period");
    assert_eq!(
        stored,
        (350, 460),
        "the archived period grew by the anomaly"
    );
    assert_eq!(
        counters(&fleet, &node.id).await,
        Counters {
            total_upload: 1050,
            total_download: 2060,
            ..start
        },
        "the totals grew, the current period did not"
    );

    let decided = anomalies::decide(&fleet.pool, lost, Decision::Accept, &audit("a", "ok"))
        .await
        .expect("accepted");
    assert_eq!(decided.credit, Credit::TotalsOnly);
    assert!(
        decided
            .credit
            .describe(&decided.anomaly)
            .contains("totals only"),
        "the answer says so"
    );
    assert_eq!(
        counters(&fleet, &node.id).await,
        Counters {
            total_upload: 1057,
            total_download: 2068,
            ..start
        }
    );
}

/// An open `GET /api/v1/events` (chunked SSE over raw HTTP/1.1).
struct EventStream {
    reader: BufReader<TcpStream>,
    pending: String,
}

impl EventStream {
    async fn open(address: SocketAddr, token: &str) -> EventStream {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let request = format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).await.expect("status");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("head");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        EventStream {
            reader,
            pending: String::new(),
        }
    }

    /// The next event other than heartbeats: (name, data).
    async fn next(&mut self) -> (String, serde_json::Value) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                while let Some(end) = self.pending.find("\n\n") {
                    let block: String = self.pending.drain(..end + 2).collect();
                    let mut event = String::new();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(name) = line.strip_prefix("event:") {
                            event = name.trim().to_owned();
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim_start());
                        }
                    }
                    if !data.is_empty() && event != "heartbeat" {
                        return (event, serde_json::from_str(&data).expect("JSON data"));
                    }
                }
                let mut size = String::new();
                self.reader.read_line(&mut size).await.expect("chunk size");
                let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
                assert!(size > 0, "the stream ended");
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).await.expect("chunk");
                chunk.truncate(size);
                self.pending
                    .push_str(&String::from_utf8(chunk).expect("UTF-8"));
            }
        })
        .await
        .expect("an event within 10 s")
    }
}

/// Waits until the collector LISTENs for events.
async fn wait_for_listener(pool: &PgPool) {
    for _ in 0..200 {
        let listening: i64 = sqlx::query_scalar(
            r#"SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN "tally_events"%'"#,
        )
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        if listening > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the collector does not LISTEN for events");
}

fn assert_error(response: &Response, status: u16, code: &str, message: &str) {
    assert_eq!(response.status, status, "{}", response.body);
    assert_eq!(response.error_code(), Some(code), "{}", response.body);
    let text = response.json["error"]["message"].as_str().unwrap_or("");
    assert!(text.contains(message), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_guards_changes_announces_them_and_shows_them_in_the_history() {
    let Some(fleet) = Fleet::start("corrections_api").await else {
        return;
    };
    let node = fleet.add_node("web-1").await;
    set_counters(
        &fleet.pool,
        &node.id,
        Counters {
            total_upload: 1000,
            total_download: 2000,
            period_upload: 100,
            period_download: 200,
        },
    )
    .await;
    let server = fleet
        .serve_here_with(|options| {
            options.tokens = Tokens::new(TokenSet {
                admin: vec![ADMIN.into()],
                read: vec![READ.into()],
            })
        })
        .await;
    wait_for_listener(&fleet.pool).await;
    let anonymous = Client::new(server.http_address);
    let reader = anonymous.with_token(Some(READ));
    let admin = anonymous.with_token(Some(ADMIN));
    let mut events = EventStream::open(server.http_address, READ).await;
    let path = format!("/api/v1/nodes/{}/calibrations", node.id);
    let body = r#"{"period": {"upload": {"set": "150"}, "download": {"offset": "-50"}},
                   "total": {"upload": {"offset": "+1"}},
                   "actor": "alice", "reason": "match provider bill #123"}"#;

    // Only the admin token changes anything.
    let snapshot = fleet.snapshot(&node.id).await;
    for client in [&anonymous, &reader] {
        let response = client.post(&path, Some(body)).await;
        assert_error(&response, 401, "unauthenticated", "");
    }
    // What the counters as they are do not allow: 409.
    for (body, message) in [
        (
            r#"{"total": {"download": {"set": "199"}}, "actor": "a", "reason": "r"}"#,
            "period download (200) would exceed total download (199)",
        ),
        (
            r#"{"total": {"download": {"set": "2000"}}, "actor": "a", "reason": "r"}"#,
            "changes nothing",
        ),
        (
            r#"{"period": {"download": {"offset": "-201"}}, "actor": "a", "reason": "r"}"#,
            "period download would be -1 bytes",
        ),
    ] {
        let response = admin.post(&path, Some(body)).await;
        assert_error(&response, 409, "conflict", message);
    }
    for (body, message) in [
        (
            r#"{"total": {"download": {"set": "1"}}, "actor": " ", "reason": "r"}"#,
            "actor:",
        ),
        (
            r#"{"total": {"download": {"set": "1"}}, "actor": "a"}"#,
            "request body",
        ),
        (
            r#"{"total": {"download": {"set": 1}}, "actor": "a", "reason": "r"}"#,
            "request body",
        ),
        (r#"{"actor": "a", "reason": "r"}"#, "nothing to calibrate"),
    ] {
        let response = admin.post(&path, Some(body)).await;
        assert_error(&response, 400, "invalid_argument", message);
    }
    assert_eq!(fleet.snapshot(&node.id).await, snapshot, "nothing changed");
    assert!(audit_rows(&fleet.pool, &node.id).await.is_empty());
    let response = admin
        .post("/api/v1/nodes/nobody/calibrations", Some(body))
        .await;
    assert_error(&response, 404, "not_found", "nobody");
    let response = admin
        .post("/api/v1/nodes/web-1/calibrations", Some(body))
        .await;
    assert_eq!(response.status, 404, "the API takes ids: {}", response.body);

    let response = admin.post(&path, Some(body)).await;
    assert_eq!(response.status, 201, "{}", response.body);
    let calibration = &response.json;
    let after = serde_json::json!({
        "totalUpload": "1051", "totalDownload": "1950",
        "periodUpload": "150", "periodDownload": "150"
    });
    assert_eq!(calibration["nodeId"], node.id.as_str());
    assert_eq!(calibration["actor"], "alice");
    assert_eq!(calibration["reason"], "match provider bill #123");
    assert_eq!(
        calibration["before"],
        serde_json::json!({
            "totalUpload": "1000", "totalDownload": "2000",
            "periodUpload": "100", "periodDownload": "200"
        })
    );
    assert_eq!(calibration["after"], after);
    let id = calibration["id"].as_i64().expect("an id");

    let (name, event) = events.next().await;
    assert_eq!(name, "calibration");
    assert_eq!(event["type"], "calibration");
    assert_eq!(event["nodeId"], node.id.as_str());
    assert_eq!(event["calibrationId"], id);
    for field in [
        "totalUpload",
        "totalDownload",
        "periodUpload",
        "periodDownload",
    ] {
        assert_eq!(event["traffic"][field], after[field], "{field}");
    }

    let listed = reader.get(&path).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.json["calibrations"][0], *calibration);
    assert_eq!(anonymous.get(&path).await.status, 401);
    assert_error(
        &reader.get(&format!("{path}?limit=0")).await,
        400,
        "invalid_argument",
        "limit",
    );

    // The history shows the calibrations made in its window, only those.
    let history = |from: &str, to: &str| {
        format!(
            "/api/v1/nodes/{}/history?from={from}&to={to}&step=1m",
            node.id
        )
    };
    let now = Utc::now();
    let stamp = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let response = reader
        .get(&history(
            &stamp(now - chrono::Duration::minutes(10)),
            &stamp(now + chrono::Duration::minutes(2)),
        ))
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.json["calibrations"],
        serde_json::json!([calibration.clone()])
    );
    let response = reader
        .get(&history(
            &stamp(now - chrono::Duration::hours(3)),
            &stamp(now - chrono::Duration::hours(2)),
        ))
        .await;
    assert_eq!(response.json["calibrations"], serde_json::json!([]));

    // Anomalies: listed, accepted once by the admin, announced.
    let current = period_start(&fleet.pool, &node.id).await;
    let anomaly = hold(
        &fleet.pool,
        &node.id,
        (10, 20),
        current,
        at("2026-11-25T10:00:00Z"),
    )
    .await;
    let listed = reader.get("/api/v1/anomalies?status=held").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let row = &listed.json["anomalies"][0];
    assert_eq!(row["id"], anomaly);
    assert_eq!(row["status"], "held");
    assert_eq!(row["upload"], "10");
    assert_eq!(row["download"], "20");
    assert_eq!(row["limitBytes"], "12500000000");
    assert_eq!(row["decidedBy"], serde_json::Value::Null);
    let of_node = reader
        .get(&format!("/api/v1/nodes/{}/anomalies", node.id))
        .await;
    assert_eq!(of_node.json["anomalies"][0]["id"], anomaly);
    assert_error(
        &reader.get("/api/v1/anomalies?status=pending").await,
        400,
        "invalid_argument",
        "status",
    );
    let accept = format!("/api/v1/anomalies/{anomaly}/accept");
    let decision = r#"{"actor": "alice", "reason": "real traffic"}"#;
    assert_error(
        &reader.post(&accept, Some(decision)).await,
        401,
        "unauthenticated",
        "",
    );
    assert_error(
        &admin.post(&accept, Some(r#"{"actor": "alice"}"#)).await,
        400,
        "invalid_argument",
        "request body",
    );
    let response = admin.post(&accept, Some(decision)).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json["credited"], "current_period");
    assert_eq!(response.json["anomaly"]["status"], "accepted");
    assert_eq!(response.json["anomaly"]["decidedBy"], "alice");
    assert_eq!(response.json["traffic"]["totalUpload"], "1061");
    assert_eq!(response.json["traffic"]["periodDownload"], "170");
    let (name, event) = events.next().await;
    assert_eq!(name, "anomaly");
    assert_eq!(event["anomalyId"], anomaly);
    assert_eq!(event["status"], "accepted");
    assert_eq!(event["credited"], "current_period");
    assert_eq!(event["traffic"]["totalDownload"], "1970");

    let snapshot = fleet.snapshot(&node.id).await;
    assert_error(
        &admin.post(&accept, Some(decision)).await,
        409,
        "conflict",
        "decided once",
    );
    assert_error(
        &admin
            .post(
                &format!("/api/v1/anomalies/{anomaly}/discard"),
                Some(decision),
            )
            .await,
        409,
        "conflict",
        "accepted already",
    );
    assert_eq!(fleet.snapshot(&node.id).await, snapshot);
    assert_error(
        &admin
            .post("/api/v1/anomalies/424242/discard", Some(decision))
            .await,
        404,
        "not_found",
        "no anomaly 424242",
    );
}

fn run(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-collector"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("NO_COLOR", "1")
        .output()
        .expect("run tally-collector")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_calibrates_and_decides() {
    let Some(fleet) = Fleet::start("corrections_cli").await else {
        return;
    };
    let node = fleet.add_node("web-1").await;
    let start = Counters {
        total_upload: 1000,
        total_download: 2000,
        period_upload: 100,
        period_download: 200,
    };
    set_counters(&fleet.pool, &node.id, start).await;

    let out = run(
        &fleet.url,
        &[
            "calibrate",
            "web-1",
            "--period-upload",
            "-40",
            "--total-download",
            "=5000",
            "--actor",
            "alice",
            "--reason",
            "provider bill #7",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("node {} calibrated", node.id)),
        "{text}"
    );
    assert!(text.contains("by alice: provider bill #7"), "{text}");
    assert!(text.contains("total download"), "{text}");
    let after = Counters {
        total_upload: 960,
        total_download: 5000,
        period_upload: 60,
        period_download: 200,
    };
    assert_eq!(counters(&fleet, &node.id).await, after);
    let rows = audit_rows(&fleet.pool, &node.id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["actor"], "alice");
    assert_eq!(rows[0]["totalDownloadAfter"], 5000);

    // Refused: a clear error, nothing changed.
    let snapshot = fleet.snapshot(&node.id).await;
    let out = run(
        &fleet.url,
        &[
            "calibrate",
            "web-1",
            "--period-download",
            "=6000",
            "--total-download",
            "=5000",
            "--actor",
            "alice",
            "--reason",
            "oops",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("period download (6000) would exceed total download (5000)"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &fleet.url,
        &["calibrate", "web-1", "--actor", "a", "--reason", "r"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a usage error: {}",
        stderr(&out)
    );
    let out = run(
        &fleet.url,
        &[
            "calibrate",
            "web-1",
            "--total-upload",
            "+1",
            "--reason",
            "r",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "--actor is required");
    assert_eq!(fleet.snapshot(&node.id).await, snapshot);
    assert_eq!(audit_rows(&fleet.pool, &node.id).await.len(), 1);

    let out = run(&fleet.url, &["calibrations", &node.id]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("by alice: provider bill #7"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("total download") && l.contains("2000") && l.contains("5000")),
        "{text}"
    );

    // Anomalies: listed, accepted once, then listed as accepted.
    let current = period_start(&fleet.pool, &node.id).await;
    let anomaly = hold(
        &fleet.pool,
        &node.id,
        (11, 22),
        current,
        at("2026-11-25T10:00:00Z"),
    )
    .await;
    let out = run(&fleet.url, &["anomalies", "list"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&anomaly.to_string()))
        .unwrap_or_else(|| panic!("anomaly {anomaly} listed: {text}"));
    assert!(line.contains("web-1") && line.contains("held"), "{line}");
    let id = anomaly.to_string();
    let decide = |what: &str| {
        run(
            &fleet.url,
            &["anomalies", what, &id, "--actor", "bob", "--reason", "real"],
        )
    };
    let out = decide("accept");
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("added to the totals and to the current period"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        counters(&fleet, &node.id).await,
        Counters {
            total_upload: 971,
            total_download: 5022,
            period_upload: 71,
            period_download: 222,
        }
    );
    let out = decide("discard");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("decided once"), "{}", stderr(&out));
    let out = run(&fleet.url, &["anomalies", "list"]);
    assert!(stdout(&out).contains("no anomalies"), "{}", stdout(&out));
    let out = run(&fleet.url, &["anomalies", "list", "--status", "accepted"]);
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.contains("accepted") && l.contains("by bob: real")),
        "{text}"
    );
    let out = run(&fleet.url, &["anomalies", "list", "--status", "pending"]);
    assert_eq!(out.status.code(), Some(2));
}
