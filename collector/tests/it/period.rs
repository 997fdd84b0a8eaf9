//! Period counters: scheduled resets are applied once, whether by a
//! heartbeat batch or by the sweep for quiet nodes, however many collectors
//! race to apply them; manual resets from the command line.

use crate::common;

use std::process::Command;

use chrono::{Datelike as _, NaiveDate, NaiveDateTime, Utc};
use common::fleet::{self, Fleet};
use tally_collector::{
    auth, db,
    ingest::{BatchTime, Job, store},
    period, validate,
};

/// The collector's `--period-reset monthly:1` in these tests.
const DAY: Option<u32> = Some(1);

/// The start of this month (UTC): where periods anchored on day 1 began.
fn boundary() -> NaiveDateTime {
    let now = Utc::now().date_naive();
    NaiveDate::from_ymd_opt(now.year(), now.month(), 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("date")
}

/// Moves the node's period back into the previous month.
async fn age_period(fleet: &Fleet, node: &str) {
    sqlx::query(
        r#"UPDATE "traffic_stats" SET "periodStart" = $2,
             "periodUpload" = 5, "periodDownload" = 5 WHERE "nodeId" = $1"#,
    )
    .bind(node)
    .bind(boundary() - chrono::Duration::days(20))
    .execute(&fleet.pool)
    .await
    .expect("age the period");
}

async fn period_start(fleet: &Fleet, node: &str) -> NaiveDateTime {
    sqlx::query_scalar(r#"SELECT "periodStart" FROM "traffic_stats" WHERE "nodeId" = $1"#)
        .bind(node)
        .fetch_one(&fleet.pool)
        .await
        .expect("periodStart")
}

fn job(token: &str, sequence: u64, rx: u64, tx: u64) -> Job {
    let request = fleet::heartbeat("e", sequence, rx, tx);
    Job {
        credentials: auth::from_bearer(Some(&format!("Bearer {token}"))).expect("token"),
        heartbeat: validate::heartbeat(request, i64::MAX / 2).expect("valid"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_reset_is_applied_once_by_racing_collectors() {
    let Some(fleet) = Fleet::start("period_schedule").await else {
        return;
    };
    let node = fleet.add_node("p").await;
    // One heartbeat before the period ends...
    let mut conn = fleet.pool.acquire().await.expect("connection");
    let before = BatchTime::new(Utc::now().naive_utc(), None);
    store::apply(&mut conn, &[job(&node.token, 1, 1000, 100)], before)
        .await
        .expect("commit");
    drop(conn);
    age_period(&fleet, &node.id).await;

    // ...then many, after the boundary, from two "collectors" (two pools)
    // at once, in batches: the first to lock the row resets the period,
    // the others see it reset.
    let other = db::connect(&fleet.url, 4).await.expect("second pool");
    let time = BatchTime::new(Utc::now().naive_utc(), DAY);
    let mut tasks = Vec::new();
    for k in 0..40u64 {
        let pool = if k % 2 == 0 {
            fleet.pool.clone()
        } else {
            other.clone()
        };
        let jobs = vec![job(&node.token, 2 + k, 1000 + (k + 1) * 10, 100 + (k + 1))];
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.expect("connection");
            store::apply(&mut conn, &jobs, time).await.expect("commit")
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let (down, up, period_down, period_up) = fleet.totals(&node.id).await;
    assert_eq!((down, up), (1400, 140));
    // Everything after the boundary is in the new period: one reset only.
    assert_eq!((period_down, period_up), (400, 40));
    assert_eq!(period_start(&fleet, &node.id).await, boundary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_resets_quiet_nodes_once() {
    let Some(fleet) = Fleet::start("period_sweep").await else {
        return;
    };
    let mut ids = Vec::new();
    for i in 0..20 {
        let node = fleet.add_node(&format!("q{i}")).await;
        age_period(&fleet, &node.id).await;
        ids.push(node.id);
    }
    // A node whose period started after the boundary is left alone.
    let fresh = fleet.add_node("fresh").await;
    let other = db::connect(&fleet.url, 4).await.expect("second pool");
    let (a, b) = tokio::join!(period::sweep(&fleet.pool, DAY), period::sweep(&other, DAY));
    let reset = a.expect("sweep a") + b.expect("sweep b");
    assert_eq!(reset, 20, "each quiet node reset exactly once");
    for id in &ids {
        assert_eq!(fleet.totals(id).await.2, 0);
        assert_eq!(period_start(&fleet, id).await, boundary());
    }
    assert!(period_start(&fleet, &fresh.id).await > boundary());
    let again = period::sweep(&fleet.pool, DAY).await.expect("sweep");
    assert_eq!(again, 0, "nothing to reset twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn period_reset_from_the_command_line() {
    let Some(fleet) = Fleet::start("period_cli").await else {
        return;
    };
    let a = fleet.add_node("a").await;
    let b = fleet.add_node("b").await;
    for node in [&a, &b] {
        age_period(&fleet, &node.id).await;
    }
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tally-collector"))
            .args(args)
            .env("DATABASE_URL", &fleet.url)
            .output()
            .expect("run tally-collector")
    };
    let out = run(&["period", "reset", "a"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "period reset for 1 node(s)"
    );
    assert_eq!(fleet.totals(&a.id).await.2, 0);
    assert_eq!(fleet.totals(&b.id).await.2, 5, "b untouched");

    let out = run(&["period", "reset", "--all"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fleet.totals(&b.id).await.2, 0);

    let out = run(&["period", "reset", "nosuchnode"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no node \"nosuchnode\""),
        "{out:?}"
    );
    let out = run(&["period", "reset"]);
    assert!(!out.status.success(), "a node or --all is required");
}
