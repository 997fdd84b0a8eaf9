//! Issue 6's rules as heartbeat batches apply them, against a real
//! PostgreSQL: a heartbeat straddling a period boundary is shared by the
//! time it covers and the ended period is archived; manual resets and the
//! sweep archive too; the counting rule "uplink" counts hardware and the
//! default-route interface only, "all" the seed's sum; a delta larger than
//! an interface can carry is held as an anomaly, and nothing is lost;
//! IPv4/IPv6 bytes add up per node.

use crate::common;

use chrono::{NaiveDate, NaiveDateTime, Timelike as _};
use common::fleet::{self, Fleet};
use sqlx::Row as _;
use tally_collector::{
    auth,
    ingest::{BatchTime, Job, store},
    period, validate,
};
use tally_proto::v1::{FamilyCounters, HeartbeatRequest, InterfaceCounters, LinkKind};

fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(y, m, d)
        .and_then(|d| d.and_hms_opt(h, min, 0))
        .expect("valid time")
}

fn job(token: &str, request: HeartbeatRequest) -> Job {
    Job {
        credentials: auth::from_bearer(Some(&format!("Bearer {token}"))).expect("token"),
        heartbeat: validate::heartbeat(request, i64::MAX / 2).expect("valid"),
    }
}

async fn apply(fleet: &Fleet, jobs: &[Job], now: NaiveDateTime) -> Vec<String> {
    let mut conn = fleet.pool.acquire().await.expect("connection");
    store::apply(&mut conn, jobs, BatchTime::new(now, None))
        .await
        .expect("commit")
        .into_iter()
        .map(|r| match r {
            Ok(applied) => format!("{:?}", applied.outcome),
            Err(error) => error.to_string(),
        })
        .collect()
}

async fn set_period_start(fleet: &Fleet, node: &str, start: NaiveDateTime) {
    sqlx::query(r#"UPDATE "traffic_stats" SET "periodStart" = $2 WHERE "nodeId" = $1"#)
        .bind(node)
        .bind(start)
        .execute(&fleet.pool)
        .await
        .expect("period start");
}

/// `(start, end, upload, download, closedBy)` of the node's archived periods.
async fn archived(
    fleet: &Fleet,
    node: &str,
) -> Vec<(NaiveDateTime, NaiveDateTime, i64, i64, String)> {
    sqlx::query(
        r#"SELECT "start", "end", "upload", "download", "closedBy" FROM "billing_periods"
           WHERE "nodeId" = $1 ORDER BY "start""#,
    )
    .bind(node)
    .fetch_all(&fleet.pool)
    .await
    .expect("billing_periods")
    .iter()
    .map(|r| {
        (
            r.get("start"),
            r.get("end"),
            r.get("upload"),
            r.get("download"),
            r.get("closedBy"),
        )
    })
    .collect()
}

async fn period_start(fleet: &Fleet, node: &str) -> NaiveDateTime {
    sqlx::query_scalar(r#"SELECT "periodStart" FROM "traffic_stats" WHERE "nodeId" = $1"#)
        .bind(node)
        .fetch_one(&fleet.pool)
        .await
        .expect("periodStart")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_straddling_the_boundary_is_shared_by_time() {
    let Some(fleet) = Fleet::start("ingest_straddle").await else {
        return;
    };
    let node = fleet.add_node("berlin").await;
    // Anchored on the 1st in Berlin: November starts at 23:00 UTC on Oct 31.
    fleet
        .set_node_settings(&node.id, r#""anchorDay" = 1, "timeZone" = 'Europe/Berlin'"#)
        .await;
    set_period_start(&fleet, &node.id, at(2026, 9, 30, 22, 0)).await;
    let beat = |seq, rx, tx| job(&node.token, fleet::heartbeat("e", seq, rx, tx));
    assert_eq!(
        apply(&fleet, &[beat(1, 1_000, 100)], at(2026, 10, 31, 22, 50)).await,
        ["Applied"]
    );
    // 10 minutes before the boundary, 30 after: a quarter is October's.
    assert_eq!(
        apply(&fleet, &[beat(2, 5_000, 500)], at(2026, 10, 31, 23, 30)).await,
        ["Applied"]
    );
    let (down, up, period_down, period_up) = fleet.totals(&node.id).await;
    assert_eq!((down, up), (5_000, 500));
    assert_eq!((period_down, period_up), (3_000, 300));
    assert_eq!(
        period_start(&fleet, &node.id).await,
        at(2026, 10, 31, 23, 0)
    );
    let periods = archived(&fleet, &node.id).await;
    assert_eq!(
        periods,
        vec![(
            at(2026, 9, 30, 22, 0),
            at(2026, 10, 31, 23, 0),
            100 + 100,
            1_000 + 1_000,
            "schedule".to_owned()
        )]
    );
    // Closed + current = total.
    assert_eq!(periods[0].3 + period_down, down);
    assert_eq!(periods[0].2 + period_up, up);

    // Silent over two boundaries: two periods archived, the heartbeat's
    // bytes shared over the three by time.
    assert_eq!(
        apply(&fleet, &[beat(3, 5_000 + 6_100, 500)], at(2027, 1, 1, 0, 0)).await,
        ["Applied"]
    );
    let periods = archived(&fleet, &node.id).await;
    assert_eq!(periods.len(), 3, "{periods:?}");
    assert_eq!(
        (periods[1].0, periods[1].1),
        (at(2026, 10, 31, 23, 0), at(2026, 11, 30, 23, 0))
    );
    assert_eq!(
        (periods[2].0, periods[2].1),
        (at(2026, 11, 30, 23, 0), at(2026, 12, 31, 23, 0))
    );
    let (down, _, period_down, _) = fleet.totals(&node.id).await;
    let archived_down: i64 = periods.iter().map(|p| p.3).sum();
    assert_eq!(archived_down + period_down, down);
    assert_eq!(down, 11_100);
    // The span is 87,870 minutes: 43,170 in November's period, 44,640 in
    // December's, 60 in January's, which gets the rounding remainder too.
    let november = 6_100 * 43_170 / 87_870;
    let december = 6_100 * 44_640 / 87_870;
    // November's period also had the 3,000 bytes counted in it before.
    assert_eq!((periods[1].3, periods[2].3), (3_000 + november, december));
    assert_eq!(period_down, 6_100 - november - december);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_the_sweep_archive_the_period() {
    let Some(fleet) = Fleet::start("ingest_archive").await else {
        return;
    };
    let node = fleet.add_node("n").await;
    let quiet = fleet.add_node("quiet").await;
    let beat = |seq, rx, tx| job(&node.token, fleet::heartbeat("e", seq, rx, tx));
    let now = chrono::Utc::now().naive_utc();
    assert_eq!(apply(&fleet, &[beat(1, 700, 70)], now).await, ["Applied"]);
    period::reset_now(&fleet.pool, &period::Target::Node("n".into()))
        .await
        .expect("reset");
    let periods = archived(&fleet, &node.id).await;
    assert_eq!(periods.len(), 1);
    assert_eq!(
        (periods[0].2, periods[0].3, periods[0].4.as_str()),
        (70, 700, "request")
    );
    assert_eq!(fleet.totals(&node.id).await, (700, 70, 0, 0));

    // A quiet node anchored on day 1 whose period began last month.
    fleet
        .set_node_settings(&quiet.id, r#""anchorDay" = 1"#)
        .await;
    sqlx::query(
        r#"UPDATE "traffic_stats" SET "periodStart" = $2, "periodUpload" = 3,
             "periodDownload" = 4, "totalUpload" = 3, "totalDownload" = 4 WHERE "nodeId" = $1"#,
    )
    .bind(&quiet.id)
    .bind(now - chrono::Duration::days(45))
    .execute(&fleet.pool)
    .await
    .expect("age");
    assert!(period::sweep(&fleet.pool, None).await.expect("sweep") >= 1);
    let periods = archived(&fleet, &quiet.id).await;
    assert!(!periods.is_empty());
    assert_eq!(
        (periods[0].2, periods[0].3, periods[0].4.as_str()),
        (3, 4, "schedule")
    );
    assert!(periods[1..].iter().all(|p| p.2 == 0 && p.3 == 0));
    assert_eq!(fleet.totals(&quiet.id).await, (4, 3, 0, 0));
    assert_eq!(
        period::sweep(&fleet.pool, None).await.expect("sweep"),
        0,
        "once only"
    );
    // The node without an anchor is left alone by the sweep.
    assert_eq!(archived(&fleet, &node.id).await.len(), 1);
}

/// A container host's heartbeat: the uplink (a veth with the default
/// route), a docker bridge, a container's veth port, a hardware NIC.
fn host(epoch: &str, sequence: u64, scale: u64, route_on_port: bool) -> HeartbeatRequest {
    let entry = |name: &str, ifindex, kind: LinkKind, rx: u64, tx: u64, route| InterfaceCounters {
        name: name.into(),
        ifindex,
        rx_bytes: rx * scale,
        rx_packets: scale,
        tx_bytes: tx * scale,
        tx_packets: scale,
        state: 1,
        kind: kind.into(),
        default_route: route,
        ipv4: Some(FamilyCounters {
            rx_bytes: rx * scale / 2,
            tx_bytes: tx * scale / 2,
            ..FamilyCounters::default()
        }),
        ipv6: Some(FamilyCounters {
            rx_bytes: rx * scale / 4,
            tx_bytes: tx * scale / 4,
            ..FamilyCounters::default()
        }),
        ..InterfaceCounters::default()
    };
    HeartbeatRequest {
        interfaces: vec![
            entry("uplink0", 2, LinkKind::Veth, 100, 60, !route_on_port),
            entry("docker0", 3, LinkKind::ContainerBridge, 80, 40, false),
            entry("veth7", 7, LinkKind::Veth, 40, 80, route_on_port),
            entry("eth1", 4, LinkKind::Physical, 8, 4, false),
        ],
        ..fleet::heartbeat(epoch, sequence, 0, 0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counting_rule_picks_the_interfaces() {
    let Some(fleet) = Fleet::start("ingest_rules").await else {
        return;
    };
    let all = fleet.add_node("all").await;
    let uplink = fleet.add_node("uplink").await;
    fleet
        .set_node_settings(&uplink.id, r#""countRule" = 'uplink'"#)
        .await;
    let now = chrono::Utc::now().naive_utc();
    let jobs = [
        job(&all.token, host("e", 1, 4, false)),
        job(&uplink.token, host("e", 1, 4, false)),
    ];
    assert_eq!(apply(&fleet, &jobs, now).await, ["Applied", "Applied"]);
    // "all": every entry, from zero (a new epoch).
    assert_eq!(fleet.totals(&all.id).await.0, 4 * 228);
    assert_eq!(fleet.totals(&all.id).await.1, 4 * 184);
    // "uplink": uplink0 (default route) and eth1 (hardware).
    assert_eq!(fleet.totals(&uplink.id).await.0, 4 * 108);
    assert_eq!(fleet.totals(&uplink.id).await.1, 4 * 64);
    // The default route moves to veth7: from then on, veth7 counts.
    let jobs = [job(&uplink.token, host("e", 2, 6, true))];
    assert_eq!(apply(&fleet, &jobs, now).await, ["Applied"]);
    assert_eq!(fleet.totals(&uplink.id).await.0, 4 * 108 + 2 * (40 + 8));
    assert_eq!(fleet.totals(&uplink.id).await.1, 4 * 64 + 2 * (80 + 4));
    // Address families, counted by the same rule: v4 half, v6 a quarter.
    let row = sqlx::query(
        r#"SELECT "ipv4Download", "ipv4Upload", "ipv6Download", "ipv6Upload"
           FROM "nodes" WHERE "id" = $1"#,
    )
    .bind(&all.id)
    .fetch_one(&fleet.pool)
    .await
    .expect("families");
    let get = |c: &str| row.get::<i64, _>(c);
    assert_eq!(
        (
            get("ipv4Download"),
            get("ipv4Upload"),
            get("ipv6Download"),
            get("ipv6Upload")
        ),
        (2 * 228, 2 * 184, 228, 184)
    );
    // The interfaces' kinds and routes are kept.
    let kinds: Vec<(String, String, bool)> = sqlx::query(
        r#"SELECT "name", "kind", "defaultRoute" FROM "interface_stats"
           WHERE "nodeId" = $1 ORDER BY "name""#,
    )
    .bind(&all.id)
    .fetch_all(&fleet.pool)
    .await
    .expect("interfaces")
    .iter()
    .map(|r| (r.get("name"), r.get("kind"), r.get("defaultRoute")))
    .collect();
    assert_eq!(
        kinds,
        vec![
            ("docker0".into(), "container_bridge".into(), false),
            ("eth1".into(), "physical".into(), false),
            ("uplink0".into(), "veth".into(), true),
            ("veth7".into(), "veth".into(), false),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_too_large_for_its_interface_is_held() {
    let Some(fleet) = Fleet::start("ingest_anomaly").await else {
        return;
    };
    let node = fleet.add_node("n").await;
    // 1 MB/s per interface and direction.
    fleet
        .set_node_settings(&node.id, r#""maxRate" = 1000000"#)
        .await;
    let now = chrono::Utc::now().naive_utc();
    let second = 1_000_000_000u64;
    let beat = |seq, rx, tx| job(&node.token, fleet::heartbeat("e", seq, rx, tx));
    // Within an epoch the sequence is the node's boot clock: 10 s apart.
    assert_eq!(
        apply(&fleet, &[beat(10 * second, 2_000, 2_000)], now).await,
        ["Applied"]
    );
    // 10 s at 1 MB/s, plus a second of slack: at most 11 MB per
    // interface; eth0 and eth1 each get half of what is sent.
    let jobs = [beat(20 * second, 2_000 + 40_000_000, 2_000 + 2_000)];
    assert_eq!(apply(&fleet, &jobs, now).await, ["Applied"]);
    let (down, up, period_down, _) = fleet.totals(&node.id).await;
    // Both directions of a held entry are held.
    assert_eq!(
        (down, up, period_down),
        (2_000, 2_000, 2_000),
        "held, not counted"
    );
    let held: Vec<(String, i64, i64, i64, String)> = sqlx::query(
        r#"SELECT "interface", "download", "upload", "limitBytes", "status"
           FROM "anomalies" WHERE "nodeId" = $1 ORDER BY "interface""#,
    )
    .bind(&node.id)
    .fetch_all(&fleet.pool)
    .await
    .expect("anomalies")
    .iter()
    .map(|r| {
        (
            r.get("interface"),
            r.get("download"),
            r.get("upload"),
            r.get("limitBytes"),
            r.get("status"),
        )
    })
    .collect();
    assert_eq!(
        held,
        vec![
            ("eth0".into(), 20_000_000, 1_000, 11_000_000, "held".into()),
            ("eth1".into(), 20_000_000, 1_000, 11_000_000, "held".into()),
        ]
    );
    // The position moved on: the next ordinary delta counts as usual.
    let jobs = [beat(30 * second, 2_000 + 40_000_000 + 600, 4_000 + 60)];
    assert_eq!(apply(&fleet, &jobs, now).await, ["Applied"]);
    let (down, up, _, _) = fleet.totals(&node.id).await;
    assert_eq!((down, up), (2_600, 2_060));

    // Positions another collector did not keep up (an older version during
    // a rolling upgrade: zeroed here, and of an earlier sequence) are not
    // measured against: no false anomaly, the summed delta counts.
    sqlx::query(
        r#"UPDATE "nodes" SET "positions" = '{"e":[{"n":"eth0","i":2,"rx":0,"tx":0},
             {"n":"eth1","i":2,"rx":0,"tx":0}],"s":1}' WHERE "id" = $1"#,
    )
    .bind(&node.id)
    .execute(&fleet.pool)
    .await
    .expect("stale positions");
    let jobs = [beat(40 * second, 2_000 + 40_000_000 + 700, 4_000 + 70)];
    assert_eq!(apply(&fleet, &jobs, now).await, ["Applied"]);
    assert_eq!(fleet.totals(&node.id).await.0, 2_700);
    let held: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM "anomalies" WHERE "nodeId" = $1"#)
        .bind(&node.id)
        .fetch_one(&fleet.pool)
        .await
        .expect("count");
    assert_eq!(held, 2, "no new anomaly");
}

/// A period closed by a heartbeat batch is archived without its rates,
/// which need a month of history: they are computed after, outside the
/// batch's locks, and that history is kept until they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_periods_rates_are_computed_after_its_close() {
    let Some(fleet) = Fleet::start("ingest_rates_later").await else {
        return;
    };
    let node = fleet.add_node("n").await;
    fleet
        .set_node_settings(&node.id, r#""anchorDay" = 1"#)
        .await;
    let now = chrono::Utc::now().naive_utc();
    let start = now - chrono::Duration::days(45);
    set_period_start(&fleet, &node.id, start).await;
    // One busy 5-minute slot in the period: 1000 B/s up, at 40 days ago.
    let busy = (now - chrono::Duration::days(40))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("a minute");
    sqlx::query(
        r#"INSERT INTO "node_history"
             ("nodeId", "bucket", "upload", "download", "load1", "load5", "load15", "heartbeats")
           VALUES ($1, $2, 300000, 0, 0, 0, 0, 1)"#,
    )
    .bind(&node.id)
    .bind(busy)
    .execute(&fleet.pool)
    .await
    .expect("history");
    let beat = job(&node.token, fleet::heartbeat("e", 1, 10, 10));
    assert_eq!(apply(&fleet, &[beat], now).await, ["Applied"]);
    let rates = || async {
        sqlx::query_as::<_, (Option<i64>, Option<i64>)>(
            r#"SELECT "peakRate", "p95Rate" FROM "billing_periods"
               WHERE "nodeId" = $1 ORDER BY "start" LIMIT 1"#,
        )
        .bind(&node.id)
        .fetch_one(&fleet.pool)
        .await
        .expect("the archived period")
    };
    assert_eq!(
        rates().await,
        (None, None),
        "not read under the batch's locks"
    );
    // Retention does not take the history the rates still need.
    tally_collector::serve::prune_history(&fleet.pool, std::time::Duration::from_secs(86_400))
        .await
        .expect("prune");
    let kept: i64 =
        sqlx::query_scalar(r#"SELECT count(*) FROM "node_history" WHERE "bucket" = $1"#)
            .bind(busy)
            .fetch_one(&fleet.pool)
            .await
            .expect("count");
    assert_eq!(kept, 1, "the pending period's history is kept");
    let filled = tally_collector::billing::rates::fill_pending(&fleet.pool)
        .await
        .expect("fill");
    assert!(filled >= 1, "{filled}");
    assert_eq!(rates().await.0, Some(1000), "the peak of the busy slot");
    assert_eq!(
        tally_collector::billing::rates::fill_pending(&fleet.pool)
            .await
            .expect("fill again"),
        0,
        "each once"
    );
}

/// Billing settings this collector cannot use (here a time zone its time
/// zone database does not know, written by hand or by a newer collector)
/// refuse the node's heartbeats, transiently (UNAVAILABLE: the agent sends
/// its cumulative counters again), instead of counting them under the
/// default rule; other nodes of the batch are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_settings_refuse_the_heartbeats_until_fixed() {
    let Some(fleet) = Fleet::start("ingest_unusable_settings").await else {
        return;
    };
    let mars = fleet.add_node("mars").await;
    let earth = fleet.add_node("earth").await;
    fleet
        .set_node_settings(&mars.id, r#""anchorDay" = 1, "timeZone" = 'Mars/Olympus'"#)
        .await;
    let now = chrono::Utc::now().naive_utc();
    let mars_beat = || job(&mars.token, fleet::heartbeat("e", 1, 1_000, 100));
    let answers = apply(
        &fleet,
        &[
            mars_beat(),
            job(&earth.token, fleet::heartbeat("e", 1, 2_000, 200)),
        ],
        now,
    )
    .await;
    assert!(
        answers[0].contains("not accepting heartbeats now")
            && answers[0].contains("billing settings cannot be used"),
        "{answers:?}"
    );
    assert_eq!(answers[1], "Applied");
    assert_eq!(fleet.totals(&mars.id).await, (0, 0, 0, 0));
    assert_eq!(fleet.totals(&earth.id).await, (2_000, 200, 2_000, 200));

    // Fixed: the same counters count, in full.
    fleet
        .set_node_settings(&mars.id, r#""timeZone" = 'Europe/Berlin'"#)
        .await;
    assert_eq!(apply(&fleet, &[mars_beat()], now).await, ["Applied"]);
    assert_eq!(fleet.totals(&mars.id).await, (1_000, 100, 1_000, 100));
}
