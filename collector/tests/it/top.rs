//! `tally-collector top` against a real database: the ranking then the node
//! table, in order, with human and exact byte counts; options; refusals;
//! `--watch` redrawing until Ctrl-C (no ANSI codes when stdout is not a
//! terminal).

use crate::common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::fleet::Fleet;
use sqlx::PgPool;

fn top(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-collector"))
        .arg("top")
        .args(args)
        .env("DATABASE_URL", url)
        .env("NO_COLOR", "1")
        .output()
        .expect("run tally-collector top")
}

fn lines(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout.clone()).expect("UTF-8");
    assert!(!text.contains('\x1b'), "no ANSI codes without a terminal");
    text.lines().map(str::to_owned).collect()
}

/// The words of the line after the one starting with `title`, and of the
/// lines after it up to a blank line.
fn section(lines: &[String], title: &str) -> Vec<Vec<String>> {
    let start = lines
        .iter()
        .position(|l| l.starts_with(title))
        .unwrap_or_else(|| panic!("no {title} in {lines:#?}"));
    lines[start + 2..]
        .iter()
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

async fn set(pool: &PgPool, node: &str, total: (i64, i64), period: (i64, i64)) {
    sqlx::query(
        r#"UPDATE "traffic_stats" SET "totalUpload" = $1, "totalDownload" = $2,
             "periodUpload" = $3, "periodDownload" = $4 WHERE "nodeId" = $5"#,
    )
    .bind(total.0)
    .bind(total.1)
    .bind(period.0)
    .bind(period.1)
    .bind(node)
    .execute(pool)
    .await
    .expect("traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_prints_the_ranking_then_the_nodes() {
    let Some(fleet) = Fleet::start("top_once").await else {
        return;
    };
    let pool = &fleet.pool;
    let web = fleet.add_node("web").await;
    let db = fleet.add_node("db").await;
    let idle = fleet.add_node("idle").await;
    set(pool, &web.id, (1536, 3 << 30), (512, 1024)).await;
    set(pool, &db.id, (5 << 40, 0), (0, 0)).await;
    set(pool, &idle.id, (0, 0), (0, 0)).await;
    sqlx::query(
        r#"UPDATE "nodes" SET "lastSeen" = now() AT TIME ZONE 'UTC', "load1" = 1.5,
             "load5" = 0.75, "load15" = 0.25 WHERE "id" = $1"#,
    )
    .bind(&web.id)
    .execute(pool)
    .await
    .expect("seen");
    sqlx::query(
        r#"INSERT INTO "node_history"
             ("nodeId", "bucket", "upload", "download", "load1", "load5", "load15", "heartbeats")
           VALUES ($1, date_trunc('minute', now() AT TIME ZONE 'UTC') - interval '5 minutes',
                   2048, 0, 0, 0, 0, 1)"#,
    )
    .bind(&idle.id)
    .execute(pool)
    .await
    .expect("history");

    let out = lines(&top(&fleet.url, &[]));
    assert!(
        out[0].starts_with("tally top · ") && out[0].ends_with(" · 3 nodes, 1 online"),
        "{out:#?}"
    );
    let ranking_at = out
        .iter()
        .position(|l| l.starts_with("TOP 10 BY TOTAL, UPLOAD + DOWNLOAD"));
    let nodes_at = out.iter().position(|l| l == "NODES");
    assert!(ranking_at.is_some() && ranking_at < nodes_at, "{out:#?}");
    assert_eq!(
        section(&out, "TOP"),
        [
            ["1", "db", "5.0", "TiB", "0", "B", "5.0", "TiB"],
            ["2", "web", "1.5", "KiB", "3.0", "GiB", "3.0", "GiB"],
            ["3", "idle", "0", "B", "0", "B", "0", "B"],
        ]
    );
    let nodes = section(&out, "NODES");
    let names: Vec<&str> = nodes.iter().map(|n| n[0].as_str()).collect();
    assert_eq!(names, ["db", "idle", "web"], "by name");
    assert_eq!(nodes[0][1..3], ["never", "-"]);
    assert_eq!(
        nodes[2][1..],
        [
            "online", "1.50", "0.75", "0.25", "1.5", "KiB", "3.0", "GiB", "512", "B", "1.0", "KiB",
            "0s", "ago"
        ]
    );

    // Exact bytes, another ranking.
    let out = lines(&top(
        &fleet.url,
        &[
            "--bytes",
            "--by",
            "period",
            "--direction",
            "download",
            "--limit",
            "2",
        ],
    ));
    assert!(
        out.iter().any(|l| l == "TOP 2 BY PERIOD, DOWNLOAD"),
        "{out:#?}"
    );
    assert_eq!(
        section(&out, "TOP"),
        [["1", "web", "512", "1024"], ["2", "db", "0", "0"]]
    );
    assert_eq!(
        section(&out, "NODES")[2][5..9],
        ["1536", "3221225472", "512", "1024"]
    );
    let out = lines(&top(
        &fleet.url,
        &[
            "--by",
            "window",
            "--window",
            "1h",
            "--direction",
            "upload",
            "--bytes",
        ],
    ));
    let title = out.iter().find(|l| l.starts_with("TOP")).expect("title");
    assert!(
        title.starts_with("TOP 10 BY THE LAST 1h (SINCE ") && title.ends_with(" UTC), UPLOAD"),
        "{title}"
    );
    assert_eq!(section(&out, "TOP")[0], ["1", "idle", "2048", "0"]);

    // Refusals.
    for args in [
        &["--by", "bogus"][..],
        &["--limit", "0"],
        &["--window", "10s"],
        &["--interval", "0s"],
    ] {
        let out = top(&fleet.url, args);
        assert!(!out.status.success(), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_watch_redraws_until_ctrl_c() {
    let Some(fleet) = Fleet::start("top_watch").await else {
        return;
    };
    let node = fleet.add_node("web").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally-collector"))
        .args(["top", "--watch", "--interval", "1s", "--bytes"])
        .env("DATABASE_URL", &fleet.url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start top --watch");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut frames = 0;
    while frames < 3 {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("three screens within 30 s: {seen:#?}"));
        if line.starts_with("tally top · ") {
            frames += 1;
            if frames == 2 {
                // The next screen shows what changed in between.
                set(&fleet.pool, &node.id, (777, 0), (0, 0)).await;
            }
        }
        seen.push(line);
    }
    // SAFETY: kill(2) with the child's pid and SIGINT only sends a signal.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0);
    let status = child.wait().expect("wait");
    assert!(status.success(), "Ctrl-C ends top quietly: {status:?}");
    // The rest of the output, up to the end of the pipe.
    seen.extend(lines_rx.iter());
    let changed = seen
        .iter()
        .any(|l| words(l) == ["1", "web", "777", "0", "777"]);
    assert!(changed, "the change shows: {seen:#?}");
    assert!(seen.iter().all(|l| !l.contains('\x1b')), "{seen:#?}");
    let blank_then_header = seen
        .windows(2)
        .filter(|w| w[0].is_empty() && w[1].starts_with("tally top · "))
        .count();
    assert!(
        blank_then_header >= 2,
        "screens one after the other: {seen:#?}"
    );
}
