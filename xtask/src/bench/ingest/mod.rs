//! `cargo xtask bench ingest`: how many heartbeats per second one collector
//! applies, against what the same PostgreSQL does with `pgbench`.
//!
//! One throwaway cluster ([`TempCluster`], fsync on, `synchronous_commit` at
//! its default, on) serves both measurements of one run:
//!
//! - the baseline: `pgbench -b simple-update` (scale 10, database `pgbench`)
//!   with 8 and with 16 clients, before the collector runs and again after
//!   it; the client count with the higher mean TPS is the baseline, so that
//!   the ratio is fair to pgbench, and a drift of the machine shows;
//! - the collector, in this process (database `tally`, the real
//!   `serve::serve` on 127.0.0.1, plaintext), and one simulated agent task
//!   per enrolled node, each with its own token, sending heartbeats in a
//!   closed loop (send, await the reply, send the next) on one `Stream` call
//!   each (`--unary`: a `Send` call per heartbeat) over a few shared HTTP/2
//!   channels. After a warm-up, applied replies are counted over the
//!   measured window, and the collector's receipt-to-commit latencies of that
//!   window are taken from its "heartbeat answered" trace events
//!   ([`observe::Latencies`]).
//!
//! Then the agents stop and every node's stored counters are checked against
//! the last heartbeat acknowledged as applied to it ([`check`]): a mismatch
//! fails the command. Targets are reported as PASS or MISS, never asserted.
//!
//! The figures only mean something with optimised code, so a dev build of
//! xtask runs `cargo run --release -p xtask -- bench ingest ...` in its place.
//!
//! Layout: this file holds the options and the flow; [`agents`] the
//! simulated agents, [`pgbench`] the baseline, [`observe`] what is watched
//! while the collector runs (batches, CPU, statement statistics), [`check`]
//! the exact-accounting check and [`mod@report`] the text.

mod agents;
mod check;
mod observe;
mod pgbench;
mod readers;
mod report;

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use sqlx::PgPool;
use tally_collector::{db, ingest, nodes, serve};
use tally_testkit::devdb::TempCluster;
use tokio::{net::TcpListener, sync::oneshot, task::JoinSet};

use self::{
    agents::{Agents, SimNode},
    observe::{Batches, CpuSample, Latencies, Statements},
    pgbench::PgbenchRun,
    report::{Baseline, IngestRun, PgFacts, ReaderRun, Report},
};

/// `cargo xtask bench ingest` options.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Simulated nodes: each is enrolled with its own token and has one agent
    /// task sending heartbeats in a closed loop.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub nodes: u32,

    /// Seconds the collector is measured for (after the warm-up).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,

    /// Seconds the agents run before the measured window starts.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub warmup: u64,

    /// The collector's writer tasks (`tally-collector serve --writers`).
    #[arg(long, default_value_t = ingest::DEFAULT_WRITERS, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub writers: u32,

    /// Most heartbeats in one transaction (`tally-collector serve --max-batch`).
    #[arg(long, default_value_t = ingest::DEFAULT_MAX_BATCH, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_batch: u32,

    /// HTTP/2 connections the agents share (nodes are spread over them).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub channels: u32,

    /// Send each heartbeat as its own `Send` call, as agents did before the
    /// `Stream` call (for comparison); by default each simulated node sends
    /// its heartbeats on one stream, as the real agent does.
    #[arg(long)]
    pub unary: bool,

    /// pgbench client counts to try; the highest TPS is the baseline.
    #[arg(long, value_delimiter = ',', default_value = "8,16", value_parser = clap::value_parser!(u32).range(1..=150))]
    pub pgbench_clients: Vec<u32>,

    /// Seconds of each pgbench run (one per client count before the
    /// collector runs, and one after).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub pgbench_seconds: u64,

    /// pgbench scale factor (`pgbench -i -s`).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pgbench_scale: u32,

    /// Careless readers on the collector's HTTP side during the measured
    /// window: each loops on a 366-day window ranking and a year of one
    /// node's history (over --reader-history-days of minute history for 50
    /// more nodes), asking again at once whatever Retry-After says. The
    /// same run first measures a window without them; the report sets the
    /// two latencies side by side.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub readers: u32,

    /// Days of minute history (node and one interface) the readers read,
    /// for each of 50 nodes (28: about two million rows).
    #[arg(long, default_value_t = 28, value_parser = clap::value_parser!(u32).range(1..=400))]
    pub reader_history_days: u32,

    /// The readers wait as `Retry-After` says when told 503 (careful
    /// clients, as the dashboard is).
    #[arg(long)]
    pub readers_honour_retry_after: bool,

    /// Load pg_stat_statements and print what each of the collector's
    /// statements cost in the measured window (it costs both measurements a
    /// little, alike).
    #[arg(long)]
    pub statements: bool,

    /// Log filter for the collector's and the benchmark's logs on stderr
    /// (e.g. `tally_collector=debug` shows every committed batch; sqlx's
    /// slow-statement warnings, such as for CHECKPOINT, are off by default).
    #[arg(long, default_value = "warn,sqlx::query=error", value_name = "FILTER")]
    pub log: String,

    /// Measure with whatever profile this xtask was built in, instead of
    /// running the release build (dev-build figures are meaningless; this is
    /// for working on the benchmark itself).
    #[arg(long)]
    pub no_release: bool,
}

/// Runs the benchmark and prints its report; fails when the accounting was
/// not exact.
pub fn run(args: &IngestArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) && !args.no_release {
        return run_release();
    }
    ensure!(
        !args.pgbench_clients.is_empty(),
        "--pgbench-clients needs at least one client count"
    );
    let (batches, latencies) = observe::install_logging(&args.log)?;
    let mut builder = TempCluster::builder()
        .fsync(true)
        .max_connections(200 + args.writers);
    if args.statements {
        builder = builder
            .setting("shared_preload_libraries", "pg_stat_statements")
            .setting("pg_stat_statements.track", "all");
    }
    eprintln!("bench: starting a throwaway PostgreSQL cluster (fsync on)");
    let cluster = builder
        .start()
        .context("cannot start a throwaway PostgreSQL cluster")?;
    // The collector and the simulated agents each get a runtime of their
    // own (as many threads as CPUs), so that the CPU each uses can be told
    // apart; the kernel shares the CPUs between them as between processes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(observe::COLLECTOR_THREADS)
        .build()
        .context("cannot start the tokio runtime")?;
    let agent_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(observe::AGENT_THREADS)
        .build()
        .context("cannot start the agents' tokio runtime")?;
    let setup = Setup {
        cluster: &cluster,
        postmaster: observe::postmaster_pid(&cluster.data_dir()),
        args,
        batches: &batches,
        latencies: &latencies,
        agents: agent_runtime.handle().clone(),
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = measure(&setup) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; cleaning up")),
        }
    });
    agent_runtime.shutdown_timeout(Duration::from_secs(2));
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(cluster);
    let report = result?;
    print!("{}", report.text());
    ensure!(
        report.ingest.check.is_exact(),
        "the accounting was not exact (see above)"
    );
    Ok(())
}

/// Replaces this (dev-profile) process by `cargo run --release` of xtask
/// with the same arguments.
fn run_release() -> anyhow::Result<()> {
    eprintln!(
        "bench: building and running xtask in the release profile \
         (unoptimised tonic, prost and sqlx would make the figures meaningless)"
    );
    let error = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(crate::workspace_root())
        .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
        .args(std::env::args_os().skip(1))
        .exec();
    bail!("cannot run cargo: {error}")
}

/// What the measurements run with.
struct Setup<'a> {
    cluster: &'a TempCluster,
    /// The cluster's server process, for its CPU time.
    postmaster: Option<i32>,
    args: &'a IngestArgs,
    batches: &'a Arc<Batches>,
    latencies: &'a Arc<Latencies>,
    /// The runtime the simulated agents run on.
    agents: tokio::runtime::Handle,
}

/// Both measurements on one cluster, then the check; the report. pgbench
/// runs before and after the collector, so that a drift of the machine
/// during the run shows, and evens out in the baseline.
async fn measure(setup: &Setup<'_>) -> anyhow::Result<Report> {
    let facts = PgFacts::read(&setup.cluster.url("postgres")).await?;
    let url = pgbench_init(setup).await?;
    let before = pgbench_runs(setup, &url, "before").await?;
    let ingest = collector(setup).await?;
    let after = pgbench_runs(setup, &url, "after").await?;
    Ok(Report {
        facts,
        args: setup.args.clone(),
        pgbench: Baseline { before, after },
        ingest,
    })
}

/// Creates the pgbench database and runs `pgbench -i`; the database's URL.
async fn pgbench_init(setup: &Setup<'_>) -> anyhow::Result<String> {
    let (cluster, args) = (setup.cluster, setup.args);
    let url = cluster
        .create_database(pgbench::DATABASE)
        .await
        .context("cannot create the pgbench database")?;
    eprintln!(
        "bench: pgbench -i -s {} (database {})",
        args.pgbench_scale,
        pgbench::DATABASE
    );
    pgbench::init(cluster, args.pgbench_scale).await?;
    Ok(url)
}

/// One simple-update run per client count, each after a CHECKPOINT.
async fn pgbench_runs(setup: &Setup<'_>, url: &str, when: &str) -> anyhow::Result<Vec<PgbenchRun>> {
    let args = setup.args;
    let mut runs = Vec::new();
    for &clients in &args.pgbench_clients {
        checkpoint(url).await?;
        eprintln!(
            "bench: pgbench -b simple-update -c {clients} -j {} -T {} ({when} the collector)",
            pgbench::THREADS,
            args.pgbench_seconds
        );
        runs.push(
            pgbench::simple_update(
                setup.cluster,
                setup.postmaster,
                clients,
                args.pgbench_seconds,
            )
            .await?,
        );
    }
    Ok(runs)
}

/// The collector and its simulated agents.
async fn collector(setup: &Setup<'_>) -> anyhow::Result<IngestRun> {
    let (cluster, args, batches, latencies) =
        (setup.cluster, setup.args, setup.batches, setup.latencies);
    let url = cluster
        .create_database("tally")
        .await
        .context("cannot create the tally database")?;
    // The collector's own sizing (`tally-collector serve`): writers + 4.
    let pool = db::connect(&url, args.writers + 4)
        .await
        .context("cannot connect to the tally database")?;
    db::migrate(&pool)
        .await
        .context("cannot apply the migrations")?;
    let mut statements = if args.statements {
        Some(Statements::enable(&pool).await?)
    } else {
        None
    };
    let history = if args.readers > 0 {
        eprintln!(
            "bench: writing {} days of minute history for {} nodes (for the readers)",
            args.reader_history_days,
            readers::HISTORY_NODES
        );
        Some(readers::seed_history(&pool, args.reader_history_days).await?)
    } else {
        None
    };
    eprintln!("bench: enrolling {} nodes", args.nodes);
    let nodes = enrol(&pool, args.nodes).await?;
    checkpoint(&url).await?;

    let mut options = serve::Options::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    options.ingest.writers = args.writers as usize;
    options.ingest.max_batch = args.max_batch as usize;
    options.http_listen = history
        .as_ref()
        .map(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    // The simulated agents send as fast as the collector takes them.
    options.min_heartbeat_interval = Duration::ZERO;
    let listener = TcpListener::bind(options.listen)
        .await
        .context("cannot listen on 127.0.0.1")?;
    let address = listener.local_addr().context("no local address")?;
    let http = match options.http_listen {
        Some(http) => Some(
            TcpListener::bind(http)
                .await
                .context("cannot listen on 127.0.0.1 (HTTP)")?,
        ),
        None => None,
    };
    let http_address = match &http {
        Some(http) => Some(http.local_addr().context("no local address")?),
        None => None,
    };
    let (stop_server, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(
        pool.clone(),
        options,
        serve::Listeners {
            grpc: listener,
            http,
        },
        async {
            let _ = stopped.await;
        },
    ));

    eprintln!(
        "bench: {} agents over {} channels; {} s warm-up, {} s measured",
        args.nodes, args.channels, args.warmup, args.seconds
    );
    let (channels, unary) = (args.channels as usize, args.unary);
    let agents = setup
        .agents
        .spawn(async move { Agents::start(address, &nodes, channels, unary).await })
        .await
        .context("the agents' start-up task failed")??;
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;

    // With readers: first a window without them, then they start.
    let reading = match (&history, http_address) {
        (Some((ids, rows)), Some(http_address)) => {
            eprintln!("bench: {} s without readers", args.seconds);
            let _ = latencies.take();
            tokio::time::sleep(Duration::from_secs(args.seconds)).await;
            let mut quiet = latencies.take();
            quiet.sort_unstable();
            eprintln!("bench: {} careless readers start", args.readers);
            let readers = readers::Readers::start(
                args.readers,
                http_address,
                ids,
                args.readers_honour_retry_after,
            );
            Some((readers, quiet, *rows))
        }
        _ => None,
    };

    // The measured window.
    if let Some(statements) = &mut statements {
        statements.reset().await?;
    }
    let _ = latencies.take();
    let batches_before = batches.snapshot();
    let cpu_before = CpuSample::now(setup.postmaster);
    let applied_before = agents.counts();
    agents.record_round_trips(true);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let applied_after = agents.counts();
    let window = started.elapsed();
    let cpu = CpuSample::now(setup.postmaster).since(&cpu_before);
    let batches_window = batches.snapshot().since(&batches_before);
    let mut latency = latencies.take();
    agents.record_round_trips(false);
    let mut round_trips = agents.take_round_trips();
    let readers = match reading {
        Some((readers, quiet, history_rows)) => Some(ReaderRun {
            statuses: readers.stop().await,
            quiet,
            history_rows,
        }),
        None => None,
    };
    let statement_costs = match &statements {
        Some(statements) => Some(statements.read().await?),
        None => None,
    };

    eprintln!("bench: stopping the agents and checking every node's counters");
    let stopped = agents.stop().await?;
    let _ = stop_server.send(());
    server
        .await
        .context("the collector task failed")?
        .context("the collector failed")?;
    let check = check::run(&pool, &stopped.acked).await?;
    pool.close().await;

    latency.sort_unstable();
    round_trips.sort_unstable();
    Ok(IngestRun {
        window,
        counts: applied_after.since(&applied_before),
        total: stopped.counts,
        first_error: stopped.first_error,
        latency,
        round_trips,
        batches: batches_window,
        cpu,
        statements: statement_costs,
        check,
        readers,
    })
}

/// Enrols `count` nodes (a few at a time) and keeps their tokens.
async fn enrol(pool: &PgPool, count: u32) -> anyhow::Result<Vec<SimNode>> {
    const AT_ONCE: u32 = 16;
    let mut nodes = Vec::with_capacity(count as usize);
    let mut next = 0;
    let mut running = JoinSet::new();
    while next < count || !running.is_empty() {
        while next < count && running.len() < AT_ONCE as usize {
            let pool = pool.clone();
            let index = next;
            running.spawn(async move {
                let name = format!("bench-node-{index:05}");
                nodes::add(&pool, &name)
                    .await
                    .map(|added| (index, added))
                    .with_context(|| format!("cannot enrol {name}"))
            });
            next += 1;
        }
        if let Some(done) = running.join_next().await {
            let (index, added) = done.context("an enrolment task failed")??;
            nodes.push(SimNode {
                index,
                id: added.id,
                token: added.token,
            });
        }
    }
    nodes.sort_by_key(|n| n.index);
    Ok(nodes)
}

/// `CHECKPOINT`, so that neither measurement starts with another's dirty
/// pages to write.
async fn checkpoint(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .context("cannot connect for CHECKPOINT")?;
    sqlx::query("CHECKPOINT")
        .execute(&mut conn)
        .await
        .context("CHECKPOINT failed")?;
    conn.close().await.context("cannot close a connection")?;
    Ok(())
}
