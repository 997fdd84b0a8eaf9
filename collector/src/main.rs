//! `tally-collector`: the central service (see `tally-collector --help`).

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use sqlx::PgPool;
use tally_collector::{
    db, http, ingest, nodes,
    period::{self, Target},
    serve, webhook,
};
use tokio::signal::unix::{SignalKind, signal};

mod billing_cli;
mod cli;
mod corrections_cli;
mod top;

use cli::{Cli, Command, MigrateArgs, NodeCommand, PeriodCommand, ServeArgs};

fn main() -> ExitCode {
    let cli = cli::parse();
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tally-collector: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tally-collector: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli.db.database_url.as_deref().context(
        "no database given: set DATABASE_URL or --database-url (e.g. postgres://tally@localhost/tally)",
    )?;
    // `serve` makes its own pools (writers, readers, upkeep) from this
    // one's settings; this one only migrates and checks the way there.
    let connections = 2;
    // Flags are checked before anything else happens.
    let tls = match &cli.command {
        Command::Serve(args) => tls_files(args)?,
        _ => None,
    };
    // sqlx's message already ends with its cause: print it once.
    let pool = db::connect(url, connections).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot connect to the database {}: {error}",
            db::describe(url)
        )
    })?;
    match cli.command {
        Command::Serve(args) => run_serve(pool, *args, tls).await,
        Command::Migrate(args) => run_migrate(&pool, args).await,
        Command::Node(command) => run_node(&pool, command).await,
        Command::Period(PeriodCommand::Reset { node, all }) => {
            let target = match node {
                Some(node) if !all => Target::Node(node),
                _ => Target::All,
            };
            let reset = period::reset_now(&pool, &target).await?;
            println!("period reset for {reset} node(s)");
            Ok(())
        }
        Command::Top(args) => top::run(&pool, &args).await,
        Command::Billing(command) => billing_cli::run(&pool, command).await,
        Command::Periods(args) => billing_cli::periods(&pool, &args).await,
        Command::Calibrate(args) => corrections_cli::calibrate(&pool, args).await,
        Command::Calibrations { node } => corrections_cli::list(&pool, &node).await,
        Command::Anomalies(command) => corrections_cli::anomalies(&pool, command).await,
    }
}

type TlsFiles = Option<(PathBuf, PathBuf)>;

/// The certificate and key to serve TLS with; `None` only when plaintext is
/// asked for explicitly.
fn tls_files(args: &ServeArgs) -> anyhow::Result<TlsFiles> {
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Ok(Some((cert.clone(), key.clone()))),
        _ if args.insecure_plaintext => Ok(None),
        _ => anyhow::bail!(
            "no TLS certificate given: pass --tls-cert and --tls-key, or --insecure-plaintext to serve without TLS"
        ),
    }
}

async fn run_serve(pool: PgPool, args: ServeArgs, tls: TlsFiles) -> anyhow::Result<()> {
    if !args.no_migrate {
        let count = db::migrate(&pool)
            .await
            .context("cannot apply the database migrations")?;
        tracing::info!(migrations = count, "database schema up to date");
    }
    if let Some(interval) = args.heartbeat_interval
        && interval < args.min_heartbeat_interval
    {
        anyhow::bail!(
            "--heartbeat-interval {} is shorter than --min-heartbeat-interval {}: the agents \
             would be asked to send faster than they are taken",
            humantime::format_duration(interval),
            humantime::format_duration(args.min_heartbeat_interval)
        );
    }
    let options = serve::Options {
        listen: args.listen,
        tls,
        heartbeat_interval: args.heartbeat_interval,
        max_clock_skew: args.max_clock_skew,
        history_retention: args.history_retention,
        ingest: ingest::Config {
            max_batch: args.max_batch as usize,
            writers: args.writers as usize,
            schedule: args.period_reset,
            max_interface_names: i64::from(args.max_interface_names),
            ..ingest::Config::default()
        },
        http_listen: args.http_listen,
        offline_after: args.offline_after,
        tokens: http::Tokens {
            admin: args.admin_token.filter(|t| !t.is_empty()),
            read: args.read_token.filter(|t| !t.is_empty()),
        },
        database: db::Budget {
            readers: args.reader_connections,
            statement_timeout: args.statement_timeout,
            lock_timeout: args.lock_timeout,
            ..db::Budget::default()
        },
        max_expensive_reads: args.max_expensive_reads as usize,
        max_event_streams: args.max_event_streams as usize,
        max_streams_per_connection: args.max_streams_per_connection,
        stream_idle_timeout: args.stream_idle_timeout,
        min_heartbeat_interval: args.min_heartbeat_interval,
        handshake_timeout: args.handshake_timeout,
        max_connections: args.max_connections as usize,
        max_connections_per_address: args.max_connections_per_address as usize,
        max_http_connections: args.max_http_connections as usize,
        max_http_connections_per_address: args.max_http_connections_per_address as usize,
        header_read_timeout: args.header_read_timeout,
        webhook: match (args.webhook_url, args.webhook_secret) {
            (Some(url), Some(secret)) => {
                Some(webhook::Config::new(url, &secret).context("cannot use --webhook-secret")?)
            }
            _ => None,
        },
    };
    if let Some(schedule) = args.period_reset {
        tracing::info!(%schedule, "period counters reset on schedule");
    }
    let listeners = serve::bind(&options).await?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let shutdown = async move {
        let signal = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal, "stopping");
    };
    serve::serve(pool, options, listeners, shutdown).await
}

async fn run_migrate(pool: &PgPool, args: MigrateArgs) -> anyhow::Result<()> {
    match args.revert_to {
        Some(version) => {
            db::revert(pool, version)
                .await
                .context("cannot revert the migrations")?;
            println!("reverted migrations newer than {version}");
        }
        None => {
            let count = db::migrate(pool)
                .await
                .context("cannot apply the migrations")?;
            println!("database schema up to date ({count} migrations)");
        }
    }
    Ok(())
}

async fn run_node(pool: &PgPool, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Add { name, token_only } => {
            let added = nodes::add(pool, &name).await?;
            if token_only {
                println!("{}", added.token);
            } else {
                println!("node added: {} ({})", added.name, added.id);
                println!(
                    "token (shown once, keep it secret; give it to the agent with --token-file):"
                );
                println!("{}", added.token);
            }
        }
        NodeCommand::List { json } => {
            let listed = nodes::list(pool).await?;
            if json {
                println!("{}", list_json(&listed));
            } else {
                print_table(&listed);
            }
        }
        NodeCommand::Remove { node } => {
            let id = nodes::remove(pool, &node).await?;
            println!("node {id} removed");
        }
    }
    Ok(())
}

fn list_json(listed: &[nodes::Listed]) -> String {
    let rows: Vec<_> = listed
        .iter()
        .map(|n| {
            serde_json::json!({
                "id": n.id,
                "name": n.name,
                "hostname": n.hostname,
                "lastSeen": n.last_seen.map(|t| t.and_utc().to_rfc3339()),
                "totalUpload": n.total_upload.to_string(),
                "totalDownload": n.total_download.to_string(),
                "periodUpload": n.period_upload.to_string(),
                "periodDownload": n.period_download.to_string(),
                "periodStart": n.period_start.and_utc().to_rfc3339(),
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

fn print_table(listed: &[nodes::Listed]) {
    println!(
        "{:<26} {:<20} {:>16} {:>16} {:>16} {:>16}  LAST SEEN",
        "ID", "NAME", "TOTAL UP", "TOTAL DOWN", "PERIOD UP", "PERIOD DOWN"
    );
    for n in listed {
        println!(
            "{:<26} {:<20} {:>16} {:>16} {:>16} {:>16}  {}",
            n.id,
            n.name,
            n.total_upload,
            n.total_download,
            n.period_upload,
            n.period_download,
            n.last_seen
                .map_or_else(|| "never".to_owned(), |t| format!("{t} UTC"))
        );
    }
}
