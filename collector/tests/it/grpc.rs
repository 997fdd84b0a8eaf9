//! The node channel against a real PostgreSQL: authentication, the replies,
//! refusals that change nothing.

use crate::common;

use std::time::Duration;

use common::fleet::{self, Fleet, Stream};
use tally_proto::v1::Outcome;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_and_another_nodes_tokens_are_refused_and_change_nothing() {
    let Some(fleet) = Fleet::start("grpc_auth").await else {
        return;
    };
    let a = fleet.add_node("a").await;
    let b = fleet.add_node("b").await;
    let server = fleet.serve_here().await;
    let mut client = fleet::client(server.address).await;

    // A first applied heartbeat, so there is state to keep unchanged.
    let reply = fleet::send(
        &mut client,
        Some(&a.token),
        fleet::heartbeat("e", 1, 100, 10),
    )
    .await
    .expect("a's own token");
    assert_eq!(reply.outcome(), Outcome::Applied);
    let before_a = fleet.snapshot(&a.id).await;
    let before_b = fleet.snapshot(&b.id).await;

    let (_, b_secret) = b.token.split_once('.').expect("token shape");
    let (_, a_secret) = a.token.split_once('.').expect("token shape");
    let wrong_secret = "0".repeat(64);
    let refused = [
        ("no token", None),
        ("a malformed token", Some("not-a-token".to_owned())),
        ("a wrong secret", Some(format!("{}.{wrong_secret}", a.id))),
        ("b's secret for a", Some(format!("{}.{b_secret}", a.id))),
        ("a's secret for b", Some(format!("{}.{a_secret}", b.id))),
        ("an unknown node", Some(format!("cunknown.{a_secret}"))),
    ];
    for (what, token) in refused {
        let status = fleet::send(
            &mut client,
            token.as_deref(),
            fleet::heartbeat("e", 2, 1_000_000, 1_000_000),
        )
        .await
        .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }
    assert_eq!(fleet.snapshot(&a.id).await, before_a, "a unchanged");
    assert_eq!(fleet.snapshot(&b.id).await, before_b, "b unchanged");
    assert_eq!(fleet.totals(&a.id).await, (100, 10, 100, 10));

    // The right token still works afterwards.
    let reply = fleet::send(
        &mut client,
        Some(&a.token),
        fleet::heartbeat("e", 2, 150, 20),
    )
    .await
    .expect("a again");
    assert_eq!(reply.outcome(), Outcome::Applied);
    assert_eq!(fleet.totals(&a.id).await, (150, 20, 150, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_say_applied_duplicate_stale_and_refuse_backwards_counters() {
    let Some(fleet) = Fleet::start("grpc_replies").await else {
        return;
    };
    let (node, _server, mut client) = fleet.served_node("n", None).await;
    let token = Some(node.token.as_str());

    let reply = fleet::send(&mut client, token, fleet::heartbeat("e", 5, 1000, 500))
        .await
        .expect("first");
    assert_eq!(
        (reply.outcome(), reply.applied_sequence),
        (Outcome::Applied, 5)
    );
    let reply = fleet::send(&mut client, token, fleet::heartbeat("e", 5, 1000, 500))
        .await
        .expect("retry");
    assert_eq!(reply.outcome(), Outcome::Duplicate);
    let reply = fleet::send(&mut client, token, fleet::heartbeat("e", 4, 900, 400))
        .await
        .expect("older");
    assert_eq!(
        (reply.outcome(), reply.applied_sequence),
        (Outcome::Stale, 5)
    );
    assert_eq!(fleet.totals(&node.id).await, (1000, 500, 1000, 500));

    // Backwards within the epoch: refused, logged, nothing stored.
    let before = fleet.snapshot(&node.id).await;
    let status = fleet::send(&mut client, token, fleet::heartbeat("e", 6, 999, 600))
        .await
        .expect_err("backwards");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("rx bytes went backwards"),
        "{status:?}"
    );
    assert_eq!(fleet.snapshot(&node.id).await, before);

    // A bad input: a clear InvalidArgument, nothing stored.
    let mut bad = fleet::heartbeat("e", 7, 2000, 700);
    bad.hostname = "x".repeat(300);
    let status = fleet::send(&mut client, token, bad)
        .await
        .expect_err("too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("hostname"), "{status:?}");
    assert_eq!(fleet.snapshot(&node.id).await, before);

    // A new, later epoch counts from zero in full.
    let next = fleet::heartbeat_of("f", 1, 10, 20);
    let reply = fleet::send(&mut client, token, next)
        .await
        .expect("new epoch");
    assert_eq!(reply.outcome(), Outcome::Applied);
    assert_eq!(fleet.totals(&node.id).await, (1010, 520, 1010, 520));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interface_name_reported_twice_counts_both_and_is_stored_once() {
    let Some(fleet) = Fleet::start("grpc_same_name").await else {
        return;
    };
    let (node, _server, mut client) = fleet.served_node("n", None).await;
    // eth1 went away (gone) and a new interface took its name.
    let mut heartbeat = fleet::heartbeat("e", 1, 100, 10);
    let mut gone = heartbeat.interfaces[1].clone();
    gone.state = tally_proto::v1::InterfaceState::Gone as i32;
    gone.ifindex = 9;
    gone.rx_bytes = 1000;
    heartbeat.interfaces.push(gone);
    let reply = fleet::send(&mut client, Some(&node.token), heartbeat)
        .await
        .expect("accepted");
    assert_eq!(reply.outcome(), Outcome::Applied);
    assert_eq!(fleet.totals(&node.id).await.0, 1100);
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        r#"SELECT "name", "rxBytes", "state" FROM "interface_stats" WHERE "nodeId" = $1 ORDER BY "name""#,
    )
    .bind(&node.id)
    .fetch_all(&fleet.pool)
    .await
    .expect("interface rows");
    assert_eq!(
        rows,
        vec![
            ("eth0".to_owned(), 50, "attached".to_owned()),
            ("eth1".to_owned(), 1050, "attached".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interface_rows_are_rewritten_on_a_new_epoch_and_at_most_every_ten_seconds() {
    let Some(fleet) = Fleet::start("grpc_interface_refresh").await else {
        return;
    };
    let (node, _server, mut client) = fleet.served_node("n", None).await;
    let token = Some(node.token.as_str());
    let rx_rows = || async {
        sqlx::query_scalar::<_, i64>(
            r#"SELECT sum("rxBytes")::int8 FROM "interface_stats" WHERE "nodeId" = $1"#,
        )
        .bind(&node.id)
        .fetch_one(&fleet.pool)
        .await
        .expect("rows")
    };
    fleet::send(&mut client, token, fleet::heartbeat("e", 1, 100, 10))
        .await
        .expect("first");
    assert_eq!(rx_rows().await, 100);
    // Within ten seconds: the totals move, the interface rows wait.
    fleet::send(&mut client, token, fleet::heartbeat("e", 2, 300, 30))
        .await
        .expect("second");
    assert_eq!(fleet.totals(&node.id).await.0, 300);
    assert_eq!(rx_rows().await, 100);
    // A new epoch rewrites them at once.
    let next = fleet::heartbeat_of("f", 1, 7, 1);
    fleet::send(&mut client, token, next)
        .await
        .expect("new epoch");
    assert_eq!(rx_rows().await, 7);
    // So does the passing of ten seconds (made to pass in the database).
    sqlx::query(
        r#"UPDATE "nodes" SET "interfacesUpdatedAt" = "interfacesUpdatedAt" - interval '11 seconds' WHERE "id" = $1"#,
    )
    .bind(&node.id)
    .execute(&fleet.pool)
    .await
    .expect("age");
    fleet::send(&mut client, token, fleet::heartbeat_of("f", 2, 9, 2))
        .await
        .expect("later");
    assert_eq!(rx_rows().await, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reply_carries_the_interval_the_collector_asks_for() {
    let Some(fleet) = Fleet::start("grpc_interval").await else {
        return;
    };
    let (node, _asking, mut client) = fleet.served_node("n", Some(Duration::from_secs(2))).await;
    let reply = fleet::send(
        &mut client,
        Some(&node.token),
        fleet::heartbeat("e", 1, 1, 1),
    )
    .await
    .expect("applied");
    assert_eq!(reply.heartbeat_interval_ms, 2000);
    let default = fleet.serve_here().await;
    let mut client = fleet::client(default.address).await;
    let reply = fleet::send(
        &mut client,
        Some(&node.token),
        fleet::heartbeat("e", 2, 2, 2),
    )
    .await
    .expect("applied");
    assert_eq!(reply.heartbeat_interval_ms, 0, "0: keep your own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_answers_each_heartbeat_in_order_and_goes_on_after_a_refusal() {
    let Some(fleet) = Fleet::start("grpc_stream").await else {
        return;
    };
    let (node, _server, mut client) = fleet.served_node("n", Some(Duration::from_secs(2))).await;
    let mut stream = Stream::open(&mut client, Some(&node.token))
        .await
        .expect("open");

    // Three at once: one reply each, in the order sent.
    stream.push(fleet::heartbeat("e", 5, 1000, 500));
    stream.push(fleet::heartbeat("e", 5, 1000, 500));
    stream.push(fleet::heartbeat("e", 4, 900, 400));
    let mut replies = Vec::new();
    for _ in 0..3 {
        let reply = stream.next().await.expect("reply").expect("open");
        assert_eq!(reply.refusal, None);
        assert_eq!(reply.heartbeat_interval_ms, 2000);
        replies.push((reply.outcome(), reply.applied_sequence));
    }
    assert_eq!(
        replies,
        [
            (Outcome::Applied, 5),
            (Outcome::Duplicate, 5),
            (Outcome::Stale, 5)
        ]
    );
    assert_eq!(fleet.totals(&node.id).await, (1000, 500, 1000, 500));

    // Backwards: a refusal with Send's code and message; nothing stored.
    let before = fleet.snapshot(&node.id).await;
    let reply = stream.send(fleet::heartbeat("e", 6, 999, 600)).await;
    let refusal = reply.refusal.as_ref().expect("refused");
    assert_eq!(refusal.code, Code::FailedPrecondition as u32);
    assert!(
        refusal.message.contains("rx bytes went backwards"),
        "{refusal:?}"
    );
    assert_eq!(reply.outcome(), Outcome::Unspecified);
    // A bad input: INVALID_ARGUMENT, nothing stored.
    let mut bad = fleet::heartbeat("e", 7, 2000, 700);
    bad.hostname = "x".repeat(300);
    let reply = stream.send(bad).await;
    let refusal = reply.refusal.as_ref().expect("refused");
    assert_eq!(refusal.code, Code::InvalidArgument as u32);
    assert!(refusal.message.contains("hostname"), "{refusal:?}");
    assert_eq!(fleet.snapshot(&node.id).await, before);

    // The same stream goes on.
    let reply = stream.send(fleet::heartbeat("e", 8, 2000, 700)).await;
    assert_eq!(
        (reply.outcome(), reply.applied_sequence, reply.refusal),
        (Outcome::Applied, 8, None)
    );
    assert_eq!(fleet.totals(&node.id).await, (2000, 700, 2000, 700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_a_missing_or_wrong_token_ends_unauthenticated_and_changes_nothing() {
    let Some(fleet) = Fleet::start("grpc_stream_auth").await else {
        return;
    };
    let (node, _server, mut client) = fleet.served_node("n", None).await;
    let mut stream = Stream::open(&mut client, Some(&node.token))
        .await
        .expect("open");
    let reply = stream.send(fleet::heartbeat("e", 1, 100, 10)).await;
    assert_eq!(reply.outcome(), Outcome::Applied);
    let before = fleet.snapshot(&node.id).await;

    let wrong = format!("{}.{}", node.id, "0".repeat(64));
    for (what, token) in [
        ("no token", None),
        ("a malformed token", Some("not-a-token")),
        ("a wrong secret", Some(wrong.as_str())),
    ] {
        // Refused when the stream opens, or at its first heartbeat.
        let status = match Stream::open(&mut client, token).await {
            Err(status) => status,
            Ok(mut refused) => {
                refused.push(fleet::heartbeat("e", 2, 1_000_000, 1_000_000));
                let status = refused.next().await.expect_err(what);
                assert!(
                    matches!(refused.next().await, Ok(None) | Err(_)),
                    "{what}: the stream ended"
                );
                status
            }
        };
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }
    assert_eq!(fleet.snapshot(&node.id).await, before);

    // The node's own stream was not disturbed.
    let reply = stream.send(fleet::heartbeat("e", 2, 150, 20)).await;
    assert_eq!(reply.outcome(), Outcome::Applied);
    assert_eq!(fleet.totals(&node.id).await, (150, 20, 150, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_end_when_the_collector_shuts_down() {
    let Some(fleet) = Fleet::start("grpc_stream_shutdown").await else {
        return;
    };
    let (node, server, mut client) = fleet.served_node("n", None).await;
    let mut stream = Stream::open(&mut client, Some(&node.token))
        .await
        .expect("open");
    let reply = stream.send(fleet::heartbeat("e", 1, 100, 10)).await;
    assert_eq!(reply.outcome(), Outcome::Applied);
    drop(server);
    // Ended between two heartbeats (the graceful shutdown waits for it).
    assert!(
        matches!(stream.next().await, Ok(None)),
        "the stream ends cleanly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_deltas_and_the_load_and_is_pruned_after_the_retention() {
    let Some(fleet) = Fleet::start("grpc_history").await else {
        return;
    };
    let (node, _server, mut client) = fleet.served_node("n", None).await;
    for (k, rx, tx) in [(1, 100, 10), (2, 250, 30), (2, 250, 30), (3, 400, 35)] {
        fleet::send(
            &mut client,
            Some(&node.token),
            fleet::heartbeat("e", k, rx, tx),
        )
        .await
        .expect("accepted");
    }
    let (download, upload, heartbeats, load): (i64, i64, i64, f64) = sqlx::query_as(
        r#"SELECT sum("download")::int8, sum("upload")::int8, sum("heartbeats")::int8,
                  max("load1")
           FROM "node_history" WHERE "nodeId" = $1"#,
    )
    .bind(&node.id)
    .fetch_one(&fleet.pool)
    .await
    .expect("history");
    // Three applied (the duplicate adds nothing), summing to the totals.
    assert_eq!((download, upload, heartbeats), (400, 35, 3));
    assert_eq!(load, 0.5);
    let (load1, load5, load15): (f64, f64, f64) =
        sqlx::query_as(r#"SELECT "load1", "load5", "load15" FROM "nodes" WHERE "id" = $1"#)
            .bind(&node.id)
            .fetch_one(&fleet.pool)
            .await
            .expect("node");
    assert_eq!((load1, load5, load15), (0.5, 0.25, 0.125));

    // A minute older than the retention goes; the recent ones stay.
    sqlx::query(
        r#"INSERT INTO "node_history" ("nodeId", "bucket", "upload", "download", "load1",
             "load5", "load15", "heartbeats")
           VALUES ($1, '2020-01-01 00:00:00', 1, 1, 0, 0, 0, 1)"#,
    )
    .bind(&node.id)
    .execute(&fleet.pool)
    .await
    .expect("old row");
    let pruned = tally_collector::serve::prune_history(&fleet.pool, Duration::from_secs(86_400))
        .await
        .expect("prune");
    assert_eq!(pruned, 1);
    let left: i64 = sqlx::query_scalar(r#"SELECT sum("heartbeats")::int8 FROM "node_history""#)
        .fetch_one(&fleet.pool)
        .await
        .expect("count");
    assert_eq!(left, 3);
}
