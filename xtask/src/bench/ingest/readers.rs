//! Careless readers for `cargo xtask bench ingest --readers N`: clients of
//! the collector's HTTP side that loop on the most expensive requests (a
//! 366-day window ranking and a year of one node's history) over weeks of
//! minute history, asking again at once whatever `Retry-After` says (or,
//! with `--readers-honour-retry-after`, waiting as told). What they cost the
//! heartbeats is the receipt-to-commit latency under them against the same
//! run's latency without them.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use sqlx::PgPool;
use tally_collector::nodes;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::watch,
    task::JoinSet,
};

/// Nodes whose minute history the readers read.
pub const HISTORY_NODES: usize = 50;

/// What the readers were answered, by HTTP status (0: no answer).
pub type Statuses = BTreeMap<u16, u64>;

/// Enrols [`HISTORY_NODES`] nodes with `days` of minute history each (node
/// and one interface): their ids, and the rows written.
pub async fn seed_history(pool: &PgPool, days: u32) -> anyhow::Result<(Vec<String>, u64)> {
    let mut ids = Vec::with_capacity(HISTORY_NODES);
    for i in 0..HISTORY_NODES {
        let added = nodes::add(pool, &format!("bench-history-{i:02}"))
            .await
            .context("cannot enrol a history node")?;
        ids.push(added.id);
    }
    let minutes = i32::try_from(days.saturating_mul(1440)).unwrap_or(i32::MAX);
    let mut rows = 0;
    for (table, columns, values) in [
        (
            "node_history",
            r#""nodeId", "bucket", "upload", "download", "load1", "load5", "load15", "heartbeats""#,
            "m % 977, m % 1013, 0.5, 0.5, 0.5, 1",
        ),
        (
            "interface_history",
            r#""nodeId", "bucket", "name", "rxBytes", "txBytes""#,
            "'eth0', m % 977, m % 1013",
        ),
    ] {
        let sql = format!(
            r#"INSERT INTO "{table}" ({columns})
               SELECT n, date_trunc('minute', now()::timestamp) - make_interval(mins => m),
                      {values}
               FROM UNNEST($1::text[]) AS n, generate_series(1, $2) AS m"#
        );
        // Built from the constants above only.
        rows += sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&ids)
            .bind(minutes)
            .execute(pool)
            .await
            .with_context(|| format!("cannot write {table}"))?
            .rows_affected();
    }
    // Vacuumed now, not by autovacuum during the measurements.
    sqlx::query(r#"VACUUM (ANALYZE) "node_history", "interface_history""#)
        .execute(pool)
        .await
        .context("VACUUM failed")?;
    Ok((ids, rows))
}

/// Running readers; [`Readers::stop`] ends them.
pub struct Readers {
    stop: watch::Sender<bool>,
    running: JoinSet<Statuses>,
}

impl Readers {
    /// Starts `count` readers against the HTTP side at `address`.
    pub fn start(count: u32, address: SocketAddr, nodes: &[String], honour: bool) -> Readers {
        let (stop, stopped) = watch::channel(false);
        let mut running = JoinSet::new();
        for r in 0..count as usize {
            let node = nodes[r % nodes.len()].clone();
            let stopped = stopped.clone();
            running.spawn(read_in_a_loop(address, node, r, honour, stopped));
        }
        Readers { stop, running }
    }

    /// Stops the readers; their answers, by status.
    pub async fn stop(mut self) -> Statuses {
        self.stop.send_replace(true);
        let mut statuses = Statuses::new();
        while let Some(done) = self.running.join_next().await {
            for (status, count) in done.unwrap_or_default() {
                *statuses.entry(status).or_default() += count;
            }
        }
        statuses
    }
}

async fn read_in_a_loop(
    address: SocketAddr,
    node: String,
    turn: usize,
    honour: bool,
    mut stopped: watch::Receiver<bool>,
) -> Statuses {
    let now = chrono::Utc::now();
    let format =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let paths = [
        "/api/v1/rankings?by=window&window=366d&limit=1000".to_owned(),
        format!(
            "/api/v1/nodes/{node}/history?from={}&to={}&step=367m",
            format(now - chrono::Duration::days(366)),
            format(now)
        ),
    ];
    let mut statuses = Statuses::new();
    let mut turn = turn;
    while !*stopped.borrow() {
        let status = get_status(address, &paths[turn % 2]).await;
        turn += 1;
        *statuses.entry(status).or_default() += 1;
        if honour && status == 503 {
            let _ = tokio::time::timeout(Duration::from_secs(1), stopped.changed()).await;
        }
    }
    statuses
}

/// The status of `GET path` (one request per connection); 0 when there is
/// no answer.
async fn get_status(address: SocketAddr, path: &str) -> u16 {
    let Ok(mut stream) = TcpStream::connect(address).await else {
        return 0;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut answer = Vec::new();
    if stream.read_to_end(&mut answer).await.is_err() {
        return 0;
    }
    // "HTTP/1.1 200 OK"
    answer
        .get(9..12)
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}
