//! The HTTP side against a real PostgreSQL and real HTTP: health,
//! readiness, `GET /api/v1/nodes` (seed field names, counters as decimal
//! strings, exact above 2^53, issue 6's fields beside them), JSON errors. The rest of the API is in
//! `api_*.rs`.

use crate::common;

use std::{net::SocketAddr, time::Duration};

use common::{
    fleet::{self, Fleet},
    http::Client,
};
use tally_proto::v1::FamilyCounters;

/// `GET path`: (status, JSON body).
async fn get(address: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let response = Client::new(address).get(path).await;
    (response.status, response.json)
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
    // 400 of eth0's 500 bytes received (4 of 5 sent) were IPv4.
    let mut heartbeat = fleet::heartbeat("e", 1, 1000, 10);
    heartbeat.interfaces[0].ipv4 = Some(FamilyCounters {
        rx_bytes: 400,
        rx_packets: 1,
        tx_bytes: 4,
        tx_packets: 1,
    });
    fleet::send(&mut client, Some(&busy.token), heartbeat)
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
    // Issue 6's fields: the family split (decimal strings, none without a
    // split), the effective count rule, no quota threshold crossed.
    for (node, ipv4) in [(b, ("4", "400")), (q, ("0", "0"))] {
        assert_eq!(
            node["families"],
            serde_json::json!({
                "ipv4": {"upload": ipv4.0, "download": ipv4.1},
                "ipv6": {"upload": "0", "download": "0"},
            }),
            "{node}"
        );
        assert_eq!(node["countRule"], "all");
        assert!(node["quotaCrossed"].is_null(), "{node}");
    }
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

    // An unknown path under /api: our JSON 404.
    let (status, body) = get(http, "/api/v1/nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("GET /api/v1/nope")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_every_migration_is_applied() {
    let Some(fleet) = Fleet::start("http_readyz").await else {
        return;
    };
    let server = fleet.serve_here().await;
    // Serving (the node tokens read: the HTTP side starts after that)
    // before the schema goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(server.http_address, "/healthz").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    // Without traffic_stats the node list fails: a JSON error, 503, that
    // says no more than that (the database's words go to the log).
    let (status, body) = get(server.http_address, "/api/v1/nodes").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(
        body["error"]["message"], "the database failed: nothing was changed; retry later",
        "{body}"
    );
}

/// The dashboard's script modules: `/` loads `app.js` as a module, and every
/// module reached through the imports is served as JavaScript with the
/// page's policy; a name outside the collector's table of files is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_module_is_served_as_javascript_with_the_policy() {
    let Some(fleet) = Fleet::start("http_dashboard_modules").await else {
        return;
    };
    let server = fleet.serve_here().await;
    let http = Client::new(server.http_address);

    let page = http.get("/").await;
    assert_eq!(page.status, 200);
    let entry = page
        .body
        .split("<script type=\"module\" src=\"")
        .nth(1)
        .and_then(|tag| tag.split('"').next())
        .expect("the page loads a module script");
    assert_eq!(entry, "/dashboard/app.js");

    // Each module imports its siblings as `'./name.js'`: quoted after
    // `} from` (an `import { … } from`, on one line or several), or after
    // a bare `import` at the start of a line.
    let mut modules = vec![entry.to_owned()];
    let mut next = 0;
    while let Some(path) = modules.get(next).cloned() {
        next += 1;
        let response = http.get(&path).await;
        assert_eq!(response.status, 200, "{path}");
        assert!(
            response
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/javascript")),
            "{path}: {:?}",
            response.header("content-type")
        );
        assert!(
            response
                .header("content-security-policy")
                .is_some_and(|p| p.contains("script-src 'self';") && !p.contains("unsafe")),
            "{path}"
        );
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(response.header("cache-control"), Some("no-cache"), "{path}");
        assert!(response.header("etag").is_some(), "{path}");
        for line in response.body.lines() {
            let Some((_, rest)) = line.split_once("} from '").or_else(|| {
                line.split_once("import '")
                    .filter(|(before, _)| before.is_empty())
            }) else {
                continue;
            };
            let specifier = rest.split('\'').next().unwrap_or("");
            let name = specifier
                .strip_prefix("./")
                .unwrap_or_else(|| panic!("{path} imports {specifier:?}"));
            let imported = format!("/dashboard/{name}");
            if !modules.contains(&imported) {
                modules.push(imported);
            }
        }
    }
    assert!(modules.len() > 10, "{modules:?}");

    for unknown in [
        "/dashboard/nope.js",
        "/dashboard/index.html",
        "/dashboard/../Cargo.toml",
        "/dashboard/%2e%2e/dashboard.rs",
        "/dashboard/app.js/",
    ] {
        assert_eq!(http.get(unknown).await.status, 404, "{unknown}");
    }
}
