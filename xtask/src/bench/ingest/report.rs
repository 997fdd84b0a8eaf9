//! The report: the machine and the server, the pgbench baseline, the
//! collector's figures, the accounting check and the verdicts.

use std::{fmt::Write as _, fs, thread, time::Duration};

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection, Row as _};

use super::{
    IngestArgs,
    agents::{Counts, INTERFACES},
    check::Check,
    observe::{BatchCount, CpuUse, StatementReport},
    pgbench::{PgbenchRun, THREADS},
};

/// Target: heartbeats applied per second against pgbench's simple-update TPS.
const RATIO_TARGET: f64 = 6.0;
/// Target: receipt-to-commit p99, in milliseconds.
const P99_TARGET_MS: f64 = 100.0;
/// CPUs other work on the machine may use during a measurement before the
/// report warns that its figures are not reliable. Not zero: the kernel's
/// own threads doing the measurements' I/O (journal, writeback) count as
/// other work, about 0.1 CPU during pgbench here.
const NOISE_CPUS: f64 = 0.25;

/// What the server says of itself.
pub(super) struct PgFacts {
    version: String,
    settings: Vec<(&'static str, String)>,
}

impl PgFacts {
    pub(super) async fn read(url: &str) -> anyhow::Result<Self> {
        const SHOWN: [&str; 6] = [
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "shared_buffers",
            "max_wal_size",
        ];
        let mut conn = PgConnection::connect(url)
            .await
            .context("cannot connect to the cluster")?;
        let version: String = sqlx::query("SELECT current_setting('server_version')")
            .fetch_one(&mut conn)
            .await?
            .try_get(0)?;
        let mut settings = Vec::new();
        for name in SHOWN {
            let value: String = sqlx::query("SELECT current_setting($1)")
                .bind(name)
                .fetch_one(&mut conn)
                .await?
                .try_get(0)?;
            settings.push((name, value));
        }
        conn.close().await?;
        Ok(Self { version, settings })
    }
}

/// What the collector run measured.
pub(super) struct IngestRun {
    pub(super) window: Duration,
    /// Replies in the measured window.
    pub(super) counts: Counts,
    /// Replies of the whole run.
    pub(super) total: Counts,
    pub(super) first_error: Option<String>,
    /// Receipt to commit, sorted, µs.
    pub(super) latency: Vec<u32>,
    /// Send to reply at the agent, sorted, µs.
    pub(super) round_trips: Vec<u32>,
    pub(super) batches: BatchCount,
    pub(super) cpu: CpuUse,
    pub(super) statements: Option<StatementReport>,
    pub(super) check: Check,
    /// With `--readers`: the window before them, and their answers.
    pub(super) readers: Option<ReaderRun>,
}

/// The careless readers' part of a run.
pub(super) struct ReaderRun {
    /// Receipt to commit in the window before the readers, sorted, µs.
    pub(super) quiet: Vec<u32>,
    /// The readers' answers by HTTP status (0: none).
    pub(super) statuses: super::readers::Statuses,
    /// Minute history rows they read from.
    pub(super) history_rows: u64,
}

impl IngestRun {
    fn rate(&self) -> f64 {
        self.counts.applied as f64 / self.window.as_secs_f64()
    }
}

pub(super) struct Report {
    pub(super) facts: PgFacts,
    pub(super) args: IngestArgs,
    pub(super) pgbench: Baseline,
    pub(super) ingest: IngestRun,
}

/// The pgbench runs before and after the collector's, one per client count.
pub(super) struct Baseline {
    pub(super) before: Vec<PgbenchRun>,
    pub(super) after: Vec<PgbenchRun>,
}

/// One client count's runs.
struct ClientCount<'a> {
    before: &'a PgbenchRun,
    after: &'a PgbenchRun,
}

impl ClientCount<'_> {
    fn tps(&self) -> f64 {
        (self.before.tps + self.after.tps) / 2.0
    }
}

impl Baseline {
    fn client_counts(&self) -> impl Iterator<Item = ClientCount<'_>> {
        self.before
            .iter()
            .zip(&self.after)
            .map(|(before, after)| ClientCount { before, after })
    }

    /// The client count with the highest mean TPS.
    fn best(&self) -> Option<ClientCount<'_>> {
        self.client_counts()
            .max_by(|a, b| a.tps().total_cmp(&b.tps()))
    }

    fn runs(&self) -> impl Iterator<Item = &PgbenchRun> {
        self.before.iter().chain(&self.after)
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// The `q` quantile of sorted µs values, in ms.
fn quantile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

fn max_ms(sorted: &[u32]) -> f64 {
    sorted.last().map_or(f64::NAN, |&v| f64::from(v) / 1000.0)
}

impl Report {
    pub(super) fn text(&self) -> String {
        let mut out = String::new();
        self.machine(&mut out);
        self.pgbench_section(&mut out);
        self.ingest_section(&mut out);
        self.readers_section(&mut out);
        self.statements_section(&mut out);
        self.noise(&mut out);
        self.verdicts(&mut out);
        out
    }

    /// The heartbeats' latency under the readers against the same run's
    /// window without them.
    fn readers_section(&self, out: &mut String) {
        let Some(readers) = &self.ingest.readers else {
            return;
        };
        let a = &self.args;
        let (quiet, loaded) = (&readers.quiet, &self.ingest.latency);
        let (p99_quiet, p99_loaded) = (quantile_ms(quiet, 0.99), quantile_ms(loaded, 0.99));
        let _ = writeln!(
            out,
            "\nunder {} readers ({}; 366-day window rankings and a year of history over {} \
             rows of minute history):",
            a.readers,
            if a.readers_honour_retry_after {
                "waiting as Retry-After says"
            } else {
                "asking again at once"
            },
            readers.history_rows
        );
        let _ = writeln!(
            out,
            "  receipt -> commit  without readers p50 {:.1} ms p99 {p99_quiet:.1} ms; with them \
             p50 {:.1} ms p99 {p99_loaded:.1} ms: p99 x{:.2}",
            quantile_ms(quiet, 0.50),
            quantile_ms(loaded, 0.50),
            p99_loaded / p99_quiet
        );
        let answers: Vec<String> = readers
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        let _ = writeln!(
            out,
            "  readers answered   {} (0: no answer)",
            answers.join(", ")
        );
    }

    fn machine(&self, out: &mut String) {
        let cpus = thread::available_parallelism().map_or(0, usize::from);
        let model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "?".to_owned());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let _ = writeln!(
            out,
            "\ntally ingest benchmark: {cpus} CPUs ({model}), kernel {}, PostgreSQL {}",
            kernel.trim(),
            self.facts.version
        );
        let settings: Vec<String> = self
            .facts
            .settings
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let _ = writeln!(
            out,
            "  one throwaway cluster for both measurements: {}",
            settings.join(" ")
        );
        let _ = writeln!(
            out,
            "  the collector, PostgreSQL, pgbench and the simulated agents all share these {cpus} CPUs"
        );
    }

    fn pgbench_section(&self, out: &mut String) {
        let a = &self.args;
        let _ = writeln!(
            out,
            "\nbaseline: pgbench -n -b simple-update (scale {}, -j {THREADS}, {} s per run, \
             database pgbench, each run after a CHECKPOINT; before and after the collector's run)",
            a.pgbench_scale, a.pgbench_seconds
        );
        let _ = writeln!(
            out,
            "  {:>7} {:>6} {:>10} {:>13} {:>7}   CPUs busy: {:>5} {:>8} {:>8} {:>6} {:>7}",
            "clients",
            "when",
            "tps",
            "latency avg",
            "failed",
            "all",
            "postgres",
            "pgbench",
            "other",
            "iowait"
        );
        for count in self.pgbench.client_counts() {
            for (when, run) in [("before", count.before), ("after", count.after)] {
                let _ = writeln!(
                    out,
                    "  {:>7} {:>6} {:>10.1} {:>10} ms {:>7}   {:>16.2} {:>8.2} {:>8.2} {:>6.2} {:>7.2}",
                    run.clients,
                    when,
                    run.tps,
                    run.latency_ms
                        .map_or_else(|| "?".to_owned(), |ms| format!("{ms:.2}")),
                    run.failed.map_or_else(|| "?".to_owned(), |n| n.to_string()),
                    run.cpu.machine,
                    run.cpu.postgres,
                    run.cpu.pgbench,
                    run.cpu.other(),
                    run.cpu.iowait
                );
            }
            let _ = writeln!(
                out,
                "  {:>7} {:>6} {:>10.1}",
                count.before.clients,
                "mean",
                count.tps()
            );
        }
        if let Some(best) = self.pgbench.best() {
            let _ = writeln!(
                out,
                "  baseline: {:.1} tps with {} clients (the higher mean of the client counts tried)",
                best.tps(),
                best.before.clients
            );
        }
    }

    fn ingest_section(&self, out: &mut String) {
        let a = &self.args;
        let run = &self.ingest;
        let _ = writeln!(
            out,
            "\ncollector (in this process, plaintext gRPC on 127.0.0.1, database tally): \
             {} simulated nodes x {INTERFACES} interfaces, each its own token, closed loop \
             ({}) over {} HTTP/2 channels; {} writers, max batch {}; {} s warm-up, {:.1} s \
             measured",
            a.nodes,
            if a.unary {
                "a Send call per heartbeat"
            } else {
                "one Stream call per node"
            },
            a.channels,
            a.writers,
            a.max_batch,
            a.warmup,
            run.window.as_secs_f64()
        );
        let c = &run.counts;
        let _ = writeln!(
            out,
            "  applied            {} heartbeats = {:.1}/s (replies APPLIED in the window; \
             duplicate {}, stale {}, errors {})",
            c.applied,
            run.rate(),
            c.duplicate,
            c.stale,
            c.errors
        );
        let _ = writeln!(
            out,
            "  receipt -> commit  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   \
             ({} heartbeats, the collector's trace events)",
            quantile_ms(&run.latency, 0.50),
            quantile_ms(&run.latency, 0.99),
            max_ms(&run.latency),
            run.latency.len()
        );
        let _ = writeln!(
            out,
            "  agent round trip   p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   \
             (send to reply, at the simulated agents)",
            quantile_ms(&run.round_trips, 0.50),
            quantile_ms(&run.round_trips, 0.99),
            max_ms(&run.round_trips)
        );
        let b = &run.batches;
        if b.count > 0 {
            let _ = writeln!(
                out,
                "  batches            {} committed, {:.1} heartbeats each on average, \
                 ~{:.1} ms each (a writer's time: connection, statements, commit)",
                b.count,
                b.heartbeats as f64 / b.count as f64,
                b.elapsed_ms as f64 / b.count as f64
            );
        }
        let cpu = &run.cpu;
        let _ = writeln!(
            out,
            "  CPUs busy          {:.2}: collector {:.2}, simulated agents {:.2}, PostgreSQL {:.2}, \
             other work on the machine {:.2} (iowait {:.2})",
            cpu.machine,
            cpu.collector,
            cpu.agents,
            cpu.postgres,
            cpu.other(),
            cpu.iowait
        );
        self.check_lines(out);
    }

    fn check_lines(&self, out: &mut String) {
        let run = &self.ingest;
        let check = &run.check;
        let acknowledged = run.total.applied + run.total.duplicate;
        if check.is_exact() {
            let _ = writeln!(
                out,
                "  exact accounting   \u{2713} all {} nodes: traffic totals, period counters, \
                 history sums and last sequence equal what each node's last applied \
                 heartbeat carried ({} B down, {} B up), interface rows not above it; {} \
                 heartbeats in history = {} \
                 acknowledged in the whole run{}",
                check.nodes,
                check.download,
                check.upload,
                check.history_heartbeats,
                acknowledged,
                if check.history_heartbeats == acknowledged {
                    ""
                } else {
                    " (differ!)"
                }
            );
        } else {
            let _ = writeln!(
                out,
                "  exact accounting   FAIL: {} of {} nodes differ, {} unverifiable",
                check.mismatched, check.nodes, check.unresolved
            );
            for line in &check.quoted {
                let _ = writeln!(out, "    {line}");
            }
        }
        if let Some(error) = &run.first_error {
            let _ = writeln!(
                out,
                "  errors             {} in the whole run (retried); the first: {error}",
                run.total.errors
            );
        }
    }

    fn statements_section(&self, out: &mut String) {
        let Some(report) = &self.ingest.statements else {
            return;
        };
        let batches = self.ingest.batches.count.max(1) as f64;
        let _ = writeln!(
            out,
            "\nstatements in the measured window (pg_stat_statements, database tally; \
             execution time only, the commit's WAL flush is not in it)"
        );
        let _ = writeln!(
            out,
            "  {:<46} {:>8} {:>10} {:>10} {:>10} {:>11}",
            "statement", "calls", "total ms", "ms/batch", "rows/call", "WAL kB/call"
        );
        for s in &report.statements {
            let calls = s.calls.max(1) as f64;
            let _ = writeln!(
                out,
                "  {:<46} {:>8} {:>10.0} {:>10.2} {:>10.1} {:>11.1}",
                s.statement,
                s.calls,
                s.total_ms,
                s.total_ms / batches,
                s.rows as f64 / calls,
                s.wal_bytes / calls / 1024.0
            );
        }
        let _ = writeln!(
            out,
            "  {:<16} {:>10} {:>10} {:>14} {:>10}",
            "table", "inserted", "updated", "of them HOT", "deleted"
        );
        for t in &report.tables {
            let _ = writeln!(
                out,
                "  {:<16} {:>10} {:>10} {:>9} ({:>3.0}%) {:>10}",
                t.table,
                t.inserted,
                t.updated,
                t.hot_updated,
                t.hot_updated as f64 * 100.0 / t.updated.max(1) as f64,
                t.deleted
            );
        }
    }

    /// Says so when other work on the machine took CPU time during a
    /// measurement: then the figures say little.
    fn noise(&self, out: &mut String) {
        let phases = self
            .pgbench
            .runs()
            .map(|r| r.cpu.other())
            .chain([self.ingest.cpu.other()]);
        let worst = phases.fold(0.0, f64::max);
        if worst > NOISE_CPUS {
            let _ = writeln!(
                out,
                "\nwarning: other work on the machine used up to {worst:.2} CPUs during the \
                 measurements (see the `other` columns, which also hold the kernel's I/O \
                 threads); the figures and their ratio are not reliable: run again on a quiet \
                 machine"
            );
        }
    }

    fn verdicts(&self, out: &mut String) {
        let rate = self.ingest.rate();
        let _ = writeln!(out, "\nverdicts");
        if let Some(best) = self.pgbench.best() {
            let ratio = rate / best.tps();
            let _ = writeln!(
                out,
                "  heartbeats/s / pgbench tps   {rate:.1} / {:.1} = {ratio:.2}x   \
                 target >= {RATIO_TARGET:.0}x   {}",
                best.tps(),
                verdict(ratio >= RATIO_TARGET)
            );
        }
        let p99 = quantile_ms(&self.ingest.latency, 0.99);
        let _ = writeln!(
            out,
            "  p99 receipt -> commit        {p99:.1} ms   target <= {P99_TARGET_MS:.0} ms   {}",
            verdict(p99 <= P99_TARGET_MS)
        );
        let _ = writeln!(
            out,
            "  exact accounting             {}",
            if self.ingest.check.is_exact() {
                "\u{2713}"
            } else {
                "FAIL"
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(quantile_ms(&v, 0.50), 50.0);
        assert_eq!(quantile_ms(&v, 0.99), 99.0);
        assert_eq!(max_ms(&v), 100.0);
        assert_eq!(quantile_ms(&[7000], 0.99), 7.0);
        assert!(quantile_ms(&[], 0.5).is_nan());
    }
}
