//! The dashboard in a real browser (headless Chromium over WebDriver)
//! against a real collector and PostgreSQL: the node table, exact counters
//! above 2^53, live updates from the event stream without a reload; the
//! selected node's IPv4/IPv6 split, interfaces (kind, uplink), billing
//! period and quota events, the quota badge, held traffic and calibrations
//! on the chart; a node whose heartbeats are stale and one whose clock is
//! days off; and screenshots for a person to look at
//! (`target/test-artefacts/`).

use crate::common::{self, browser};

use std::time::Duration;

use browser::Browser;
use common::fleet::{self, Fleet};
use serde_json::Value;
use tally_collector::{
    http::{TokenSet, Tokens},
    nodes,
};
use tally_proto::v1::{
    FamilyCounters, HeartbeatRequest, InterfaceCounters, InterfaceState, LinkKind,
};

/// 2^53 + 3: a JavaScript Number would show …996.
const BIG: i64 = (1 << 53) + 3;

/// A JS expression reading `attribute` of a node's cell.
fn cell(node: &str, field: &str, attribute: &str) -> String {
    format!(
        r#"return document.querySelector('tr[data-node-id="{node}"] [data-field="{field}"]')?.{attribute} ?? null;"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleet_and_follows_it_live() {
    let test = "the_dashboard_shows_the_fleet_and_follows_it_live";
    let Some(browser) = Browser::start(test, 1280, 900).await else {
        return;
    };
    let Some(fleet) = Fleet::start("browser_dashboard").await else {
        return;
    };
    let alpha = fleet.add_node("alpha").await;
    let bravo = fleet.add_node("bravo").await;
    let charlie = fleet.add_node("charlie").await;
    let server = fleet.serve_here().await;
    let mut client = fleet::client(server.address).await;
    for (node, rx, tx) in [(&alpha, 5_000_000, 1_200_000), (&bravo, 300_000, 90_000)] {
        fleet::send(
            &mut client,
            Some(&node.token),
            fleet::heartbeat("e", 1, rx, tx),
        )
        .await
        .expect("applied");
    }
    sqlx::query(r#"UPDATE "traffic_stats" SET "totalDownload" = $1 WHERE "nodeId" = $2"#)
        .bind(BIG)
        .bind(&charlie.id)
        .execute(&fleet.pool)
        .await
        .expect("set a big counter");

    let url = format!("http://{}/", server.http_address);
    browser.client.goto(&url).await.expect("open the dashboard");

    // The table lists every node, with its status.
    let names = browser
        .wait_for(
            "three rows",
            Duration::from_secs(10),
            r#"return [...document.querySelectorAll('#nodes-body tr')]
                 .map(r => r.querySelector('[data-field="name"] .node-name').textContent);"#,
            |v| v.as_array().is_some_and(|a| a.len() == 3),
        )
        .await;
    assert_eq!(names, serde_json::json!(["alpha", "bravo", "charlie"]));
    for (node, status) in [
        (&alpha, "online"),
        (&bravo, "online"),
        (&charlie, "offline"),
    ] {
        assert_eq!(
            browser.js(&cell(&node.id, "status", "textContent")).await,
            status,
            "{}",
            node.name
        );
    }
    assert_eq!(
        browser.js(&cell(&alpha.id, "load1", "textContent")).await,
        "0.50"
    );

    // Exact above 2^53, in the tooltip and in human units.
    assert_eq!(
        browser
            .js(&cell(&charlie.id, "totalDownload", "title"))
            .await,
        "9007199254740995 bytes"
    );
    assert_eq!(
        browser
            .js(&cell(&charlie.id, "totalDownload", "dataset.bytes"))
            .await,
        "9007199254740995"
    );
    assert_eq!(
        browser
            .js(&cell(&charlie.id, "totalDownload", "textContent"))
            .await,
        "8.00 PiB"
    );
    assert_eq!(
        browser.js(&cell(&alpha.id, "totalDownload", "title")).await,
        "5000000 bytes"
    );
    assert_eq!(
        browser
            .js(&cell(&alpha.id, "totalDownload", "textContent"))
            .await,
        "4.77 MiB"
    );
    // The fleet's sum is exact too: 2^53 + 3 + 5 000 000 + 300 000.
    assert_eq!(
        browser
            .js("return document.getElementById('stat-totalDownload').title;")
            .await,
        format!("{} bytes", BIG + 5_300_000)
    );
    let formatted = browser
        .js(r#"const f = window.tally.formatBytes;
               return [f('0'), f('1023'), f('1024'), f('1536'), f('1048575'),
                       f('18446744073709551615'), f('9223372036854775807'), f('x')];"#)
        .await;
    assert_eq!(
        formatted,
        serde_json::json!([
            "0 B", "1023 B", "1.00 KiB", "1.50 KiB", "1.00 MiB", "16.0 EiB", "8.00 EiB", "—"
        ])
    );

    // Rounding is exact where a Number is not: 1.005 EiB lies between these
    // two, which are the same double.
    let rounded = browser
        .js(r#"const f = window.tally.formatBytes;
               return [f('1158686112129881210'), f('1158686112129881211')];"#)
        .await;
    assert_eq!(rounded, serde_json::json!(["1.00 EiB", "1.01 EiB"]));
    // The event-stream parser: CRLF split across chunks, comments, several
    // data lines, an event without data.
    let parsed = browser
        .js(r#"const p = new window.tally.SseParser();
               const chunks = ['event: heartbeat\r', '\ndata: {"a":', '1}\r\n\r\n: keep-alive\n\n',
                               'event: nodes\ndata: x\ndata:y\n', '\nevent: empty\n\n', 'data: tail'];
               return chunks.flatMap(c => p.push(c)).map(e => [e.type, e.data]);"#)
        .await;
    assert_eq!(
        parsed,
        serde_json::json!([["heartbeat", "{\"a\":1}"], ["nodes", "x\ny"]])
    );

    // The event stream is up; a heartbeat moves the figures without a reload.
    browser
        .wait_for(
            "the live event stream",
            Duration::from_secs(10),
            "return document.getElementById('connection').dataset.state;",
            |v| v == "live",
        )
        .await;
    browser.js("window.__marker = 1; return null;").await;
    fleet::send(
        &mut client,
        Some(&alpha.token),
        fleet::heartbeat("e", 2, 7_000_000, 1_500_000),
    )
    .await
    .expect("applied");
    let shown = browser
        .wait_for(
            "alpha's new totals",
            Duration::from_secs(10),
            &cell(&alpha.id, "totalDownload", "dataset.bytes"),
            |v| v.is_string() && v != "5000000",
        )
        .await;
    let (download, upload, _, _) = fleet.totals(&alpha.id).await;
    assert_eq!(shown, download.to_string());
    assert_eq!(
        browser
            .js(&cell(&alpha.id, "totalUpload", "dataset.bytes"))
            .await,
        upload.to_string()
    );
    assert_eq!(
        browser.js("return window.__marker ?? null;").await,
        1,
        "the page reloaded"
    );

    // The ranking: charlie first by total, exactly; alpha's sum follows the
    // heartbeat within a few seconds.
    let ranking = r#"return [...document.querySelectorAll('#ranking li')].map(li =>
        [li.dataset.rank, li.dataset.nodeId, li.querySelector('[data-field="value"]').title]);"#;
    let alpha_sum = format!("{} bytes", download + upload);
    let shown = browser
        .wait_for(
            "the ranking to follow",
            Duration::from_secs(10),
            ranking,
            |v| v.get(1).and_then(|r| r.get(2)) == Some(&Value::from(alpha_sum.as_str())),
        )
        .await;
    assert_eq!(
        shown,
        serde_json::json!([
            ["1", charlie.id, "9007199254740995 bytes"],
            ["2", alpha.id, alpha_sum],
            ["3", bravo.id, "390000 bytes"],
        ])
    );

    // The first node's chart is drawn.
    browser
        .wait_for(
            "alpha's chart",
            Duration::from_secs(10),
            r#"const c = document.getElementById('chart');
               return c.dataset.state === 'ready' && c.dataset.nodeId
                 && !!c.querySelector('svg path.line-download');"#,
            |v| v == true,
        )
        .await;
    assert_eq!(
        browser
            .js("return document.getElementById('chart').dataset.nodeId;")
            .await,
        alpha.id.as_str()
    );

    // Hovering the chart shows the figures of the nearest step.
    let tip = browser
        .js(r#"const c = document.getElementById('chart');
               const r = c.getBoundingClientRect();
               c.dispatchEvent(new PointerEvent('pointermove',
                 { clientX: r.right - 20, clientY: r.top + 50, bubbles: true }));
               const tip = document.getElementById('chart-tooltip');
               return tip.hidden ? null : tip.textContent;"#)
        .await;
    assert!(
        tip.as_str()
            .is_some_and(|t| ["↓", "↑", "B/s", "load"].iter().all(|s| t.contains(s))),
        "{tip}"
    );

    // A click on a row charts that node.
    browser
        .client
        .find(fantoccini::Locator::Css(&format!(
            r#"tr[data-node-id="{}"]"#,
            bravo.id
        )))
        .await
        .expect("bravo's row")
        .click()
        .await
        .expect("click");
    browser
        .wait_for(
            "bravo's chart",
            Duration::from_secs(10),
            r#"const c = document.getElementById('chart');
               return c.dataset.state === 'ready' ? c.dataset.nodeId : null;"#,
            |v| v == bravo.id.as_str(),
        )
        .await;
    assert_eq!(
        browser.js("return location.hash;").await,
        format!("#node={}", bravo.id)
    );

    // Enrolled and removed nodes come and go without a reload.
    let delta = fleet.add_node("delta").await;
    nodes::remove(&fleet.pool, &bravo.id)
        .await
        .expect("remove bravo");
    let rows = browser
        .wait_for(
            "delta in, bravo out",
            Duration::from_secs(10),
            "return [...document.querySelectorAll('#nodes-body tr')].map(r => r.dataset.nodeId);",
            |v| {
                v.as_array()
                    .is_some_and(|a| a.len() == 3 && a.contains(&Value::from(delta.id.as_str())))
            },
        )
        .await;
    assert_eq!(rows, serde_json::json!([alpha.id, charlie.id, delta.id]));
    assert_eq!(
        browser
            .js(&format!(
                r#"return !!document.querySelector('#ranking li[data-node-id="{}"]');"#,
                bravo.id
            ))
            .await,
        false,
        "a removed node stays in the ranking"
    );
    // The removed node's chart gave way to the first node's.
    browser
        .wait_for(
            "alpha's chart again",
            Duration::from_secs(10),
            r#"const c = document.getElementById('chart');
               return c.dataset.state === 'ready' ? c.dataset.nodeId : null;"#,
            |v| v == alpha.id.as_str(),
        )
        .await;
    assert_eq!(
        browser.js("return window.__marker ?? null;").await,
        1,
        "the page reloaded"
    );

    // Nothing went wrong in the page.
    let diagnostics = browser
        .js("return [window.tally.diagnostics.errors, window.tally.diagnostics.cspViolations];")
        .await;
    assert_eq!(diagnostics, serde_json::json!([[], []]));

    full_page_screenshot(&browser, 1280, "dashboard.png").await;
    full_page_screenshot(&browser, 412, "dashboard-phone.png").await;
    // On a phone the table scrolls sideways instead of squeezing the page.
    let widths = browser
        .js(r#"const s = document.getElementById('nodes').closest('.table-scroll');
               return [s.scrollWidth > s.clientWidth, document.documentElement.scrollWidth <= window.innerWidth];"#)
        .await;
    assert_eq!(widths, serde_json::json!([true, true]));

    browser.finish().await;
}

/// Resizes the window to a `width` wide viewport as tall as the page, then
/// saves a screenshot.
async fn full_page_screenshot(browser: &Browser, width: u32, name: &str) {
    browser
        .client
        .set_window_size(width, 900)
        .await
        .expect("resize");
    // The window is larger than the viewport by the browser's own frame.
    let sizes = browser
        .js(r#"return [document.documentElement.scrollHeight,
                       window.outerHeight - window.innerHeight];"#)
        .await;
    let size = |i: usize| sizes[i].as_u64().and_then(|v| u32::try_from(v).ok());
    let height = size(0).unwrap_or(900).clamp(600, 4000) + size(1).unwrap_or(0);
    browser
        .client
        .set_window_size(width, height)
        .await
        .expect("resize");
    // Let the chart redraw for the new width, and the highlights fade.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answer: Value = browser
        .js("return document.getElementById('chart').dataset.state;")
        .await;
    assert_eq!(answer, "ready");
    browser.screenshot(name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_the_read_token() {
    let test = "the_dashboard_asks_for_the_read_token";
    let Some(browser) = Browser::start(test, 1280, 900).await else {
        return;
    };
    let Some(fleet) = Fleet::start("browser_token").await else {
        return;
    };
    let solo = fleet.add_node("solo").await;
    let server = fleet
        .serve_here_with(|options| {
            options.tokens = Tokens::new(TokenSet {
                admin: vec![],
                read: vec![READ_TOKEN.into()],
            })
        })
        .await;

    // The page itself is open, with its policy; the data is not.
    let http = common::http::Client::new(server.http_address);
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ] {
        let response = http.get(path).await;
        assert_eq!(response.status, 200, "{path}");
        assert!(
            response
                .header("content-type")
                .is_some_and(|t| t.starts_with(kind))
        );
        assert!(
            response
                .header("content-security-policy")
                .is_some_and(|p| p.contains("script-src 'self'") && !p.contains("unsafe")),
            "{path}"
        );
        assert_eq!(response.header("cache-control"), Some("no-cache"));
        assert!(response.header("etag").is_some(), "{path}");
    }
    assert_eq!(http.get("/api/v1/nodes").await.status, 401);

    let url = format!("http://{}/", server.http_address);
    browser.client.goto(&url).await.expect("open the dashboard");
    let locked = r#"return [document.getElementById('connection').dataset.state,
                            document.getElementById('auth').hidden,
                            document.getElementById('dashboard').hidden];"#;
    browser
        .wait_for("the token form", Duration::from_secs(10), locked, |v| {
            *v == serde_json::json!(["locked", false, true])
        })
        .await;

    // A wrong token is refused and asked for again.
    submit_token(&browser, "not-the-token").await;
    let message = browser
        .wait_for(
            "the refusal",
            Duration::from_secs(10),
            r#"return document.getElementById('auth').hidden ? null
                 : document.getElementById('auth-message').textContent;"#,
            |v| v.as_str().is_some_and(|m| m.contains("refused")),
        )
        .await;
    assert!(
        message.as_str().is_some_and(|m| m.contains("wrong token")),
        "{message}"
    );

    // The right one opens the dashboard and the (fetch-read) event stream.
    submit_token(&browser, READ_TOKEN).await;
    browser
        .wait_for(
            "the live dashboard",
            Duration::from_secs(10),
            &format!(
                r#"return document.getElementById('connection').dataset.state === 'live'
                     && !!document.querySelector('tr[data-node-id="{}"]');"#,
                solo.id
            ),
            |v| v == true,
        )
        .await;
    assert_eq!(
        browser
            .js("return sessionStorage.getItem('tally.readToken');")
            .await,
        READ_TOKEN
    );
    browser.js("window.__marker = 1; return null;").await;
    let mut client = fleet::client(server.address).await;
    fleet::send(
        &mut client,
        Some(&solo.token),
        fleet::heartbeat("e", 1, 4096, 2048),
    )
    .await
    .expect("applied");
    browser
        .wait_for(
            "solo's first heartbeat",
            Duration::from_secs(10),
            &cell(&solo.id, "totalDownload", "title"),
            |v| v == "4096 bytes",
        )
        .await;
    assert_eq!(
        browser.js(&cell(&solo.id, "status", "textContent")).await,
        "online"
    );
    assert_eq!(
        browser.js("return window.__marker ?? null;").await,
        1,
        "the page reloaded"
    );
    let diagnostics = browser
        .js("return [window.tally.diagnostics.errors, window.tally.diagnostics.cspViolations];")
        .await;
    assert_eq!(diagnostics, serde_json::json!([[], []]));

    browser.finish().await;
}

const READ_TOKEN: &str = "reader-secret-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-secret-0123456789abcdef";

/// An interface entry with cumulative `(rx, tx)` bytes and, when given,
/// IPv4 and IPv6 `(rx, tx)` bytes.
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
        rx_packets: 2,
        tx_bytes: tx,
        tx_packets: 2,
        state: InterfaceState::Attached as i32,
        kind: kind as i32,
        default_route,
        ipv4: families.map(|(v4, _)| family(v4)),
        ipv6: families.map(|(_, v6)| family(v6)),
        ..InterfaceCounters::default()
    }
}

/// Heartbeat `sequence` of a host whose uplink eth0 has carried `(rx, tx)`
/// (a third of it IPv6, the rest IPv4, less 100 bytes of neither), beside
/// a container bridge and a veth that carried 500 bytes each way.
fn host(sequence: u64, (rx, tx): (u64, u64)) -> HeartbeatRequest {
    let v6 = (rx / 3, tx / 3);
    let v4 = (rx - v6.0 - 100, tx - v6.1 - 100);
    HeartbeatRequest {
        interfaces: vec![
            entry(
                "docker0",
                3,
                LinkKind::ContainerBridge,
                false,
                (500, 500),
                Some(((500, 500), (0, 0))),
            ),
            entry(
                "eth0",
                2,
                LinkKind::Physical,
                true,
                (rx, tx),
                Some((v4, v6)),
            ),
            entry(
                "veth1a2b3c",
                7,
                LinkKind::Veth,
                false,
                (500, 500),
                Some(((500, 500), (0, 0))),
            ),
        ],
        ..fleet::heartbeat("e", sequence, 0, 0)
    }
}

/// Clicks the node's row and waits until its chart is drawn.
async fn select_node(browser: &Browser, id: &str) {
    browser
        .client
        .find(fantoccini::Locator::Css(&format!(
            r#"tr[data-node-id="{id}"]"#
        )))
        .await
        .expect("the node's row")
        .click()
        .await
        .expect("click");
    browser
        .wait_for(
            "the node's chart",
            Duration::from_secs(10),
            r#"const c = document.getElementById('chart');
               return c.dataset.state === 'ready' ? c.dataset.nodeId : null;"#,
            |v| v == id,
        )
        .await;
}

/// What the selected node's detail shows, as JSON for the assertions.
const DETAIL: &str = r#"
    const text = (id) => document.getElementById(id).textContent;
    const bytes = (id) => document.getElementById(id).dataset.bytes;
    return {
      hidden: document.getElementById('detail').hidden,
      rule: document.getElementById('count-rule').dataset.rule,
      families: ['ipv4', 'ipv6'].map(f => [bytes(`family-${f}-download`),
        bytes(`family-${f}-upload`), text(`family-${f}-share`)]),
      interfaces: [...document.querySelectorAll('#interfaces-body tr')].map(r => [
        r.dataset.interface,
        r.querySelector('[data-field="kind"]').textContent,
        !!r.querySelector('[data-field="uplink"]'),
        r.dataset.counted,
        r.querySelector('[data-field="ipv4"]').dataset.rx ?? null,
      ]),
      billing: document.getElementById('billing-card').hidden ? null : {
        usage: bytes('billing-usage'),
        quota: bytes('billing-quota'),
        percent: text('billing-percent'),
        meter: document.getElementById('billing-fill').className,
      },
      quotaEvents: document.getElementById('quota-card').hidden ? null
        : [...document.querySelectorAll('#quota-events li')]
            .map(li => [li.dataset.threshold, li.dataset.current]),
    };"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_families_uplinks_quotas_and_held_traffic() {
    let test = "the_dashboard_shows_families_uplinks_quotas_and_held_traffic";
    let Some(browser) = Browser::start(test, 1280, 900).await else {
        return;
    };
    let Some(fleet) = Fleet::start("browser_issue6").await else {
        return;
    };
    let core = fleet.add_node("core").await;
    let edge = fleet.add_node("edge").await;
    // edge counts its uplink only, against a quota of 10 000 bytes (sum);
    // core carries at most 1 byte/s per interface: a real delta is held.
    fleet
        .set_node_settings(&edge.id, r#""countRule" = 'uplink', "quota" = 10000"#)
        .await;
    fleet.set_node_settings(&core.id, r#""maxRate" = 1"#).await;
    let server = fleet
        .serve_here_with(|options| {
            options.tokens = Tokens::new(TokenSet {
                admin: vec![ADMIN_TOKEN.into()],
                read: vec![],
            })
        })
        .await;
    let mut client = fleet::client(server.address).await;
    // 4 000 bytes of the quota: 40 %.
    fleet::send(&mut client, Some(&edge.token), host(1, (3000, 1000)))
        .await
        .expect("applied");
    fleet::send(
        &mut client,
        Some(&core.token),
        fleet::heartbeat("e", 1, 1000, 10),
    )
    .await
    .expect("applied");
    // A delta held a while ago, before the page opened.
    sqlx::query(
        r#"INSERT INTO "anomalies" ("nodeId", "interface", "ifindex", "detectedAt", "upload",
             "download", "elapsedMs", "limitBytes", "periodStart")
           SELECT "nodeId", 'eth1', 3, '2025-01-01 08:00:00', 7, 5000000000000, 1000, 1,
                  "periodStart"
           FROM "traffic_stats" WHERE "nodeId" = $1"#,
    )
    .bind(&core.id)
    .execute(&fleet.pool)
    .await
    .expect("an anomaly");

    let url = format!("http://{}/#node={}", server.http_address, edge.id);
    browser.client.goto(&url).await.expect("open the dashboard");
    browser
        .wait_for(
            "the live event stream",
            Duration::from_secs(10),
            "return document.getElementById('connection').dataset.state;",
            |v| v == "live",
        )
        .await;
    browser.js("window.__marker = 1; return null;").await;

    // edge's detail: the IPv4/IPv6 split, its interfaces with their kinds
    // and the uplink, its billing period at 40 %, no quota event yet.
    let detail = browser
        .wait_for("edge's detail", Duration::from_secs(10), DETAIL, |v| {
            v["interfaces"].as_array().is_some_and(|a| a.len() == 3) && !v["billing"].is_null()
        })
        .await;
    assert_eq!(detail["hidden"], false);
    assert_eq!(detail["rule"], "uplink");
    // eth0 only: IPv4 1900 ↓ 567 ↑ (2467), IPv6 1000 ↓ 333 ↑ (1333).
    assert_eq!(
        detail["families"],
        serde_json::json!([["1900", "567", "64.9 %"], ["1000", "333", "35.0 %"]])
    );
    assert_eq!(
        detail["interfaces"],
        serde_json::json!([
            ["docker0", "container bridge", false, "false", "500"],
            ["eth0", "physical", true, "true", "1900"],
            ["veth1a2b3c", "veth", false, "false", "500"],
        ])
    );
    assert_eq!(
        detail["billing"],
        serde_json::json!({
            "usage": "4000", "quota": "10000", "percent": "40.00 % of the quota",
            "meter": "meter-fill",
        })
    );
    assert_eq!(detail["quotaEvents"], Value::Null, "hidden without events");
    let badge = format!(
        r#"const b = document.querySelector('tr[data-node-id="{}"] [data-field="quota"]');
           return b.hidden ? null : [b.dataset.threshold, b.textContent];"#,
        edge.id
    );
    assert_eq!(browser.js(&badge).await, Value::Null);

    // The held delta is listed: node, interface, bytes, when.
    let held = r#"return document.getElementById('anomalies').hidden ? null
        : [...document.querySelectorAll('#anomalies-body tr')].map(r => [
            r.querySelector('[data-field="node"]').textContent,
            r.querySelector('[data-field="interface"]').textContent,
            r.querySelector('[data-field="download"]').dataset.bytes,
            r.querySelector('[data-field="upload"]').dataset.bytes,
            r.querySelector('[data-field="detectedAt"]').textContent !== '',
          ]);"#;
    let rows = browser
        .wait_for("the held traffic", Duration::from_secs(10), held, |v| {
            v.as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    assert_eq!(
        rows,
        serde_json::json!([["core", "eth1", "5000000000000", "7", true]])
    );
    assert_eq!(
        browser
            .js(r#"return document.querySelector('#anomalies-body [data-field="download"]').textContent;"#)
            .await,
        "4.55 TiB"
    );

    // Live: edge passes 80 % (9 000 bytes), then 100 % (11 500): the row's
    // badge, the quota events and the meter follow without a reload.
    fleet::send(&mut client, Some(&edge.token), host(2, (7000, 2000)))
        .await
        .expect("applied");
    let shown = browser
        .wait_for("the 80 % badge", Duration::from_secs(10), &badge, |v| {
            !v.is_null()
        })
        .await;
    assert_eq!(shown, serde_json::json!(["80", "quota 80 %"]));
    browser
        .wait_for(
            "the 80 % event and 90 % usage",
            Duration::from_secs(15),
            DETAIL,
            |v| {
                v["quotaEvents"] == serde_json::json!([["80", "true"]])
                    && v["billing"]["percent"] == "90.00 % of the quota"
            },
        )
        .await;
    // With core selected (no quota, no events: those panels hide), edge
    // passes 100 % (11 500): its row's badge follows from the live event.
    select_node(&browser, &core.id).await;
    let detail = browser
        .wait_for("core's detail", Duration::from_secs(10), DETAIL, |v| {
            v["interfaces"].as_array().is_some_and(|a| a.len() == 2)
                && v["billing"]["usage"] == "1010"
        })
        .await;
    assert_eq!(detail["rule"], "all");
    assert_eq!(detail["billing"]["quota"], "", "no quota: {detail}");
    assert_eq!(detail["quotaEvents"], Value::Null);
    fleet::send(&mut client, Some(&edge.token), host(3, (9000, 2500)))
        .await
        .expect("applied");
    let shown = browser
        .wait_for("the 100 % badge", Duration::from_secs(10), &badge, |v| {
            v[0] == "100"
        })
        .await;
    assert_eq!(shown, serde_json::json!(["100", "quota 100 %"]));
    select_node(&browser, &edge.id).await;
    let detail = browser
        .wait_for("the 100 % event", Duration::from_secs(15), DETAIL, |v| {
            v["quotaEvents"].as_array().is_some_and(|a| a.len() == 2)
                && v["billing"]["usage"] == "11500"
        })
        .await;
    assert_eq!(
        detail["quotaEvents"],
        serde_json::json!([["100", "true"], ["80", "true"]])
    );
    assert_eq!(detail["billing"]["percent"], "115.00 % of the quota");
    assert_eq!(detail["billing"]["meter"], "meter-fill meter-over");

    // Live: core's next delta is more than 1 byte/s could carry: held,
    // and listed (eth0 and eth1, newest first) beside the older one.
    fleet::send(
        &mut client,
        Some(&core.token),
        fleet::heartbeat("e", 2, 3000, 30),
    )
    .await
    .expect("applied");
    let rows = browser
        .wait_for("the new held deltas", Duration::from_secs(10), held, |v| {
            v.as_array().is_some_and(|a| a.len() == 3)
        })
        .await;
    assert_eq!(
        rows,
        serde_json::json!([
            ["core", "eth1", "1000", "10", true],
            ["core", "eth0", "1000", "10", true],
            ["core", "eth1", "5000000000000", "7", true],
        ])
    );

    // A calibration of edge shows on its chart and under it.
    let admin = common::http::Client::new(server.http_address).with_token(Some(ADMIN_TOKEN));
    let response = admin
        .post(
            &format!("/api/v1/nodes/{}/calibrations", edge.id),
            Some(
                r#"{"total": {"download": {"offset": "1048576"}},
                     "actor": "alice", "reason": "match the provider's bill"}"#,
            ),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.body);
    let calibrations = browser
        .wait_for(
            "the calibration on the chart",
            Duration::from_secs(15),
            r#"const marks = document.querySelectorAll('#chart svg g.calibration-mark');
               const list = document.getElementById('calibrations');
               return list.hidden ? null : [marks.length,
                 [...list.querySelectorAll('li')].map(li => li.textContent)];"#,
            |v| !v.is_null() && v[0] == 1,
        )
        .await;
    let text = calibrations[1][0].as_str().unwrap_or("");
    assert!(
        text.contains("alice: match the provider's bill") && text.contains("total ↓"),
        "{calibrations}"
    );

    assert_eq!(
        browser.js("return window.__marker ?? null;").await,
        1,
        "the page reloaded"
    );
    let diagnostics = browser
        .js("return [window.tally.diagnostics.errors, window.tally.diagnostics.cspViolations];")
        .await;
    assert_eq!(diagnostics, serde_json::json!([[], []]));
    full_page_screenshot(&browser, 1280, "dashboard-issue6.png").await;
    full_page_screenshot(&browser, 412, "dashboard-issue6-phone.png").await;
    let widths = browser
        .js("return document.documentElement.scrollWidth <= window.innerWidth;")
        .await;
    assert_eq!(widths, true, "the page does not scroll sideways on a phone");

    browser.finish().await;
}

/// Types `token` into the token form and submits it.
async fn submit_token(browser: &Browser, token: &str) {
    let input = browser
        .client
        .find(fantoccini::Locator::Id("auth-token"))
        .await
        .expect("the token field");
    input.send_keys(token).await.expect("type the token");
    browser
        .client
        .find(fantoccini::Locator::Css("#auth-form button[type=submit]"))
        .await
        .expect("the submit button")
        .click()
        .await
        .expect("submit");
}

/// A node's heartbeat of counter set `epoch` (boot clock `sequence`,
/// `generation`), with the node's clock `offset_ns` off.
fn of_set(
    epoch: &str,
    generation: u64,
    sequence: u64,
    offset_ns: i64,
    rx: u64,
) -> HeartbeatRequest {
    let mut heartbeat = fleet::heartbeat(epoch, sequence, rx, rx / 10);
    heartbeat.generation = generation;
    heartbeat.agent_time_unix_ns = heartbeat
        .agent_time_unix_ns
        .saturating_add_signed(offset_ns);
    heartbeat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_stale_heartbeats_and_skewed_clocks() {
    let test = "the_dashboard_shows_stale_heartbeats_and_skewed_clocks";
    let Some(browser) = Browser::start(test, 1280, 900).await else {
        return;
    };
    let Some(fleet) = Fleet::start("browser_stale").await else {
        return;
    };
    let locked = fleet.add_node("locked").await;
    let behind = fleet.add_node("behind").await;
    let server = fleet.serve_here().await;
    let client = fleet::client(server.address).await;
    let send = |token: String, heartbeat: HeartbeatRequest| {
        let mut client = client.clone();
        async move {
            fleet::send(&mut client, Some(&token), heartbeat)
                .await
                .expect("answered")
        }
    };
    let two_days = 2 * 86_400 * 1_000_000_000i64;
    send(behind.token.clone(), of_set("b", 1, 10, -two_days, 640)).await;
    send(locked.token.clone(), of_set("mine", 1, 10, 0, 1000)).await;

    let url = format!("http://{}/", server.http_address);
    browser.client.goto(&url).await.expect("open the dashboard");
    let badge = |id: &str, field: &str| {
        format!(
            r#"const b = document.querySelector('tr[data-node-id="{id}"] [data-field="{field}"]');
               return b && !b.hidden ? b.textContent : null;"#
        )
    };
    // A clock two days behind: a badge, and the node counts all the same.
    let clock = browser
        .wait_for(
            "the clock badge",
            Duration::from_secs(10),
            &badge(&behind.id, "clock"),
            Value::is_string,
        )
        .await;
    assert_eq!(clock, "clock −2 d");
    assert_eq!(browser.js(&badge(&locked.id, "clock")).await, Value::Null);
    assert_eq!(browser.js(&badge(&locked.id, "stale")).await, Value::Null);

    // Another agent takes the node's token over with a later counter set;
    // the node's own heartbeats are stale from then on: the badge comes
    // live, with the third in a row.
    send(locked.token.clone(), of_set("other", 2, 20, 0, 5)).await;
    for sequence in [30, 40, 50] {
        let reply = send(locked.token.clone(), of_set("mine", 1, sequence, 0, 2000)).await;
        assert_eq!(reply.outcome(), tally_proto::v1::Outcome::Stale);
    }
    let stale = browser
        .wait_for(
            "the stale badge",
            Duration::from_secs(10),
            &badge(&locked.id, "stale"),
            Value::is_string,
        )
        .await;
    assert_eq!(stale, "stale ×3");
    let title = browser.js(&cell(&locked.id, "stale", "title")).await;
    assert!(
        title.as_str().is_some_and(|t| t.contains("superseded")),
        "{title}"
    );
    select_node(&browser, &locked.id).await;
    let note = browser
        .wait_for(
            "the counter set note",
            Duration::from_secs(10),
            "return document.getElementById('counter-set').textContent;",
            |v| {
                v.as_str().is_some_and(|t| {
                    t.contains("nothing counted now") && t.contains("generation 2")
                })
            },
        )
        .await;
    assert!(
        note.as_str()
            .is_some_and(|t| t.contains("generation 2") && t.contains("3 stale heartbeats")),
        "{note}"
    );
    browser.screenshot("dashboard-stale.png").await;

    // The followed set counts: the run is over, the badge goes, live.
    send(locked.token.clone(), of_set("other", 2, 60, 0, 50)).await;
    browser
        .wait_for(
            "the stale badge to go",
            Duration::from_secs(10),
            &badge(&locked.id, "stale"),
            Value::is_null,
        )
        .await;
    browser.finish().await;
}
