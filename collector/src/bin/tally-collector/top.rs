//! `tally-collector top`: the ranking, then every node's status, load and
//! traffic, read straight from the database through the read model
//! ([`tally_collector::views`]) the JSON API uses. Printed once, or with
//! `--watch` redrawn every interval until Ctrl-C (the screen is cleared
//! with ANSI codes only when stdout is a terminal).

use std::{
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    time::Duration,
};

use anyhow::Context as _;
use chrono::{NaiveDateTime, Utc};
use clap::{
    Args,
    builder::{PossibleValuesParser, TypedValueParser as _},
};
use sqlx::PgPool;
use tally_collector::{
    error::Error,
    views::{
        nodes::{self, Node},
        rankings::{self, By, Direction, Ranking},
    },
};

use tally_common::units::human_bytes;

use crate::durations::parse_interval;

/// Cursor home, then clear the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";
/// Longer names are cut (with `…`) to keep the tables readable.
const NAME_WIDTH: usize = 32;

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Redraw every --interval until Ctrl-C (default: print once and exit).
    #[arg(long)]
    pub watch: bool,

    /// How often --watch redraws (at least 1s), e.g. `2s` or `1m`.
    #[arg(long, default_value = "2s", value_parser = parse_interval, value_name = "DURATION")]
    pub interval: Duration,

    /// What to rank: the totals, the current period's counters, or the
    /// history of the last --window.
    #[arg(long, default_value = "total", value_parser = PossibleValuesParser::new(["total", "period", "window"]).try_map(|s| s.parse::<By>()))]
    pub by: By,

    /// Which direction to rank: upload (sent), download (received) or both
    /// together.
    #[arg(long, default_value = "both", value_parser = PossibleValuesParser::new(["upload", "download", "both"]).try_map(|s| s.parse::<Direction>()))]
    pub direction: Direction,

    /// How many nodes the ranking shows (1 to 1000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=i64::from(rankings::MAX_LIMIT)), value_name = "N")]
    pub limit: u32,

    /// With --by window: how far back history counts (1m to 366d), e.g.
    /// `24h` or `7days`.
    #[arg(long, default_value = "24h", value_parser = parse_window, value_name = "DURATION")]
    pub window: Duration,

    /// Show exact byte counts instead of KiB, MiB, GiB, …
    #[arg(long)]
    pub bytes: bool,

    /// A node not heard from for this long is shown offline; the same
    /// setting (and variable) as `serve --offline-after`.
    #[arg(
        long,
        env = "TALLY_OFFLINE_AFTER",
        default_value = "30s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub offline_after: Duration,
}

/// A window of history to rank by: from a minute to 366 days.
fn parse_window(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(rankings::MIN_WINDOW..=rankings::MAX_WINDOW).contains(&d) {
        return Err("must be from 1m to 366d".into());
    }
    Ok(d)
}

/// Prints the screen once, or (`--watch`) every interval until Ctrl-C.
pub async fn run(pool: &PgPool, args: &TopArgs) -> anyhow::Result<()> {
    let query = rankings::Query {
        by: args.by,
        direction: args.direction,
        limit: args.limit,
        window: args.window,
    };
    query.check()?;
    if !args.watch {
        let screen = screen(pool, args, &query).await?;
        return show(&screen, false, false);
    }
    let terminal = std::io::stdout().is_terminal();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let screen = tokio::select! {
            stopped = &mut stop => {
                stopped.context("cannot listen for Ctrl-C")?;
                break;
            }
            screen = screen(pool, args, &query) => match screen {
                Ok(screen) => screen,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the database; will retry");
                    format!(
                        "tally top · {}\n\ncannot read the database: {error}\nretrying every {}\n",
                        time(Utc::now().naive_utc()),
                        humantime::format_duration(args.interval)
                    )
                }
            },
        };
        show(&screen, terminal, true)?;
        tokio::select! {
            stopped = &mut stop => {
                stopped.context("cannot listen for Ctrl-C")?;
                break;
            }
            () = tokio::time::sleep(args.interval) => {}
        }
    }
    Ok(())
}

/// Writes one screen: over the previous one on a terminal, else after it
/// (separated by a blank line when watching). A closed pipe ends quietly.
fn show(screen: &str, terminal: bool, watching: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = (|| {
        if terminal {
            out.write_all(CLEAR.as_bytes())?;
        }
        out.write_all(screen.as_bytes())?;
        if watching && !terminal {
            out.write_all(b"\n")?;
        }
        out.flush()
    })();
    match written {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

/// Reads the fleet and renders it.
async fn screen(pool: &PgPool, args: &TopArgs, query: &rankings::Query) -> Result<String, Error> {
    let now = Utc::now().naive_utc();
    let ranking = rankings::rank(pool, query, now).await?;
    let nodes = nodes::list(pool).await?;
    Ok(render(args, now, &ranking, &nodes))
}

/// The screen: a header line, the ranking, the node table.
pub fn render(args: &TopArgs, now: NaiveDateTime, ranking: &Ranking, nodes: &[Node]) -> String {
    let bytes = |n: i128| {
        if args.bytes {
            n.to_string()
        } else {
            human_bytes(n)
        }
    };
    let online = nodes
        .iter()
        .filter(|n| n.online(now, args.offline_after))
        .count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tally top · {} · {} node{}, {online} online\n",
        time(now),
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" }
    );

    let what = match args.by {
        By::Total => "TOTAL".to_owned(),
        By::Period => "PERIOD".to_owned(),
        By::Window => format!(
            "THE LAST {}{}",
            humantime::format_duration(args.window),
            ranking
                .since
                .map(|since| format!(" (SINCE {})", time(since)))
                .unwrap_or_default()
        ),
    };
    let direction = match args.direction {
        Direction::Upload => "UPLOAD",
        Direction::Download => "DOWNLOAD",
        Direction::Both => "UPLOAD + DOWNLOAD",
    };
    let _ = writeln!(out, "TOP {} BY {what}, {direction}", args.limit);
    let mut headers = vec!["RANK", "NAME", "UPLOAD", "DOWNLOAD"];
    if args.direction == Direction::Both {
        headers.push("BOTH");
    }
    let rows: Vec<Vec<String>> = ranking
        .nodes
        .iter()
        .map(|r| {
            let mut row = vec![
                r.rank.to_string(),
                short(&r.name),
                bytes(r.upload.into()),
                bytes(r.download.into()),
            ];
            if args.direction == Direction::Both {
                row.push(bytes(r.value));
            }
            row
        })
        .collect();
    out.push_str(&table(&headers, &[false, true], &rows));

    let _ = writeln!(out, "\nNODES");
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let status = match n.last_seen {
                // Heard from, but nothing it sends is counted.
                _ if n.stale.flagged() => "STALE",
                None => "never",
                Some(_) if n.online(now, args.offline_after) => "online",
                Some(_) => "offline",
            };
            let load = n.load.map_or_else(
                || "-".to_owned(),
                |l| format!("{:.2} {:.2} {:.2}", l.one, l.five, l.fifteen),
            );
            vec![
                short(&n.name),
                status.to_owned(),
                load,
                bytes(n.traffic.total_upload.into()),
                bytes(n.traffic.total_download.into()),
                bytes(n.traffic.period_upload.into()),
                bytes(n.traffic.period_download.into()),
                n.last_seen
                    .map_or_else(|| "never".to_owned(), |seen| ago(seen, now)),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NAME",
            "STATUS",
            "LOAD 1/5/15",
            "TOTAL UP",
            "TOTAL DOWN",
            "PERIOD UP",
            "PERIOD DOWN",
            "LAST SEEN",
        ],
        &[true, true, true],
        &rows,
    ));
    out
}

/// `2026-11-25 10:00:00 UTC`.
fn time(t: NaiveDateTime) -> String {
    format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S"))
}

/// `5s ago`, `3m ago`, `2h ago`, `4d ago`.
fn ago(seen: NaiveDateTime, now: NaiveDateTime) -> String {
    let s = now.signed_duration_since(seen).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// `name`, cut to [`NAME_WIDTH`] characters.
fn short(name: &str) -> String {
    if name.chars().count() <= NAME_WIDTH {
        name.to_owned()
    } else {
        let mut cut: String = name.chars().take(NAME_WIDTH - 1).collect();
        cut.push('…');
        cut
    }
}

/// Columns two spaces apart; the first `left.len()` columns are aligned
/// left where `left[i]`, the others right.
fn table(headers: &[&str], left: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
            if left.get(i).copied().unwrap_or(false) {
                text.push_str(cell);
                text.push_str(&pad);
            } else {
                text.push_str(&pad);
                text.push_str(cell);
            }
        }
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tally_collector::views::{
        nodes::{Load, TrafficStats},
        rankings::Ranked,
    };

    use super::*;

    #[test]
    fn ages_and_names() {
        let now = NaiveDateTime::parse_from_str("2026-11-25 10:00:00", "%Y-%m-%d %H:%M:%S")
            .expect("time");
        let before = |s: i64| now - chrono::Duration::seconds(s);
        assert_eq!(ago(before(5), now), "5s ago");
        assert_eq!(ago(before(-5), now), "0s ago", "a clock ahead");
        assert_eq!(ago(before(150), now), "2m ago");
        assert_eq!(ago(before(7300), now), "2h ago");
        assert_eq!(ago(before(3 * 86_400), now), "3d ago");
        assert_eq!(short("web-1"), "web-1");
        let long = "n".repeat(40);
        assert_eq!(short(&long).chars().count(), NAME_WIDTH);
        assert!(short(&long).ends_with('…'));
    }

    fn args(bytes: bool, direction: Direction) -> TopArgs {
        TopArgs {
            watch: false,
            interval: Duration::from_secs(2),
            by: By::Total,
            direction,
            limit: 10,
            window: Duration::from_secs(86_400),
            bytes,
            offline_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn renders_the_ranking_then_the_nodes() {
        let now = NaiveDateTime::parse_from_str("2026-11-25 10:00:00", "%Y-%m-%d %H:%M:%S")
            .expect("time");
        let node = |name: &str, up: i64, seen: Option<i64>| Node {
            id: format!("id-{name}"),
            name: name.into(),
            hostname: None,
            last_seen: seen.map(|s| now - chrono::Duration::seconds(s)),
            load: seen.map(|_| Load {
                one: 0.5,
                five: 0.25,
                fifteen: 0.125,
            }),
            kernel: None,
            agent_version: None,
            source: None,
            traffic: TrafficStats {
                total_upload: up,
                total_download: 2048,
                period_upload: 0,
                period_download: 1,
                period_start: now,
                updated_at: now,
            },
            families: Default::default(),
            count_rule: tally_collector::billing::CountRule::All,
            quota_crossed: None,
            counter_set: None,
            clock_offset_ms: None,
            stale: Default::default(),
        };
        let mut stale = node("c", 0, Some(120));
        stale.stale.run = 3;
        let nodes = [node("a", 1536, Some(3)), node("b", 3 << 30, None), stale];
        let ranking = Ranking {
            since: None,
            nodes: vec![Ranked {
                rank: 1,
                id: "id-b".into(),
                name: "b".into(),
                upload: 3 << 30,
                download: 2048,
                value: (3 << 30) + 2048,
            }],
        };
        let text = render(&args(false, Direction::Both), now, &ranking, &nodes);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "tally top · 2026-11-25 10:00:00 UTC · 3 nodes, 1 online",
                "",
                "TOP 10 BY TOTAL, UPLOAD + DOWNLOAD",
                "RANK  NAME   UPLOAD  DOWNLOAD     BOTH",
                "   1  b     3.0 GiB   2.0 KiB  3.0 GiB",
                "",
                "NODES",
                "NAME  STATUS  LOAD 1/5/15     TOTAL UP  TOTAL DOWN  PERIOD UP  PERIOD DOWN  LAST SEEN",
                "a     online  0.50 0.25 0.12   1.5 KiB     2.0 KiB        0 B          1 B     3s ago",
                "b     never   -                3.0 GiB     2.0 KiB        0 B          1 B      never",
                "c     STALE   0.50 0.25 0.12       0 B     2.0 KiB        0 B          1 B     2m ago",
            ]
        );
        let text = render(&args(true, Direction::Upload), now, &ranking, &nodes);
        assert!(
            text.contains("TOP 10 BY TOTAL, UPLOAD\nRANK  NAME      UPLOAD  DOWNLOAD\n"),
            "{text}"
        );
        assert!(
            text.contains("   1  b     3221225472      2048\n"),
            "{text}"
        );
    }
}
