//! What is watched while the collector runs: its committed batches (from
//! its own "batch committed" debug event) and each heartbeat's time from
//! receipt to answer (from its "heartbeat answered" trace event), both
//! taken by tracing layers: no hook in the collector is needed; the CPU the
//! machine and this process use, and, when asked for, pg_stat_statements.

use std::{
    fmt, fs,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use sqlx::{PgPool, Row as _};
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::filter_fn,
    layer::{Context, SubscriberExt as _},
    util::SubscriberInitExt as _,
};

/// Where the collector's "batch committed" event comes from.
const INGEST_TARGET: &str = "tally_collector::ingest";

/// Batches committed so far, as the collector's writers logged them.
#[derive(Debug, Default)]
pub(super) struct Batches {
    count: AtomicU64,
    heartbeats: AtomicU64,
    elapsed_ms: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BatchCount {
    pub(super) count: u64,
    pub(super) heartbeats: u64,
    /// The writers' time per batch (acquire, statements, commit), each
    /// truncated to the millisecond by the event.
    pub(super) elapsed_ms: u64,
}

impl Batches {
    pub(super) fn snapshot(&self) -> BatchCount {
        BatchCount {
            count: self.count.load(Ordering::Relaxed),
            heartbeats: self.heartbeats.load(Ordering::Relaxed),
            elapsed_ms: self.elapsed_ms.load(Ordering::Relaxed),
        }
    }
}

impl BatchCount {
    pub(super) fn since(&self, earlier: &BatchCount) -> BatchCount {
        BatchCount {
            count: self.count - earlier.count,
            heartbeats: self.heartbeats - earlier.heartbeats,
            elapsed_ms: self.elapsed_ms - earlier.elapsed_ms,
        }
    }
}

/// Counts the collector's "batch committed" events.
struct BatchLayer(Arc<Batches>);

impl<S: Subscriber> Layer<S> for BatchLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = BatchFields::default();
        event.record(&mut fields);
        if fields.committed {
            let b = &self.0;
            b.count.fetch_add(1, Ordering::Relaxed);
            b.heartbeats.fetch_add(fields.heartbeats, Ordering::Relaxed);
            b.elapsed_ms.fetch_add(fields.elapsed_ms, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct BatchFields {
    committed: bool,
    heartbeats: u64,
    elapsed_ms: u64,
}

impl Visit for BatchFields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "heartbeats" => self.heartbeats = value,
            "elapsed_ms" => self.elapsed_ms = value,
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.committed = value == "batch committed";
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.committed = format!("{value:?}") == "batch committed";
        }
    }
}

/// Each heartbeat's time from receipt to answer, in microseconds, as the
/// collector's writers logged them ("heartbeat answered").
#[derive(Debug, Default)]
pub(super) struct Latencies {
    micros: Mutex<Vec<u32>>,
}

impl Latencies {
    /// Takes the latencies logged so far.
    pub(super) fn take(&self) -> Vec<u32> {
        self.micros
            .lock()
            .map(|mut log| std::mem::take(&mut *log))
            .unwrap_or_default()
    }
}

/// Keeps the latencies of the collector's "heartbeat answered" events.
struct LatencyLayer(Arc<Latencies>);

impl<S: Subscriber> Layer<S> for LatencyLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut latency = LatencyField(None);
        event.record(&mut latency);
        if let (Some(micros), Ok(mut log)) = (latency.0, self.0.micros.lock()) {
            log.push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }
}

struct LatencyField(Option<u64>);

impl Visit for LatencyField {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "latency_us" {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
}

/// Logs to stderr as `filter` says, and counts the collector's batches and
/// keeps its heartbeats' latencies (whatever the filter).
pub(super) fn install_logging(filter: &str) -> anyhow::Result<(Arc<Batches>, Arc<Latencies>)> {
    let batches = Arc::new(Batches::default());
    let counting = BatchLayer(batches.clone()).with_filter(filter_fn(|meta| {
        meta.target() == INGEST_TARGET && *meta.level() == Level::DEBUG
    }));
    let latencies = Arc::new(Latencies::default());
    let timing = LatencyLayer(latencies.clone()).with_filter(filter_fn(|meta| {
        meta.target() == INGEST_TARGET && *meta.level() == Level::TRACE
    }));
    let filter = EnvFilter::try_new(filter).with_context(|| format!("bad --log {filter:?}"))?;
    let logging = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(counting)
        .with(timing)
        .with(logging)
        .try_init()
        .context("cannot install the log subscriber")?;
    Ok((batches, latencies))
}

/// The thread name of the collector's runtime (at most 15 bytes: the
/// kernel's `comm`).
pub(super) const COLLECTOR_THREADS: &str = "bench-collector";
/// The thread name of the simulated agents' runtime.
pub(super) const AGENT_THREADS: &str = "bench-agents";

/// CPU time at one instant, in clock ticks: the machine's (all CPUs), this
/// process's, its agent threads', the cluster's server processes' and the
/// waited-for children's (pgbench).
pub(super) struct CpuSample {
    at: Instant,
    busy: u64,
    iowait: u64,
    process: u64,
    agents: u64,
    postgres: u64,
    children: u64,
}

/// CPU use over an interval, in CPUs (1.0 = one CPU busy all the time).
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuUse {
    /// All CPUs of the machine, whoever used them.
    pub(super) machine: f64,
    pub(super) iowait: f64,
    /// This process but its agent threads: the collector.
    pub(super) collector: f64,
    pub(super) agents: f64,
    /// The cluster's postmaster and its children (backends, WAL writer,
    /// checkpointer, autovacuum...).
    pub(super) postgres: f64,
    /// Children of this process that ended in the interval (pgbench).
    pub(super) pgbench: f64,
}

impl CpuUse {
    /// What the processes above do not explain: other work on the machine.
    pub(super) fn other(&self) -> f64 {
        (self.machine - self.collector - self.agents - self.postgres - self.pgbench).max(0.0)
    }
}

impl CpuSample {
    /// `postmaster`: the cluster's server process.
    pub(super) fn now(postmaster: Option<i32>) -> Self {
        let (busy, iowait) = machine_ticks().unwrap_or_default();
        Self {
            at: Instant::now(),
            busy,
            iowait,
            process: stat_ticks("/proc/self/stat", false).unwrap_or_default(),
            agents: thread_ticks(AGENT_THREADS),
            postgres: postmaster.map_or(0, tree_ticks),
            children: children_ticks(),
        }
    }

    pub(super) fn since(&self, earlier: &CpuSample) -> CpuUse {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let wall = self
            .at
            .duration_since(earlier.at)
            .max(Duration::from_millis(1))
            .as_secs_f64();
        let cpus = |now: u64, then: u64| now.saturating_sub(then) as f64 / hz / wall;
        let agents = cpus(self.agents, earlier.agents);
        CpuUse {
            machine: cpus(self.busy, earlier.busy),
            iowait: cpus(self.iowait, earlier.iowait),
            collector: (cpus(self.process, earlier.process) - agents).max(0.0),
            agents,
            postgres: cpus(self.postgres, earlier.postgres),
            pgbench: cpus(self.children, earlier.children),
        }
    }
}

/// Busy and iowait ticks of all CPUs (the `cpu` line of /proc/stat: user
/// nice system idle iowait irq softirq steal ...).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let [user, nice, system, _idle, iowait, irq, softirq, steal] = v[..] else {
        return None;
    };
    Some((user + nice + system + irq + softirq + steal, iowait))
}

/// The fields of a `stat` file after the command name (field 3, the state,
/// has index 0), and the command name.
fn stat_fields(path: &str) -> Option<(String, Vec<u64>)> {
    let stat = fs::read_to_string(path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields = stat[close + 1..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Some((comm, fields))
}

/// utime + stime of a `stat` file (fields 14 and 15), plus cutime + cstime
/// (16 and 17: its children that were waited for) if `with_children`.
fn stat_ticks(path: &str, with_children: bool) -> Option<u64> {
    let (_, f) = stat_fields(path)?;
    let own = f.get(11)? + f.get(12)?;
    Some(if with_children {
        own + f.get(13)? + f.get(14)?
    } else {
        own
    })
}

/// utime + stime of this process's threads named `name`.
fn thread_ticks(name: &str) -> u64 {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| {
            let path = format!("{}/stat", task.ok()?.path().display());
            let (comm, f) = stat_fields(&path)?;
            (comm == name).then(|| f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0))
        })
        .sum()
}

/// The CPU time of `pid` and its children, living or waited for (the
/// postmaster reaps the backends that end).
fn tree_ticks(pid: i32) -> u64 {
    let own = stat_ticks(&format!("/proc/{pid}/stat"), true).unwrap_or(0);
    let children: u64 = children_of(pid)
        .iter()
        .filter_map(|child| stat_ticks(&format!("/proc/{child}/stat"), false))
        .sum();
    own + children
}

/// The processes whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // After the command name: the state, then the parent.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Whether a child of the postmaster is a client backend (its command line
/// names the Unix socket, `[local]`) or has ended and waits to be reaped:
/// while one is, a CPU sample could miss its time or count it twice.
fn has_passing_children(postmaster: i32) -> bool {
    children_of(postmaster).iter().any(|child| {
        let zombie = fs::read_to_string(format!("/proc/{child}/stat"))
            .ok()
            .and_then(|stat| {
                let rest = stat.get(stat.rfind(')')? + 1..)?;
                rest.split_whitespace().next().map(|state| state == "Z")
            })
            .unwrap_or(false);
        let client = fs::read(format!("/proc/{child}/cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("[local]"));
        zombie || client
    })
}

/// Waits (at most 2 s) until the cluster has no client connection left and
/// every backend that ended was reaped, so that a CPU sample taken then
/// counts each backend's time exactly once.
pub(super) async fn settle(postmaster: Option<i32>) {
    let Some(pid) = postmaster else { return };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && has_passing_children(pid) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// CPU time of this process's children that were waited for, in ticks.
fn children_ticks() -> u64 {
    // SAFETY: `usage` is plain old data, written by getrusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (micros(usage.ru_utime) + micros(usage.ru_stime)) * hz / 1_000_000
}

/// The cluster's postmaster, from the first line of `postmaster.pid`.
pub(super) fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// pg_stat_statements and the table statistics of the tally database.
pub(super) struct Statements {
    pool: PgPool,
    /// The tables' write counters when the window started.
    tables_before: Vec<TableWrites>,
}

/// One statement's cost in the measured window.
pub(super) struct StatementCost {
    pub(super) statement: String,
    pub(super) calls: i64,
    pub(super) total_ms: f64,
    pub(super) rows: i64,
    pub(super) wal_bytes: f64,
}

/// A table's row writes (pg_stat_user_tables).
#[derive(Debug, Clone)]
pub(super) struct TableWrites {
    pub(super) table: String,
    pub(super) inserted: i64,
    pub(super) updated: i64,
    /// Updates that needed no index change (heap-only tuples).
    pub(super) hot_updated: i64,
    pub(super) deleted: i64,
}

/// What the statistics say of the measured window.
pub(super) struct StatementReport {
    pub(super) statements: Vec<StatementCost>,
    pub(super) tables: Vec<TableWrites>,
}

impl Statements {
    pub(super) async fn enable(pool: &PgPool) -> anyhow::Result<Self> {
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(pool)
            .await
            .context("cannot create the pg_stat_statements extension")?;
        Ok(Self {
            pool: pool.clone(),
            tables_before: Vec::new(),
        })
    }

    /// Starts the window.
    pub(super) async fn reset(&mut self) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&self.pool)
            .await
            .context("cannot reset pg_stat_statements")?;
        self.tables_before = self.tables().await?;
        Ok(())
    }

    /// The statements of the tally database, costliest first, and the
    /// tables' writes, since [`reset`](Self::reset).
    pub(super) async fn read(&self) -> anyhow::Result<StatementReport> {
        let rows = sqlx::query(
            r#"SELECT query, calls, total_exec_time, rows, wal_bytes::float8 AS wal_bytes
               FROM pg_stat_statements
               WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND query NOT LIKE '%pg_stat%'
               ORDER BY total_exec_time DESC
               LIMIT 10"#,
        )
        .fetch_all(&self.pool)
        .await
        .context("cannot read pg_stat_statements")?;
        let statements = rows
            .iter()
            .map(|row| {
                Ok(StatementCost {
                    statement: label(&row.try_get::<String, _>("query")?),
                    calls: row.try_get("calls")?,
                    total_ms: row.try_get("total_exec_time")?,
                    rows: row.try_get("rows")?,
                    wal_bytes: row.try_get("wal_bytes")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("unexpected pg_stat_statements row")?;
        let tables = self
            .tables()
            .await?
            .into_iter()
            .map(|now| {
                let before = self.tables_before.iter().find(|t| t.table == now.table);
                let base = |f: fn(&TableWrites) -> i64| before.map_or(0, f);
                TableWrites {
                    inserted: now.inserted - base(|t| t.inserted),
                    updated: now.updated - base(|t| t.updated),
                    hot_updated: now.hot_updated - base(|t| t.hot_updated),
                    deleted: now.deleted - base(|t| t.deleted),
                    table: now.table,
                }
            })
            .collect();
        Ok(StatementReport { statements, tables })
    }

    async fn tables(&self) -> anyhow::Result<Vec<TableWrites>> {
        // Pending statistics reach the shared ones at most once a second.
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&self.pool)
            .await
            .context("cannot flush the statistics")?;
        let rows = sqlx::query(
            r#"SELECT relname::text AS t, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del
               FROM pg_stat_user_tables
               WHERE relname IN ('nodes', 'traffic_stats', 'node_history', 'interface_stats')
               ORDER BY relname"#,
        )
        .fetch_all(&self.pool)
        .await
        .context("cannot read pg_stat_user_tables")?;
        rows.iter()
            .map(|row| {
                Ok(TableWrites {
                    table: row.try_get("t")?,
                    inserted: row.try_get("n_tup_ins")?,
                    updated: row.try_get("n_tup_upd")?,
                    hot_updated: row.try_get("n_tup_hot_upd")?,
                    deleted: row.try_get("n_tup_del")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("unexpected pg_stat_user_tables row")
    }
}

/// A statement's text on one short line.
fn label(query: &str) -> String {
    let words: Vec<&str> = query.split_whitespace().collect();
    let mut text = words.join(" ");
    if text.starts_with("SELECT") && text.contains("FOR UPDATE") {
        text = "SELECT nodes JOIN traffic_stats ... FOR UPDATE".to_owned();
    }
    if text.chars().count() > 46 {
        text = text.chars().take(43).collect::<String>() + "...";
    }
    text
}
