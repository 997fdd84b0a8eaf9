//! `GET /metrics` against a real PostgreSQL and real HTTP: the per-node
//! values read from the database (traffic by address family too), the
//! heartbeat outcome counters, the read token, a database that does not
//! answer, and `promtool check metrics` (the Prometheus project's own
//! linter) accepting the output.

use crate::common;

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{
    fleet::{self, Fleet},
    http::Client,
};
use tally_collector::http::{TokenSet, Tokens};
use tally_proto::v1::{FamilyCounters, HeartbeatRequest, Outcome};

/// One sample: its labels and value.
#[derive(Debug)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Every sample of metric `name` in the text format `text`.
fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some(Sample {
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The value of `name` with exactly `labels`; `None` when there is none.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples(text, name)
        .into_iter()
        .find(|s| s.labels == wanted)
        .map(|s| s.value)
}

/// Runs `promtool check metrics` on `text`: it must report no problem. Says
/// SKIP (or fails under `TALLY_REQUIRE_PRIVILEGED=1`) without promtool.
fn promtool_accepts(test: &str, text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tally_testkit::skip::skip(test, "promtool not installed");
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics: {} {said}\n--- the metrics:\n{text}",
        output.status
    );
}

/// `heartbeat` with eth0's IPv4 and IPv6 `(rx, tx)` bytes set.
fn with_families(
    mut heartbeat: HeartbeatRequest,
    ipv4: (u64, u64),
    ipv6: (u64, u64),
) -> HeartbeatRequest {
    let family = |(rx, tx): (u64, u64)| FamilyCounters {
        rx_bytes: rx,
        rx_packets: 1,
        tx_bytes: tx,
        tx_packets: 1,
    };
    heartbeat.interfaces[0].ipv4 = Some(family(ipv4));
    heartbeat.interfaces[0].ipv6 = Some(family(ipv6));
    heartbeat
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_node_values_and_outcome_counters() {
    let Some(fleet) = Fleet::start("metrics_values").await else {
        return;
    };
    let busy = fleet.add_node("busy").await;
    fleet.add_node("quiet").await;
    let server = fleet.serve_here().await;
    let mut client = fleet::client(server.address).await;
    let token = Some(busy.token.as_str());
    let outcome = |reply: Result<_, tonic::Status>| -> Outcome {
        let reply: tally_proto::v1::HeartbeatReply = reply.expect("answered");
        reply.outcome()
    };
    let hb = fleet::heartbeat;
    // eth0 carries half of each: some of it IPv4, some IPv6.
    let first = with_families(hb("e", 1, 1000, 10), (400, 4), (100, 1));
    assert_eq!(
        outcome(fleet::send(&mut client, token, first).await),
        Outcome::Applied
    );
    let third = with_families(hb("e", 3, 3000, 30), (1200, 12), (300, 3));
    assert_eq!(
        outcome(fleet::send(&mut client, token, third).await),
        Outcome::Applied
    );
    assert_eq!(
        outcome(fleet::send(&mut client, token, hb("e", 3, 3000, 30)).await),
        Outcome::Duplicate
    );
    assert_eq!(
        outcome(fleet::send(&mut client, token, hb("e", 2, 2000, 20)).await),
        Outcome::Stale
    );
    // Refused: a wrong secret (by the batch), no token, a load that is no
    // number.
    let wrong = format!("{}.{}", busy.id, "0".repeat(64));
    fleet::send(&mut client, Some(&wrong), hb("e", 4, 4000, 40))
        .await
        .expect_err("wrong token");
    fleet::send(&mut client, None, hb("e", 4, 4000, 40))
        .await
        .expect_err("no token");
    let mut broken = hb("e", 4, 4000, 40);
    broken.load = Some(tally_proto::v1::LoadAverage {
        one: f64::NAN,
        five: 0.0,
        fifteen: 0.0,
    });
    fleet::send(&mut client, token, broken)
        .await
        .expect_err("no load");

    let response = Client::new(server.http_address).get("/metrics").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    let text = &response.body;
    let node = |name: &'static str, more: &[(&'static str, &'static str)]| {
        let mut labels = vec![("node", name)];
        labels.extend_from_slice(more);
        labels
    };
    let total = "tally_node_traffic_bytes_total";
    let period = "tally_node_period_traffic_bytes";
    for (name, metric, direction, expected) in [
        ("busy", total, "download", 3000.0),
        ("busy", total, "upload", 30.0),
        ("busy", period, "download", 3000.0),
        ("busy", period, "upload", 30.0),
        ("quiet", total, "download", 0.0),
        ("quiet", period, "upload", 0.0),
    ] {
        assert_eq!(
            value(text, metric, &node(name, &[("direction", direction)])),
            Some(expected),
            "{metric} {name} {direction}\n{text}"
        );
    }
    let family = "tally_node_family_bytes_total";
    for (name, direction, address_family, expected) in [
        ("busy", "download", "ipv4", 1200.0),
        ("busy", "upload", "ipv4", 12.0),
        ("busy", "download", "ipv6", 300.0),
        ("busy", "upload", "ipv6", 3.0),
        ("quiet", "download", "ipv4", 0.0),
        ("quiet", "upload", "ipv6", 0.0),
    ] {
        assert_eq!(
            value(
                text,
                family,
                &node(
                    name,
                    &[("direction", direction), ("family", address_family)]
                )
            ),
            Some(expected),
            "{family} {name} {direction} {address_family}\n{text}"
        );
    }
    assert_eq!(samples(text, family).len(), 8, "4 per node\n{text}");
    for (window, expected) in [("1m", 0.5), ("5m", 0.25), ("15m", 0.125)] {
        assert_eq!(
            value(
                text,
                "tally_node_load",
                &node("busy", &[("window", window)])
            ),
            Some(expected),
            "{text}"
        );
    }
    assert!(
        samples(text, "tally_node_load")
            .iter()
            .all(|s| s.labels["node"] == "busy"),
        "no load for a node never heard from\n{text}"
    );
    assert_eq!(
        value(text, "tally_node_online", &node("busy", &[])),
        Some(1.0)
    );
    assert_eq!(
        value(text, "tally_node_online", &node("quiet", &[])),
        Some(0.0)
    );
    let seen = value(
        text,
        "tally_node_last_seen_timestamp_seconds",
        &node("busy", &[]),
    )
    .expect("busy was seen");
    assert!((unix_now() - seen).abs() < 60.0, "{seen}");
    assert_eq!(
        value(
            text,
            "tally_node_last_seen_timestamp_seconds",
            &node("quiet", &[])
        ),
        None
    );

    // The one stale heartbeat, not (yet) a run; the clock of a node heard
    // from.
    let stale = "tally_node_stale_heartbeats_total";
    assert_eq!(value(text, stale, &node("busy", &[])), Some(1.0), "{text}");
    assert_eq!(value(text, stale, &node("quiet", &[])), Some(0.0));
    assert_eq!(
        value(text, "tally_node_stale", &node("busy", &[])),
        Some(0.0)
    );
    let offset = value(text, "tally_node_clock_offset_seconds", &node("busy", &[]))
        .expect("busy's clock offset");
    assert!(offset.abs() < 60.0, "{offset}");
    assert_eq!(
        value(text, "tally_node_clock_offset_seconds", &node("quiet", &[])),
        None
    );

    let heartbeats = |o: &str| value(text, "tally_heartbeats_total", &[("outcome", o)]);
    assert_eq!(heartbeats("applied"), Some(2.0), "{text}");
    assert_eq!(heartbeats("duplicate"), Some(1.0));
    assert_eq!(heartbeats("stale"), Some(1.0));
    assert_eq!(heartbeats("rejected"), Some(3.0));
    // Four heartbeats reached the database: the wrong secret was refused
    // before its message was read.
    assert_eq!(value(text, "tally_ingest_batch_size_sum", &[]), Some(4.0));
    let batches = value(text, "tally_ingest_batch_duration_seconds_count", &[]);
    assert!(
        batches.is_some_and(|n| (1.0..=4.0).contains(&n)),
        "{batches:?}"
    );
    assert_eq!(
        value(text, "tally_ingest_batch_failures_total", &[]),
        Some(0.0)
    );
    assert_eq!(value(text, "tally_database_up", &[]), Some(1.0));
    assert!(value(text, "tally_scrape_query_duration_seconds", &[]).is_some());

    promtool_accepts("per_node_values_and_outcome_counters", text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_token_and_a_database_that_does_not_answer() {
    let Some(fleet) = Fleet::start("metrics_token_db_down").await else {
        return;
    };
    fleet.add_node("n").await;
    let server = fleet
        .serve_here_with(|options| {
            options.tokens = Tokens::new(TokenSet {
                admin: vec!["admin-secret".into()],
                read: vec!["reader-secret".into()],
            });
        })
        .await;
    let open = Client::new(server.http_address);
    let response = open.get("/metrics").await;
    assert_eq!(response.status, 401, "{}", response.body);
    assert_eq!(response.error_code(), Some("unauthenticated"));
    let wrong = open.with_token(Some("nope")).get("/metrics").await;
    assert_eq!(wrong.status, 401);
    let admin = open.with_token(Some("admin-secret")).get("/metrics").await;
    assert_eq!(admin.status, 200, "the admin token reads too");
    let reader = open.with_token(Some("reader-secret"));
    let response = reader.get("/metrics").await;
    assert_eq!(response.status, 200);
    assert_eq!(value(&response.body, "tally_database_up", &[]), Some(1.0));
    assert!(value(&response.body, "tally_node_online", &[("node", "n")]).is_some());

    // Without the tables (every migration reverted) the query fails: the
    // collector's own metrics are still served.
    tally_collector::db::revert(&fleet.pool, 0)
        .await
        .expect("revert");
    let response = tokio::time::timeout(Duration::from_secs(15), reader.get("/metrics"))
        .await
        .expect("an answer");
    assert_eq!(response.status, 200, "{}", response.body);
    let text = &response.body;
    assert_eq!(value(text, "tally_database_up", &[]), Some(0.0), "{text}");
    assert!(!text.contains("tally_node_"), "{text}");
    assert_eq!(
        value(text, "tally_heartbeats_total", &[("outcome", "applied")]),
        Some(0.0)
    );
    promtool_accepts("the_read_token_and_a_database_that_does_not_answer", text);
}
