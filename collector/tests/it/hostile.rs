//! The collector against hostile and careless clients (issue 12), with a
//! real collector and PostgreSQL: one node's bad input never touches
//! another node, a message that does not decode is the caller's fault
//! (`INVALID_ARGUMENT`), a heartbeat with more entries than the contract
//! allows is refused before they are decoded, and a statement that fails
//! on one heartbeat's data refuses that one alone.

use crate::common;

use std::time::Duration;

use chrono::Utc;
use common::fleet::{self, Fleet};
use tally_collector::{
    auth,
    ingest::{self, BatchTime, Job},
    validate,
};
use tally_proto::v1::{HeartbeatReply, HeartbeatRequest, InterfaceCounters, Outcome};
use tonic::{Code, codegen::http::uri::PathAndQuery, transport::Channel};

/// A `HeartbeatRequest` whose text fields are bytes: what a client that
/// does not check UTF-8 (or a hostile one) can put on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct RawHeartbeat {
    #[prost(bytes = "vec", tag = "1")]
    boot_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    epoch: Vec<u8>,
    #[prost(uint64, tag = "5")]
    sequence: u64,
    #[prost(bytes = "vec", tag = "9")]
    hostname: Vec<u8>,
}

/// Sends `raw` as a `Send` call with `token`.
async fn send_raw(
    channel: Channel,
    token: &str,
    raw: RawHeartbeat,
) -> Result<HeartbeatReply, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(raw);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let codec = tonic_prost::ProstCodec::<RawHeartbeat, HeartbeatReply>::default();
    grpc.unary(
        request,
        PathAndQuery::from_static("/tally.v1.Heartbeat/Send"),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_does_not_decode_is_an_invalid_argument() {
    let Some(fleet) = Fleet::start("hostile_decode").await else {
        return;
    };
    let (node, server, _) = fleet.served_node("n", None).await;
    let channel = Channel::from_shared(format!("http://{}", server.address))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let before = fleet.snapshot(&node.id).await;
    let raw = RawHeartbeat {
        boot_id: b"boot".to_vec(),
        epoch: b"epoch".to_vec(),
        sequence: 1,
        hostname: vec![b'h', 0xff, 0xfe],
    };
    let status = send_raw(channel, &node.token, raw)
        .await
        .expect_err("not UTF-8");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("does not decode"), "{status:?}");
    assert_eq!(fleet.snapshot(&node.id).await, before, "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_entries_than_the_contract_allows_are_refused_before_decoding() {
    let Some(fleet) = Fleet::start("hostile_entries").await else {
        return;
    };
    let (node, _server, mut client) = fleet.served_node("n", None).await;
    let mut heartbeat = fleet::heartbeat("e", 1, 10, 10);
    // Empty entries: 2 bytes each on the wire.
    heartbeat.interfaces = vec![InterfaceCounters::default(); 200_000];
    let status = fleet::send(&mut client, Some(&node.token), heartbeat)
        .await
        .expect_err("too many");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("200000 interface entries (at most 16385): not decoded"),
        "{status:?}"
    );
}

/// A node sending heartbeats with a NUL in its host name, an interface
/// name or its epoch, in a tight loop, while a thousand others report:
/// every one of theirs is applied, every bad one refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nodes_bad_input_never_fails_another_nodes_heartbeats() {
    let Some(fleet) = Fleet::start("hostile_nul").await else {
        return;
    };
    const NODES: usize = 1000;
    let mut nodes = Vec::with_capacity(NODES);
    for i in 0..NODES {
        nodes.push(fleet.add_node(&format!("good-{i}")).await);
    }
    let bad = fleet.add_node("bad").await;
    // Started after the enrolments, so that its token book holds every
    // node at once (enrolled while it runs, each would be known only when
    // its `nodes` event is handled: 1,001 in a row take a while).
    let server = fleet.serve_here().await;
    let channels: Vec<_> = {
        let mut channels = Vec::new();
        for _ in 0..8 {
            channels.push(fleet::client(server.address).await);
        }
        channels
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let mut client = channels[0].clone();
        let token = bad.token.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut refused = 0u64;
            let mut sequence = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut heartbeat = fleet::heartbeat("e", sequence, sequence, sequence);
                match sequence % 3 {
                    0 => heartbeat.hostname = "evil\0host".into(),
                    1 => heartbeat.interfaces[0].name = "eth\0".into(),
                    _ => heartbeat.epoch = "e\0".into(),
                }
                sequence += 1;
                let status = fleet::send(&mut client, Some(&token), heartbeat)
                    .await
                    .expect_err("refused");
                assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                assert!(status.message().contains("control character"), "{status:?}");
                refused += 1;
            }
            refused
        })
    };
    for round in 1..=3u64 {
        let mut sends = Vec::with_capacity(NODES);
        for (i, node) in nodes.iter().enumerate() {
            let mut client = channels[i % channels.len()].clone();
            let token = node.token.clone();
            sends.push(tokio::spawn(async move {
                fleet::send(
                    &mut client,
                    Some(&token),
                    fleet::heartbeat("e", round, round * 100, round * 10),
                )
                .await
            }));
        }
        for send in sends {
            let reply = send
                .await
                .expect("task")
                .expect("a good heartbeat is taken");
            assert_eq!(reply.outcome(), Outcome::Applied);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused = attacker.await.expect("attacker");
    assert!(refused > 10, "the bad node kept sending: {refused}");
    let totals: Vec<(i64, i64)> = sqlx::query_as(
        r#"SELECT t."totalDownload", t."totalUpload" FROM "traffic_stats" t
           JOIN "nodes" n ON n."id" = t."nodeId" WHERE n."name" LIKE 'good-%'"#,
    )
    .fetch_all(&fleet.pool)
    .await
    .expect("totals");
    assert_eq!(totals.len(), NODES);
    assert!(
        totals.iter().all(|t| *t == (300, 30)),
        "every good node exact"
    );
    assert_eq!(
        fleet.totals(&bad.id).await,
        (0, 0, 0, 0),
        "nothing of the bad one"
    );
}

/// The backstop behind validation: a batch whose statement fails on one
/// heartbeat's data (here a NUL, which PostgreSQL refuses in text, put past
/// the checks) is applied in halves, and only that heartbeat is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_failing_on_one_heartbeat_refuses_that_one_alone() {
    let Some(fleet) = Fleet::start("hostile_isolate").await else {
        return;
    };
    let mut jobs = Vec::new();
    let mut ids = Vec::new();
    for i in 0..7u64 {
        let node = fleet.add_node(&format!("n{i}")).await;
        let request: HeartbeatRequest = fleet::heartbeat("e", 1, 100 + i, 10);
        let mut heartbeat = validate::heartbeat(request, i64::MAX / 2).expect("valid");
        if i == 4 {
            heartbeat.hostname = "bad\0name".into();
        }
        jobs.push(Job {
            credentials: auth::from_bearer(Some(&format!("Bearer {}", node.token))).expect("token"),
            heartbeat,
        });
        ids.push(node.id);
    }
    let mut conn = fleet.pool.acquire().await.expect("connection");
    let time = BatchTime::new(Utc::now().naive_utc(), None);
    let results = tokio::time::timeout(
        Duration::from_secs(30),
        ingest::apply_isolating(&mut conn, &jobs, time),
    )
    .await
    .expect("in time")
    .expect("the batch is not failed as a whole");
    for (i, result) in results.iter().enumerate() {
        if i == 4 {
            let error = result.as_ref().expect_err("the bad one is refused");
            assert!(
                matches!(error, tally_collector::error::Error::Invalid(_)),
                "{error:?}"
            );
            assert_eq!(fleet.totals(&ids[i]).await.0, 0);
        } else {
            assert_eq!(
                result.as_ref().expect("applied").outcome,
                Outcome::Applied,
                "{i}"
            );
            assert_eq!(fleet.totals(&ids[i]).await.0, 100 + i as i64, "{i}");
        }
    }
}

/// A heartbeat that names a loopback interface (no tally agent sends one;
/// an old or third-party one may): stored and shown, never summed into the
/// totals, periods, families or history, under either counting rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_entry_is_shown_and_never_counted() {
    let Some(fleet) = Fleet::start("hostile_loopback").await else {
        return;
    };
    let server = fleet.serve_here().await;
    let mut client = fleet::client(server.address).await;
    let api = common::http::Client::new(server.http_address);
    for rule in ["all", "uplink"] {
        let node = fleet.add_node(&format!("with-lo-{rule}")).await;
        fleet
            .set_node_settings(&node.id, &format!(r#""countRule" = '{rule}'"#))
            .await;
        let with_loopback = |sequence: u64, lo_bytes: u64| {
            let mut heartbeat = fleet::heartbeat("e", sequence, sequence * 100, sequence * 10);
            heartbeat.interfaces[0].default_route = true;
            let mut lo = heartbeat.interfaces[0].clone();
            lo.name = "lo".into();
            lo.ifindex = 1;
            lo.rx_bytes = lo_bytes;
            lo.tx_bytes = lo_bytes;
            lo.ipv4 = Some(tally_proto::v1::FamilyCounters {
                rx_bytes: lo_bytes,
                rx_packets: 1,
                tx_bytes: lo_bytes,
                tx_packets: 1,
            });
            heartbeat.interfaces.push(lo);
            heartbeat
        };
        for (sequence, lo_bytes) in [(1, 5_000), (2, 50_000)] {
            let reply = fleet::send(
                &mut client,
                Some(&node.token),
                with_loopback(sequence, lo_bytes),
            )
            .await
            .expect("taken");
            assert_eq!(reply.outcome(), Outcome::Applied);
        }
        // eth0 (routed) and eth1 (hardware) count under either rule; lo,
        // though it claims a default route, never.
        let expected = (200, 20);
        let (down, up, period_down, period_up) = fleet.totals(&node.id).await;
        assert_eq!((down, up), expected, "{rule}");
        assert_eq!((period_down, period_up), expected, "{rule}");
        let (history_down, history_up, families): (i64, i64, i64) = sqlx::query_as(
            r#"SELECT (SELECT sum("download")::int8 FROM "node_history" WHERE "nodeId" = $1),
                      (SELECT sum("upload")::int8 FROM "node_history" WHERE "nodeId" = $1),
                      (SELECT "ipv4Upload" + "ipv4Download" FROM "nodes" WHERE "id" = $1)"#,
        )
        .bind(&node.id)
        .fetch_one(&fleet.pool)
        .await
        .expect("history");
        assert_eq!((history_down, history_up), expected, "{rule}: history");
        assert_eq!(families, 0, "{rule}: no address family of lo");
        let lo_history: i64 = sqlx::query_scalar(
            r#"SELECT count(*) FROM "interface_history" WHERE "nodeId" = $1 AND "name" = 'lo'"#,
        )
        .bind(&node.id)
        .fetch_one(&fleet.pool)
        .await
        .expect("interface history");
        assert_eq!(lo_history, 0, "{rule}: no interface history of lo");
        let shown = api.get(&format!("/api/v1/nodes/{}", node.id)).await;
        let names: Vec<&str> = shown.json["interfaces"]
            .as_array()
            .expect("interfaces")
            .iter()
            .filter_map(|i| i["name"].as_str())
            .collect();
        assert!(names.contains(&"lo"), "{rule}: shown: {}", shown.body);
    }
}

/// `VmRSS` and `VmHWM` (its peak) of process `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A wrong secret for `node`: well formed, so only the check refuses it.
fn wrong_token(node: &tally_collector::nodes::Added) -> String {
    format!("{}.{}", node.id, "0".repeat(64))
}

/// 32 callers at once, each sending a 4 MiB heartbeat of empty entries
/// (2 bytes each on the wire, about 160 in memory once decoded) with a
/// wrong token, while real nodes report: the collector refuses them all
/// before reading their messages, its memory hardly grows, and every real
/// heartbeat is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_floods_cost_no_memory_and_real_nodes_go_on() {
    let Some(fleet) = Fleet::start("hostile_flood").await else {
        return;
    };
    let victim = fleet.add_node("victim").await;
    let mut real = Vec::new();
    for i in 0..20 {
        real.push(fleet.add_node(&format!("real-{i}")).await);
    }
    let collector = fleet::Process::start(&fleet.url);
    let mut client = fleet::client(collector.address).await;
    // Warm up: every real node reports once.
    for node in &real {
        let reply = fleet::send(
            &mut client,
            Some(&node.token),
            fleet::heartbeat("e", 1, 10, 1),
        )
        .await
        .expect("applied");
        assert_eq!(reply.outcome(), Outcome::Applied);
    }
    let (rss_before, peak_before) = memory_kib(collector.pid());
    let mut flood = fleet::heartbeat("e", 1, 0, 0);
    flood.interfaces = vec![InterfaceCounters::default(); 2 * 1024 * 1024];
    assert!(prost::Message::encoded_len(&flood) >= 4 * 1024 * 1024);
    let token = wrong_token(&victim);
    let mut attacks = Vec::new();
    for _ in 0..32 {
        let mut client = fleet::client(collector.address).await;
        let (flood, token) = (flood.clone(), token.clone());
        attacks.push(tokio::spawn(async move {
            fleet::send(&mut client, Some(&token), flood).await
        }));
    }
    let mut reports = Vec::new();
    for (i, node) in real.iter().enumerate() {
        let mut client = client.clone();
        let token = node.token.clone();
        reports.push(tokio::spawn(async move {
            fleet::send(
                &mut client,
                Some(&token),
                fleet::heartbeat("e", 2, 20 + i as u64, 2),
            )
            .await
        }));
    }
    for attack in attacks {
        let status = attack.await.expect("task").expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    for report in reports {
        let reply = report.await.expect("task").expect("a real node is served");
        assert_eq!(reply.outcome(), Outcome::Applied);
    }
    let (rss_after, peak_after) = memory_kib(collector.pid());
    let grown_kib = peak_after.saturating_sub(peak_before.max(rss_before));
    eprintln!(
        "collector memory: RSS {rss_before} KiB -> {rss_after} KiB, peak {peak_before} KiB -> \
         {peak_after} KiB: grew {grown_kib} KiB under 32 x 4 MiB unauthenticated messages"
    );
    assert!(
        grown_kib < 64 * 1024,
        "the peak grew by {grown_kib} KiB (at most 64 MiB)"
    );
    for (i, node) in real.iter().enumerate() {
        assert_eq!(fleet.totals(&node.id).await.0, 20 + i as i64);
    }
    assert_eq!(fleet.totals(&victim.id).await, (0, 0, 0, 0));
}

/// A `Stream` opened with a wrong token ends before any of its messages is
/// read: nothing stored, no batch, the refusal counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_a_wrong_token_ends_before_a_message_is_read() {
    let Some(fleet) = Fleet::start("hostile_stream").await else {
        return;
    };
    let (node, server, mut client) = fleet.served_node("n", None).await;
    let http = common::http::Client::new(server.http_address);
    let batches = || async {
        let text = http.get("/metrics").await.body;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (
            value("tally_ingest_batch_size_sum "),
            value("tally_heartbeats_total{outcome=\"rejected\"} "),
        )
    };
    let before = fleet.snapshot(&node.id).await;
    let (batched, rejected) = batches().await;
    let opened = fleet::Stream::open(&mut client, Some(&wrong_token(&node))).await;
    let status = match opened {
        Err(status) => status,
        Ok(mut stream) => {
            stream.push(fleet::heartbeat("e", 1, 100, 10));
            stream.next().await.expect_err("ended")
        }
    };
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(fleet.snapshot(&node.id).await, before, "nothing stored");
    let (batched_after, rejected_after) = batches().await;
    assert_eq!(batched_after, batched, "no heartbeat reached a batch");
    assert_eq!(rejected_after, rejected + 1.0, "the refusal is counted");
}

/// A removed node's token stops working within seconds on every replica
/// (the removal is announced to all of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_nodes_token_stops_working_on_every_replica() {
    let Some(fleet) = Fleet::start("hostile_removed").await else {
        return;
    };
    let node = fleet.add_node("leaving").await;
    let replicas = [
        fleet::Process::start(&fleet.url),
        fleet::Process::start(&fleet.url),
    ];
    let mut clients = Vec::new();
    for replica in &replicas {
        let mut client = fleet::client(replica.address).await;
        let reply = fleet::send(
            &mut client,
            Some(&node.token),
            fleet::heartbeat("e", 1, 1, 1),
        )
        .await;
        assert!(reply.is_ok(), "admitted before the removal: {reply:?}");
        clients.push(client);
    }
    tally_collector::nodes::remove(&fleet.pool, &node.id)
        .await
        .expect("removed");
    for (i, client) in clients.iter_mut().enumerate() {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let sent = fleet::send(client, Some(&node.token), fleet::heartbeat("e", 2, 2, 2)).await;
            match sent {
                Err(status) if status.code() == Code::Unauthenticated => break,
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "replica {i} still takes the removed node's token: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Each kind of work has its own pool, and every connection its statement
/// and lock timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pool_has_its_size_and_timeouts() {
    let Some(fleet) = Fleet::start("hostile_pools").await else {
        return;
    };
    let budget = tally_collector::db::Budget {
        writers: 3,
        readers: 2,
        upkeep: 1,
        statement_timeout: Duration::from_millis(1500),
        lock_timeout: Duration::from_millis(700),
    };
    let pools = tally_collector::db::Pools::new(&fleet.pool.connect_options(), &budget);
    for (pool, size, statements) in [
        (&pools.writers, 3, "1500ms"),
        (&pools.readers, 2, "1500ms"),
        (&pools.upkeep, 1, "45s"),
    ] {
        let (statement, lock): (String, String) = sqlx::query_as(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')",
        )
        .fetch_one(pool)
        .await
        .expect("settings");
        assert_eq!((statement.as_str(), lock.as_str()), (statements, "700ms"));
        assert_eq!(pool.options().get_max_connections(), size);
    }
    // A statement past its time is cancelled.
    let slow = sqlx::query("SELECT pg_sleep(3)")
        .execute(&pools.readers)
        .await;
    let error = slow.expect_err("cancelled");
    assert!(error.to_string().contains("statement timeout"), "{error}");
}

/// Expensive reads past `--max-expensive-reads` are answered 503 with
/// `Retry-After` at once, and the history answer has a cap that says how
/// to ask for less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_reads_are_bounded_and_say_how_to_ask_for_less() {
    let Some(fleet) = Fleet::start("hostile_reads").await else {
        return;
    };
    let node = fleet.add_node("many").await;
    // 300 interfaces: a day of minutes would be 300 × 1440 points.
    let names: Vec<String> = (0..300).map(|i| format!("veth{i}")).collect();
    sqlx::query(
        r#"INSERT INTO "interface_stats" ("nodeId", "name", "ifindex", "state", "rxBytes",
             "rxPackets", "txBytes", "txPackets", "updatedAt")
           SELECT $1, n, 1, 'attached', 0, 0, 0, 0, now() FROM UNNEST($2::text[]) AS n"#,
    )
    .bind(&node.id)
    .bind(&names)
    .execute(&fleet.pool)
    .await
    .expect("interfaces");
    let server = fleet.serve_here_with(|o| o.max_expensive_reads = 1).await;
    let api = common::http::Client::new(server.http_address);
    let day = |extra: &str| {
        format!(
            "/api/v1/nodes/{}/history?from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z&step=1m{extra}",
            node.id
        )
    };
    let refused = api.get(&day("")).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let message = refused.json["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("300 interfaces × 1440 points") && message.contains("interfaces=false"),
        "{message}"
    );
    let totals_only = api.get(&day("&interfaces=false")).await;
    assert_eq!(totals_only.status, 200, "{}", totals_only.body);
    assert_eq!(totals_only.json["interfaces"], serde_json::json!([]));
    assert_eq!(
        totals_only.json["points"].as_array().map(Vec::len),
        Some(1440)
    );
    // Many at once with one permit, the first held up (its table locked
    // by another transaction): the others wait a second for their turn,
    // then are answered busy with Retry-After; none fails otherwise.
    let mut lock = fleet.pool.begin().await.expect("begin");
    sqlx::query(r#"LOCK TABLE "node_history" IN ACCESS EXCLUSIVE MODE"#)
        .execute(&mut *lock)
        .await
        .expect("lock");
    let ranking = "/api/v1/rankings?by=window&window=366d";
    let timed = |_| async {
        let asked = std::time::Instant::now();
        let answer = api.get(ranking).await;
        (answer, asked.elapsed())
    };
    let release = async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        lock.rollback().await.expect("unlock");
    };
    let (answers, ()) = tokio::join!(futures_util::future::join_all((0..16).map(timed)), release);
    assert!(
        answers
            .iter()
            .all(|a| a.0.status == 200 || a.0.status == 503),
        "{:?}",
        answers.iter().map(|a| a.0.status).collect::<Vec<_>>()
    );
    let busy: Vec<_> = answers.iter().filter(|a| a.0.status == 503).collect();
    assert_eq!(busy.len(), 15, "one permit for sixteen at once");
    for (answer, waited) in &busy {
        assert!(
            *waited >= Duration::from_millis(900),
            "answered busy after {waited:?}"
        );
        assert_eq!(answer.json["error"]["code"], "busy", "{}", answer.body);
        assert_eq!(answer.header("retry-after"), Some("1"));
    }
}

/// About two million rows of minute history, 32 clients looping on the
/// most expensive reads (366-day window rankings, a year of history at
/// 1440 points) for 30 s while 1,000 nodes report every second: no
/// heartbeat is answered UNAVAILABLE or fails otherwise, and the readers
/// get answers or clean 503s. The heartbeats' round trips are printed, not
/// asserted (timing targets are the benchmarks' business).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_cannot_starve_the_writers() {
    let Some(fleet) = Fleet::start("hostile_readers").await else {
        return;
    };
    const NODES: usize = 1000;
    const SECONDS: u64 = 30;
    // 50 nodes × 28 days of minutes of node history (2,016,000 rows), and
    // as many of one interface's.
    let mut history_nodes = Vec::new();
    for i in 0..50 {
        history_nodes.push(fleet.add_node(&format!("old-{i:02}")).await.id);
    }
    let started = std::time::Instant::now();
    sqlx::query(
        r#"INSERT INTO "node_history"
             ("nodeId", "bucket", "upload", "download", "load1", "load5", "load15", "heartbeats")
           SELECT n, date_trunc('minute', now()::timestamp) - make_interval(mins => m),
                  m % 977, m % 1013, 0.5, 0.5, 0.5, 1
           FROM UNNEST($1::text[]) AS n, generate_series(1, 28 * 1440) AS m"#,
    )
    .bind(&history_nodes)
    .execute(&fleet.pool)
    .await
    .expect("node history");
    sqlx::query(
        r#"INSERT INTO "interface_history" ("nodeId", "name", "bucket", "rxBytes", "txBytes")
           SELECT n, 'eth0', date_trunc('minute', now()::timestamp) - make_interval(mins => m),
                  m % 977, m % 1013
           FROM UNNEST($1::text[]) AS n, generate_series(1, 28 * 1440) AS m"#,
    )
    .bind(&history_nodes)
    .execute(&fleet.pool)
    .await
    .expect("interface history");
    sqlx::query("ANALYZE")
        .execute(&fleet.pool)
        .await
        .expect("analyze");
    eprintln!("history written in {:?}", started.elapsed());
    let mut nodes = Vec::with_capacity(NODES);
    for i in 0..NODES {
        nodes.push(fleet.add_node(&format!("live-{i:04}")).await);
    }
    let server = fleet.serve_here_with(|_| {}).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(SECONDS);

    // The readers.
    let mut readers = Vec::new();
    for r in 0..32usize {
        let api = common::http::Client::new(server.http_address);
        let node = history_nodes[r % history_nodes.len()].clone();
        readers.push(tokio::spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
            let year_ago = (Utc::now() - chrono::Duration::days(366))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let paths = [
                "/api/v1/rankings?by=window&window=366d&limit=1000".to_owned(),
                format!("/api/v1/nodes/{node}/history?from={year_ago}&to={now}&step=367m"),
            ];
            let mut turn = r;
            while tokio::time::Instant::now() < deadline {
                let answer = api.get(&paths[turn % 2]).await;
                turn += 1;
                *statuses.entry(answer.status).or_default() += 1;
                // A careless client: it asks again at once, whatever
                // Retry-After says.
                if answer.status == 503 {
                    assert_eq!(answer.header("retry-after"), Some("1"), "{}", answer.body);
                }
            }
            statuses
        }));
    }

    // The writers: every node every second, over 8 channels.
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(fleet::client(server.address).await);
    }
    let mut senders = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut client = channels[i % channels.len()].clone();
        let token = node.token.clone();
        senders.push(tokio::spawn(async move {
            // Spread over the second.
            tokio::time::sleep(Duration::from_millis((i as u64 * 997) % 1000)).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut sequence = 0u64;
            let mut failures = Vec::new();
            let mut micros = Vec::new();
            while tokio::time::Instant::now() < deadline {
                tick.tick().await;
                sequence += 1;
                let heartbeat = fleet::heartbeat("e", sequence, sequence * 1000, sequence * 100);
                let sent = std::time::Instant::now();
                match fleet::send(&mut client, Some(&token), heartbeat).await {
                    Ok(reply) if reply.outcome() == Outcome::Applied => {}
                    other => failures.push(format!("{other:?}")),
                }
                micros.push(sent.elapsed().as_micros());
            }
            (sequence, failures, micros)
        }));
    }
    let mut sent = 0u64;
    let mut micros = Vec::new();
    for sender in senders {
        let (sequence, failures, round_trips) = sender.await.expect("sender");
        micros.extend(round_trips);
        assert!(
            failures.is_empty(),
            "a heartbeat was not applied: {failures:?}"
        );
        sent += sequence;
    }
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for reader in readers {
        for (status, count) in reader.await.expect("reader") {
            *statuses.entry(status).or_default() += count;
        }
    }
    micros.sort_unstable();
    let p99 = micros
        .get(micros.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or(0);
    eprintln!(
        "{sent} heartbeats from {NODES} nodes in {SECONDS} s under 32 readers: round trip \
         p50 {} ms, p99 {} ms; readers' answers by status: {statuses:?}",
        micros.get(micros.len() / 2).copied().unwrap_or(0) / 1000,
        p99 / 1000
    );
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.get(&200).is_some_and(|n| *n > 0), "{statuses:?}");
    assert!(
        statuses.get(&503).is_some_and(|n| *n > 0),
        "32 at once are more than the expensive reads served at once: {statuses:?}"
    );
}

/// A node whose rows another transaction holds locked fails its batch in
/// `--statement-timeout`, not after whatever that transaction takes: the
/// heartbeat is answered UNAVAILABLE (the agent sends again) and the next
/// one, once the lock is gone, is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_for_a_lock_no_longer_than_its_deadline() {
    let Some(fleet) = Fleet::start("hostile_deadline").await else {
        return;
    };
    let node = fleet.add_node("locked").await;
    let server = fleet
        .serve_here_with(|o| {
            o.database.statement_timeout = Duration::from_secs(1);
            o.database.lock_timeout = Duration::from_secs(60);
        })
        .await;
    let mut client = fleet::client(server.address).await;
    let mut holder = fleet.pool.begin().await.expect("transaction");
    sqlx::query(r#"SELECT 1 FROM "traffic_stats" WHERE "nodeId" = $1 FOR UPDATE"#)
        .bind(&node.id)
        .execute(&mut *holder)
        .await
        .expect("lock");
    let sent = std::time::Instant::now();
    let status = fleet::send(
        &mut client,
        Some(&node.token),
        fleet::heartbeat("e", 1, 5, 5),
    )
    .await
    .expect_err("not while locked");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "answered after {:?}",
        sent.elapsed()
    );
    assert!(!status.message().contains("traffic_stats"), "{status:?}");
    holder.rollback().await.expect("release");
    let reply = fleet::send(
        &mut client,
        Some(&node.token),
        fleet::heartbeat("e", 1, 5, 5),
    )
    .await
    .expect("applied once the lock is gone");
    assert_eq!(reply.outcome(), Outcome::Applied);
}

/// A heartbeat stream that sends nothing for `--stream-idle-timeout` is
/// ended; the agent's next heartbeat opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_heartbeat_stream_is_ended() {
    let Some(fleet) = Fleet::start("hostile_idle").await else {
        return;
    };
    let node = fleet.add_node("quiet").await;
    let server = fleet
        .serve_here_with(|o| o.stream_idle_timeout = Duration::from_secs(1))
        .await;
    let mut client = fleet::client(server.address).await;
    let mut stream = fleet::Stream::open(&mut client, Some(&node.token))
        .await
        .expect("open");
    let reply = stream.send(fleet::heartbeat("e", 1, 5, 5)).await;
    assert_eq!(reply.outcome(), Outcome::Applied);
    let idle = std::time::Instant::now();
    let ended = stream.next().await.expect("ended cleanly");
    assert!(ended.is_none(), "{ended:?}");
    assert!(
        idle.elapsed() < Duration::from_secs(5),
        "ended after {:?}",
        idle.elapsed()
    );
    let mut again = fleet::Stream::open(&mut client, Some(&node.token))
        .await
        .expect("a new stream");
    let reply = again.send(fleet::heartbeat("e", 2, 9, 9)).await;
    assert_eq!(reply.outcome(), Outcome::Applied);
}

/// At most `--max-event-streams` live event streams are open at once; more
/// are answered 503 busy with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_bounded() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Some(fleet) = Fleet::start("hostile_sse").await else {
        return;
    };
    let server = fleet.serve_here_with(|o| o.max_event_streams = 2).await;
    // Opens an event stream and reads its head; the connection is kept.
    let open = || async {
        let mut socket = tokio::net::TcpStream::connect(server.http_address)
            .await
            .expect("connect");
        socket
            .write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: tally\r\n\r\n")
            .await
            .expect("request");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut byte))
                .await
                .expect("a head in time")
                .expect("read");
            assert!(read > 0, "closed: {}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        (String::from_utf8_lossy(&head).into_owned(), socket)
    };
    let (first, _a) = open().await;
    let (second, _b) = open().await;
    for head in [&first, &second] {
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let (third, _c) = open().await;
    assert!(third.starts_with("HTTP/1.1 503"), "{third}");
    assert!(
        third.to_ascii_lowercase().contains("retry-after: 1"),
        "{third}"
    );
}

/// A node whose heartbeats come faster than `--min-heartbeat-interval`
/// (after a burst of 20) is answered `RESOURCE_EXHAUSTED` with the time to
/// wait, on `Send` (status metadata) and on `Stream` (the refusal); another
/// node is not touched, and after the wait the node is taken again with
/// its newest counters: nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_faster_than_the_pace_is_told_how_long_to_wait() {
    let Some(fleet) = Fleet::start("hostile_pace").await else {
        return;
    };
    let fast = fleet.add_node("fast").await;
    let calm = fleet.add_node("calm").await;
    let collector = fleet::Process::start_with(
        &fleet.url,
        &["--insecure-plaintext", "--min-heartbeat-interval", "1s"],
    );
    let mut client = fleet::client(collector.address).await;
    let mut applied = 0;
    let mut first_refusal = None;
    for sequence in 1..=25u64 {
        match fleet::send(
            &mut client,
            Some(&fast.token),
            fleet::heartbeat("e", sequence, sequence * 100, sequence),
        )
        .await
        {
            Ok(reply) => {
                assert_eq!(reply.outcome(), Outcome::Applied);
                applied += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                first_refusal.get_or_insert(status);
            }
        }
    }
    assert_eq!(applied, 20, "the burst");
    let status = first_refusal.expect("refused beyond the burst");
    let hint: u64 = status
        .metadata()
        .get(tally_proto::RETRY_PUSHBACK)
        .expect("a retry hint")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("milliseconds");
    assert!((1..=1000).contains(&hint), "{hint}");
    assert!(status.message().contains("send again in"), "{status:?}");
    assert_eq!(fleet.totals(&fast.id).await.0, 2000, "the 20th heartbeat");

    // Another node is taken meanwhile.
    let reply = fleet::send(
        &mut client,
        Some(&calm.token),
        fleet::heartbeat("e", 1, 7, 7),
    )
    .await
    .expect("another node is not touched");
    assert_eq!(reply.outcome(), Outcome::Applied);

    // On a stream the refusal carries the hint.
    let mut stream = fleet::Stream::open(&mut client, Some(&fast.token))
        .await
        .expect("opens");
    let reply = stream.send(fleet::heartbeat("e", 26, 2600, 26)).await;
    let refusal = reply.refusal.expect("refused on the stream");
    assert_eq!(refusal.code, Code::ResourceExhausted as u32);
    assert!((1..=1000).contains(&refusal.retry_after_ms), "{refusal:?}");

    // After the wait, the newest counters count in full.
    tokio::time::sleep(Duration::from_millis(
        u64::from(refusal.retry_after_ms) + 50,
    ))
    .await;
    let reply = stream.send(fleet::heartbeat("e", 27, 2700, 27)).await;
    assert!(reply.refusal.is_none(), "{reply:?}");
    assert_eq!(reply.outcome(), Outcome::Applied);
    assert_eq!(fleet.totals(&fast.id).await.0, 2700, "nothing lost");
}

/// A node that makes up interface names gets history rows for at most
/// `--max-interface-names` of them in one minute; a name that has its row
/// keeps adding to it, and the node's own totals and history count every
/// byte all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_interface_names_cannot_flood_the_history() {
    let Some(fleet) = Fleet::start("hostile_names").await else {
        return;
    };
    let node = fleet.add_node("namer").await;
    let server = fleet
        .serve_here_with(|options| options.ingest.max_interface_names = 10)
        .await;
    let mut client = fleet::client(server.address).await;
    // Interface rows are rewritten every 10 s, and with every new counter
    // set: a second heartbeat of a new set brings its names at once.
    for (sequence, heartbeat) in [
        (1u64, fleet::heartbeat("e", 1, 100, 10)),
        (2, fleet::heartbeat_of("f", 1, 300, 30)),
    ] {
        let mut heartbeat = heartbeat;
        let template = heartbeat.interfaces[0].clone();
        for j in 0..12 {
            let mut made_up = template.clone();
            made_up.name = format!("m{sequence}x{j}");
            made_up.rx_bytes = 1_000;
            made_up.tx_bytes = 1_000;
            heartbeat.interfaces.push(made_up);
        }
        let reply = fleet::send(&mut client, Some(&node.token), heartbeat)
            .await
            .expect("taken");
        assert_eq!(reply.outcome(), Outcome::Applied);
    }
    let per_minute: Vec<(i64, i64)> = sqlx::query_as(
        r#"SELECT count(*), sum(("name" = 'eth0')::int)::int8 FROM "interface_history"
           WHERE "nodeId" = $1 GROUP BY "bucket" ORDER BY "bucket""#,
    )
    .bind(&node.id)
    .fetch_all(&fleet.pool)
    .await
    .expect("interface history");
    // 26 names came (eth0, eth1 and 24 made up), in one minute or two;
    // eth0 and eth1 come first (by name).
    let most = per_minute.iter().map(|m| m.0).max().unwrap_or(0);
    assert_eq!(most, 10, "names with history in one minute: {per_minute:?}");
    assert!(
        per_minute.iter().all(|m| m.1 == 1),
        "eth0 keeps its row: {per_minute:?}"
    );
    let eth0: i64 = sqlx::query_scalar(
        r#"SELECT sum("rxBytes")::int8 FROM "interface_history"
           WHERE "nodeId" = $1 AND "name" = 'eth0'"#,
    )
    .bind(&node.id)
    .fetch_one(&fleet.pool)
    .await
    .expect("eth0");
    let (down, _, _, _) = fleet.totals(&node.id).await;
    let history: i64 = sqlx::query_scalar(
        r#"SELECT sum("download")::int8 FROM "node_history" WHERE "nodeId" = $1"#,
    )
    .bind(&node.id)
    .fetch_one(&fleet.pool)
    .await
    .expect("node history");
    assert_eq!(history, down, "the node's history counts every byte");
    assert!(eth0 > 0 && down > eth0, "eth0 {eth0}, node {down}");
}
