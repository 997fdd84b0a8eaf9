//! The read side of the JSON API against a real PostgreSQL and real HTTP:
//! the node list and a node's detail (shape, counters as decimal strings,
//! exact above 2^53; the IPv4/IPv6 split, the count rule, the quota
//! threshold crossed this period, each interface's kind, default route and
//! split), and a node's history (dense points per step, sums equal to the
//! totals, step aggregation, interface series, bounds).

use crate::common;

use std::{collections::BTreeSet, time::Duration};

use common::{
    fleet::{self, Fleet},
    http::{Client, Response},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tally_proto::v1::{FamilyCounters, InterfaceCounters, InterfaceState, LinkKind};

/// `2026-11-25T10:00:00.000Z`: RFC 3339, UTC, milliseconds.
fn is_timestamp(value: &Value) -> bool {
    value.as_str().is_some_and(|s| {
        s.len() == 24
            && s.ends_with('Z')
            && s.as_bytes()[19] == b'.'
            && chrono::DateTime::parse_from_rfc3339(s).is_ok()
    })
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn counter(value: &Value) -> i128 {
    value
        .as_str()
        .unwrap_or_else(|| panic!("a counter is a string: {value}"))
        .parse()
        .expect("decimal")
}

/// A 400 `invalid_argument` whose message starts with `parameter`.
fn assert_invalid(response: &Response, parameter: &str) {
    assert_eq!(response.status, 400, "{}", response.body);
    assert_eq!(response.error_code(), Some("invalid_argument"));
    let message = response.json["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with(parameter),
        "message should name {parameter}: {message}"
    );
}

/// Every row of the tables the API reads, as text.
async fn snapshot(pool: &PgPool) -> String {
    let mut all = String::new();
    for table in [
        "nodes",
        "traffic_stats",
        "node_history",
        "interface_stats",
        "interface_history",
    ] {
        let rows: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT string_agg(row_to_json(t)::text, ',' ORDER BY row_to_json(t)::text) FROM \"{table}\" t"
        )))
        .fetch_one(pool)
        .await
        .expect("snapshot");
        all.push_str(&format!("{table}: {}\n", rows.unwrap_or_default()));
    }
    all
}

const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);

const NODE_KEYS: [&str; 16] = [
    "agentVersion",
    "clock",
    "countRule",
    "counterSet",
    "families",
    "hostname",
    "id",
    "kernel",
    "lastSeen",
    "load",
    "name",
    "online",
    "quotaCrossed",
    "source",
    "stale",
    "traffic",
];
const INTERFACE_KEYS: [&str; 12] = [
    "defaultRoute",
    "ifindex",
    "ipv4",
    "ipv6",
    "kind",
    "name",
    "rxBytes",
    "rxPackets",
    "state",
    "txBytes",
    "txPackets",
    "updatedAt",
];
const TRAFFIC_KEYS: [&str; 6] = [
    "periodDownload",
    "periodStart",
    "periodUpload",
    "totalDownload",
    "totalUpload",
    "updatedAt",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_a_node_with_its_interfaces() {
    let Some(fleet) = Fleet::start("api_nodes").await else {
        return;
    };
    let busy = fleet.add_node("busy").await;
    let big = fleet.add_node("big").await;
    let server = fleet.serve_here().await;
    let api = Client::new(server.http_address);

    let mut client = fleet::client(server.address).await;
    fleet::send(
        &mut client,
        Some(&busy.token),
        fleet::heartbeat("e", 1, 1000, 10),
    )
    .await
    .expect("applied");
    // Above 2^53, where a JSON number would lose the last digits.
    let above: i64 = (1 << 53) + 1;
    sqlx::query(
        r#"UPDATE "traffic_stats" SET "totalUpload" = $1, "totalDownload" = $2,
             "periodUpload" = $1 WHERE "nodeId" = $3"#,
    )
    .bind(above)
    .bind(i64::MAX)
    .bind(&big.id)
    .execute(&fleet.pool)
    .await
    .expect("big counters");

    let list = api.get("/api/v1/nodes").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(keys(&list.json), BTreeSet::from(["nodes"]));
    let nodes = list.json["nodes"].as_array().expect("nodes");
    let names: Vec<_> = nodes.iter().map(|n| n["name"].as_str()).collect();
    assert_eq!(names, [Some("big"), Some("busy")], "by name");
    for node in nodes {
        assert_eq!(keys(node), BTreeSet::from(NODE_KEYS), "{node}");
        assert_eq!(keys(&node["traffic"]), BTreeSet::from(TRAFFIC_KEYS));
        for key in [
            "totalUpload",
            "totalDownload",
            "periodUpload",
            "periodDownload",
        ] {
            assert!(
                node["traffic"][key].is_string(),
                "{key} is a string: {node}"
            );
        }
        assert!(is_timestamp(&node["traffic"]["periodStart"]), "{node}");
        assert!(is_timestamp(&node["traffic"]["updatedAt"]), "{node}");
        // Heartbeats without a family split (and none at all) count none.
        let zero = json!({"upload": "0", "download": "0"});
        assert_eq!(node["families"], json!({"ipv4": zero, "ipv6": zero}));
        assert_eq!(node["countRule"], "all", "the fleet's default");
        assert!(node["quotaCrossed"].is_null(), "{node}");
    }
    let (b, q) = (&nodes[0], &nodes[1]);
    assert_eq!(b["traffic"]["totalUpload"], "9007199254740993");
    assert_eq!(b["traffic"]["totalDownload"], "9223372036854775807");
    assert_eq!(b["traffic"]["periodUpload"], "9007199254740993");
    assert_eq!(b["online"], false);
    assert!(b["lastSeen"].is_null() && b["load"].is_null() && b["hostname"].is_null());
    assert_eq!(q["online"], true);
    assert!(is_timestamp(&q["lastSeen"]), "{q}");
    assert_eq!(q["load"]["five"], 0.25);
    assert_eq!(
        (
            q["kernel"].as_str(),
            q["agentVersion"].as_str(),
            q["source"].as_str()
        ),
        (Some("6.1.0"), Some("test"), Some("ebpf"))
    );
    assert_eq!(q["traffic"]["totalDownload"], "1000");

    // One node, with its interfaces.
    let detail = api.get(&format!("/api/v1/nodes/{}", busy.id)).await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    let mut expected = BTreeSet::from(NODE_KEYS);
    expected.insert("interfaces");
    assert_eq!(keys(&detail.json), expected);
    assert_eq!(detail.json["id"], busy.id.as_str());
    assert_eq!(detail.json["traffic"]["totalUpload"], "10");
    let interfaces = detail.json["interfaces"].as_array().expect("interfaces");
    assert_eq!(interfaces.len(), 2, "{}", detail.body);
    for (interface, name) in interfaces.iter().zip(["eth0", "eth1"]) {
        assert_eq!(keys(interface), BTreeSet::from(INTERFACE_KEYS));
        assert_eq!(interface["name"], name);
        // An agent that does not say: physical, no default route, no split.
        assert_eq!(interface["kind"], "physical");
        assert_eq!(interface["defaultRoute"], false);
        assert!(interface["ipv4"].is_null() && interface["ipv6"].is_null());
        assert_eq!(interface["ifindex"], 2);
        assert_eq!(interface["state"], "attached");
        assert_eq!(
            (
                &interface["rxBytes"],
                &interface["txBytes"],
                &interface["rxPackets"]
            ),
            (&Value::from("500"), &Value::from("5"), &Value::from("1"))
        );
        assert!(is_timestamp(&interface["updatedAt"]));
    }
    let detail = api.get(&format!("/api/v1/nodes/{}", big.id)).await;
    assert_eq!(detail.json["traffic"]["totalUpload"], "9007199254740993");
    assert_eq!(
        detail.json["traffic"]["totalDownload"],
        "9223372036854775807"
    );
    assert_eq!(detail.json["interfaces"], Value::Array(vec![]));

    // Unknown ids and paths: JSON 404s.
    let before = snapshot(&fleet.pool).await;
    let missing = api.get("/api/v1/nodes/no-such-node").await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (404, Some("not_found"))
    );
    let by_name = api.get("/api/v1/nodes/busy").await;
    assert_eq!(by_name.status, 404, "ids only: {}", by_name.body);
    let nested = api.get(&format!("/api/v1/nodes/{}/nope", busy.id)).await;
    assert_eq!(
        (nested.status, nested.error_code()),
        (404, Some("not_found"))
    );
    assert_eq!(snapshot(&fleet.pool).await, before);
}

/// An interface entry of kind `kind` with cumulative `(rx, tx)` bytes and,
/// when given, IPv4 and IPv6 `(rx, tx)` bytes.
fn entry(
    name: &str,
    ifindex: u32,
    kind: LinkKind,
    default_route: bool,
    (rx, tx): (u64, u64),
    families: Option<((u64, u64), (u64, u64))>,
) -> InterfaceCounters {
    let family = |(rx, tx): (u64, u64)| FamilyCounters {
        rx_bytes: rx,
        rx_packets: 1,
        tx_bytes: tx,
        tx_packets: 1,
    };
    InterfaceCounters {
        name: name.into(),
        ifindex,
        rx_bytes: rx,
        rx_packets: 3,
        tx_bytes: tx,
        tx_packets: 3,
        state: InterfaceState::Attached as i32,
        kind: kind as i32,
        default_route,
        ipv4: families.map(|(v4, _)| family(v4)),
        ipv6: families.map(|(_, v6)| family(v6)),
        ..InterfaceCounters::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn families_kinds_the_count_rule_and_the_quota_crossed() {
    let Some(fleet) = Fleet::start("api_families").await else {
        return;
    };
    let all = fleet.add_node("all").await;
    let uplink = fleet.add_node("uplink").await;
    sqlx::query(r#"INSERT INTO "node_settings" ("nodeId", "countRule") VALUES ($1, 'uplink')"#)
        .bind(&uplink.id)
        .execute(&fleet.pool)
        .await
        .expect("uplink rule");
    let server = fleet.serve_here().await;
    let api = Client::new(server.http_address);
    let mut client = fleet::client(server.address).await;
    // A host with a NIC, a container bridge and a WireGuard tunnel that
    // carries the default route (whose source does not split families).
    let interfaces = vec![
        entry(
            "eth0",
            2,
            LinkKind::Physical,
            false,
            (1000, 100),
            Some(((600, 60), (300, 30))),
        ),
        entry(
            "docker0",
            3,
            LinkKind::ContainerBridge,
            false,
            (400, 40),
            Some(((400, 40), (0, 0))),
        ),
        entry("wg0", 4, LinkKind::Wireguard, true, (50, 5), None),
    ];
    for node in [&all, &uplink] {
        let heartbeat = tally_proto::v1::HeartbeatRequest {
            interfaces: interfaces.clone(),
            ..fleet::heartbeat("e", 1, 0, 0)
        };
        fleet::send(&mut client, Some(&node.token), heartbeat)
            .await
            .expect("applied");
    }
    // Thresholds crossed: 80 % in the current period, 100 % in an earlier
    // one (which the node list does not show).
    for (days, threshold) in [(0i32, 80i32), (31, 100), (0, 50)] {
        sqlx::query(
            r#"INSERT INTO "quota_events" ("nodeId", "periodStart", "threshold", "usage",
                 "quota", "mode", "at")
               SELECT "nodeId", "periodStart" - make_interval(days => $2), $3, 1, 1, 'sum', now()
               FROM "traffic_stats" WHERE "nodeId" = $1"#,
        )
        .bind(&uplink.id)
        .bind(days)
        .bind(threshold)
        .execute(&fleet.pool)
        .await
        .expect("quota event");
    }

    let list = api.get("/api/v1/nodes").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let nodes = list.json["nodes"].as_array().expect("nodes");
    let (a, u) = (&nodes[0], &nodes[1]);
    assert_eq!((&a["name"], &u["name"]), (&json!("all"), &json!("uplink")));
    // "all": every entry; its families are the split entries' sums.
    assert_eq!(a["countRule"], "all");
    assert_eq!(
        a["families"],
        json!({"ipv4": {"upload": "100", "download": "1000"},
               "ipv6": {"upload": "30", "download": "300"}})
    );
    assert_eq!(
        (&a["traffic"]["totalDownload"], &a["traffic"]["totalUpload"]),
        (&json!("1450"), &json!("145"))
    );
    assert!(a["quotaCrossed"].is_null());
    // "uplink": the NIC and the default route, not the container bridge.
    assert_eq!(u["countRule"], "uplink");
    assert_eq!(
        u["families"],
        json!({"ipv4": {"upload": "60", "download": "600"},
               "ipv6": {"upload": "30", "download": "300"}})
    );
    assert_eq!(
        (&u["traffic"]["totalDownload"], &u["traffic"]["totalUpload"]),
        (&json!("1050"), &json!("105"))
    );
    assert_eq!(u["quotaCrossed"], 80, "the highest of this period");

    let detail = api.get(&format!("/api/v1/nodes/{}", uplink.id)).await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    assert_eq!(detail.json["countRule"], "uplink");
    assert_eq!(detail.json["families"], u["families"]);
    assert_eq!(detail.json["quotaCrossed"], 80);
    let interfaces = detail.json["interfaces"].as_array().expect("interfaces");
    for interface in interfaces {
        assert_eq!(keys(interface), BTreeSet::from(INTERFACE_KEYS));
    }
    let shown: Vec<Value> = interfaces
        .iter()
        .map(|i| {
            json!([
                i["name"],
                i["kind"],
                i["defaultRoute"],
                i["ipv4"],
                i["ipv6"]
            ])
        })
        .collect();
    assert_eq!(
        shown,
        [
            json!(["docker0", "container_bridge", false, {"rx": "400", "tx": "40"},
                   {"rx": "0", "tx": "0"}]),
            json!(["eth0", "physical", false, {"rx": "600", "tx": "60"},
                   {"rx": "300", "tx": "30"}]),
            json!(["wg0", "wireguard", true, null, null]),
        ]
    );
    assert_eq!(interfaces[1]["rxBytes"], "1000");
}

/// Inserts a minute of history for `node` at `bucket`.
async fn history_row(
    pool: &PgPool,
    node: &str,
    bucket: &str,
    up: i64,
    down: i64,
    load: f64,
    hb: i32,
) {
    sqlx::query(
        r#"INSERT INTO "node_history"
             ("nodeId", "bucket", "upload", "download", "load1", "load5", "load15", "heartbeats")
           VALUES ($1, $2::timestamptz AT TIME ZONE 'UTC', $3, $4, $5, $5 / 2, $5 / 4, $6)"#,
    )
    .bind(node)
    .bind(bucket)
    .bind(up)
    .bind(down)
    .bind(load)
    .bind(hb)
    .execute(pool)
    .await
    .expect("history row");
}

async fn interface_row(pool: &PgPool, node: &str, name: &str, bucket: &str, rx: i64, tx: i64) {
    sqlx::query(
        r#"INSERT INTO "interface_history" ("nodeId", "name", "bucket", "rxBytes", "txBytes")
           VALUES ($1, $2, $3::timestamptz AT TIME ZONE 'UTC', $4, $5)"#,
    )
    .bind(node)
    .bind(name)
    .bind(bucket)
    .bind(rx)
    .bind(tx)
    .execute(pool)
    .await
    .expect("interface history row");
}

fn sum(points: &[Value], key: &str) -> i128 {
    points
        .iter()
        .map(|p| match &p[key] {
            Value::Number(n) => i128::from(n.as_i64().expect("integer")),
            other => counter(other),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_heartbeats_adds_up_to_the_totals() {
    let Some(fleet) = Fleet::start("api_history_live").await else {
        return;
    };
    let (node, server, mut client) = fleet.served_node("live", None).await;
    let api = Client::new(server.http_address);
    for (sequence, (rx, tx)) in [(1000, 100), (3000, 300), (6000, 700)]
        .into_iter()
        .enumerate()
    {
        fleet::send(
            &mut client,
            Some(&node.token),
            fleet::heartbeat("e", sequence as u64 + 1, rx, tx),
        )
        .await
        .expect("applied");
    }
    let (download, upload, _, _) = fleet.totals(&node.id).await;
    assert_eq!((download, upload), (6000, 700));

    // The defaults: the last hour in 1 minute steps.
    let response = api.get(&format!("/api/v1/nodes/{}/history", node.id)).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let history = &response.json;
    assert_eq!(
        keys(history),
        BTreeSet::from([
            "calibrations",
            "from",
            "interfaces",
            "nodeId",
            "points",
            "stepSeconds",
            "to"
        ])
    );
    assert_eq!(history["nodeId"], node.id.as_str());
    assert_eq!(history["stepSeconds"], 60);
    assert!(is_timestamp(&history["from"]) && is_timestamp(&history["to"]));
    let points = history["points"].as_array().expect("points");
    assert!((60..=61).contains(&points.len()), "{}", points.len());
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = points
        .iter()
        .map(|p| {
            assert!(is_timestamp(&p["time"]), "{p}");
            chrono::DateTime::parse_from_rfc3339(p["time"].as_str().unwrap_or("")).expect("time")
        })
        .collect();
    assert!(
        times.windows(2).all(|w| (w[1] - w[0]).num_seconds() == 60),
        "one point per minute"
    );
    assert_eq!(history["from"], points[0]["time"]);
    assert_eq!(sum(points, "upload"), 700);
    assert_eq!(sum(points, "download"), 6000);
    assert_eq!(sum(points, "heartbeats"), 3);
    for point in points {
        assert_eq!(
            keys(point),
            BTreeSet::from(["download", "heartbeats", "load", "time", "upload"])
        );
        assert!(point["upload"].is_string() && point["download"].is_string());
        if point["heartbeats"] == 0 {
            assert!(point["load"].is_null(), "{point}");
        } else {
            assert_eq!(point["load"]["one"], 0.5, "{point}");
        }
    }
    // The interfaces as last refreshed (the first heartbeat: every 10 s at
    // most), with points at the same times.
    let interfaces = history["interfaces"].as_array().expect("interfaces");
    let names: Vec<_> = interfaces.iter().map(|i| i["name"].as_str()).collect();
    assert_eq!(names, [Some("eth0"), Some("eth1")]);
    for interface in interfaces {
        let series = interface["points"].as_array().expect("points");
        assert_eq!(series.len(), points.len());
        assert_eq!(series[0]["time"], points[0]["time"]);
        assert_eq!(sum(series, "rx"), 500);
        assert_eq!(sum(series, "tx"), 50);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_steps_ranges_and_bounds() {
    let Some(fleet) = Fleet::start("api_history_steps").await else {
        return;
    };
    let node = fleet.add_node("steps").await;
    let id = node.id.as_str();
    let pool = &fleet.pool;
    history_row(pool, id, "2026-01-01T00:00:00Z", 1, 10, 1.0, 1).await;
    history_row(pool, id, "2026-01-01T00:01:00Z", 2, 20, 2.0, 2).await;
    history_row(pool, id, "2026-01-01T00:04:00Z", 4, 40, 4.0, 1).await;
    history_row(pool, id, "2026-01-01T00:05:00Z", 8, 80, 5.0, 1).await;
    history_row(pool, id, "2026-01-01T00:10:00Z", 16, 160, 6.0, 1).await;
    history_row(pool, id, "2025-12-31T23:59:00Z", 32, 320, 7.0, 1).await;
    interface_row(pool, id, "eth0", "2026-01-01T00:00:00Z", 100, 1).await;
    interface_row(pool, id, "eth0", "2026-01-01T00:03:00Z", 200, 2).await;
    interface_row(pool, id, "wlan0", "2026-01-01T00:06:00Z", 5, 6).await;
    interface_row(pool, id, "wlan0", "2026-01-01T00:10:00Z", 1000, 1000).await;
    // An interface the node has now, quiet in the range.
    sqlx::query(
        r#"INSERT INTO "interface_stats" ("nodeId", "name", "ifindex", "state", "rxBytes",
             "rxPackets", "txBytes", "txPackets", "updatedAt")
           VALUES ($1, 'bond0', 7, 'gone', 1, 1, 1, 1, now())"#,
    )
    .bind(id)
    .execute(pool)
    .await
    .expect("interface row");
    // Old rows stay: the collector's retention would delete them.
    let server = fleet
        .serve_here_with(|options| options.history_retention = CENTURY)
        .await;
    let api = Client::new(server.http_address);
    let history = |query: &str| {
        let api = api.clone();
        let path = format!("/api/v1/nodes/{id}/history?{query}");
        async move { api.get(&path).await }
    };

    // 5 minute steps: minutes added up, the load of the last minute.
    let r = history("from=2026-01-01T00:00:00Z&to=2026-01-01T00:10:00Z&step=5m").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["from"], "2026-01-01T00:00:00.000Z");
    assert_eq!(r.json["to"], "2026-01-01T00:10:00.000Z");
    assert_eq!(r.json["stepSeconds"], 300);
    let points = r.json["points"].as_array().expect("points");
    assert_eq!(points.len(), 2, "{}", r.body);
    assert_eq!(points[0]["time"], "2026-01-01T00:00:00.000Z");
    assert_eq!(
        (
            &points[0]["upload"],
            &points[0]["download"],
            &points[0]["heartbeats"]
        ),
        (&Value::from("7"), &Value::from("70"), &Value::from(4))
    );
    assert_eq!(points[0]["load"]["one"], 4.0, "the step's last minute");
    assert_eq!(points[0]["load"]["five"], 2.0);
    assert_eq!(points[1]["time"], "2026-01-01T00:05:00.000Z");
    assert_eq!(
        (&points[1]["upload"], &points[1]["heartbeats"]),
        (&Value::from("8"), &Value::from(1))
    );
    assert_eq!(points[1]["load"]["fifteen"], 1.25);
    let interfaces = r.json["interfaces"].as_array().expect("interfaces");
    let series: Vec<(&str, Vec<(i128, i128)>)> = interfaces
        .iter()
        .map(|i| {
            let points = i["points"].as_array().expect("points");
            let values = points
                .iter()
                .map(|p| (counter(&p["rx"]), counter(&p["tx"])))
                .collect();
            (i["name"].as_str().unwrap_or(""), values)
        })
        .collect();
    assert_eq!(
        series,
        [
            ("bond0", vec![(0, 0), (0, 0)]),
            ("eth0", vec![(300, 3), (0, 0)]),
            ("wlan0", vec![(0, 0), (5, 6)]),
        ]
    );
    assert_eq!(
        interfaces[1]["points"][1]["time"],
        "2026-01-01T00:05:00.000Z"
    );

    // 1 minute steps: dense, zeros and no load where nothing was recorded.
    let r = history("from=2026-01-01T00:00:00Z&to=2026-01-01T00:06:00Z").await;
    let points = r.json["points"].as_array().expect("points");
    let uploads: Vec<i128> = points.iter().map(|p| counter(&p["upload"])).collect();
    assert_eq!(uploads, [1, 2, 0, 0, 4, 8]);
    assert!(points[2]["load"].is_null() && points[2]["heartbeats"] == 0);

    // `from` is rounded down to a multiple of the step; offsets are taken
    // as such (a `+` decoded to a space too).
    for from in [
        "2026-01-01T00:01:30Z",
        "2026-01-01T01:01:30%2B01:00",
        "2026-01-01T01:01:30+01:00",
    ] {
        let r = history(&format!("from={from}&to=2026-01-01T00:10:00Z&step=5m")).await;
        assert_eq!(r.status, 200, "{from}: {}", r.body);
        assert_eq!(r.json["from"], "2026-01-01T00:00:00.000Z", "{from}");
        assert_eq!(r.json["points"].as_array().map(Vec::len), Some(2));
    }
    // `to` is exclusive; the step holding it is included.
    let r = history("from=2026-01-01T00:00:00Z&to=2026-01-01T00:10:00.001Z&step=5m").await;
    assert_eq!(r.json["to"], "2026-01-01T00:15:00.000Z");
    assert_eq!(r.json["points"][2]["upload"], "16");
    // At most 1440 points; unknown parameters are ignored.
    let r = history("from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&step=1m&colour=red").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["points"].as_array().map(Vec::len), Some(1440));
    assert_eq!(
        sum(r.json["points"].as_array().expect("points"), "upload"),
        31
    );

    // Bounds: 400 invalid_argument naming the parameter; nothing changes.
    let before = snapshot(pool).await;
    for (query, parameter) in [
        ("from=yesterday", "from:"),
        ("from=2026-01-01", "from:"),
        ("from=2026-01-01T00:00:00", "from:"),
        ("from=", "from:"),
        ("to=2026-13-01T00:00:00Z", "to:"),
        ("to=1767225600", "to:"),
        ("step=5x", "step:"),
        ("step=", "step:"),
        ("step=30s", "step:"),
        ("step=90s", "step:"),
        ("step=0m", "step:"),
        ("step=367d", "step:"),
        ("step=-1m", "step:"),
        (
            "from=2026-01-01T01:00:00Z&to=2026-01-01T00:00:00Z",
            "from (",
        ),
        (
            "from=2026-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from (",
        ),
        (
            "from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00.001Z&step=1m",
            "from 2026",
        ),
        (
            "from=1900-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&step=1d",
            "from 1900",
        ),
        ("step=1m&step=5m", "query string:"),
    ] {
        let r = history(query).await;
        assert_invalid(&r, parameter);
    }
    let r = history("from=2026-01-01T00:00:00Z&to=2026-01-02T00:01:00Z&step=1m").await;
    assert!(
        r.json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("1441 points, more than 1440")),
        "{}",
        r.body
    );
    let r = api.get("/api/v1/nodes/no-such-node/history").await;
    assert_eq!((r.status, r.error_code()), (404, Some("not_found")));
    assert_eq!(snapshot(pool).await, before);
}
