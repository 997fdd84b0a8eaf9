//! `tally-collector serve`: its options, and starting the service
//! ([`tally_collector::serve`]) from them until SIGTERM or SIGINT.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, builder::BoolishValueParser};
use sqlx::PgPool;
use tally_collector::{db, http, ingest, period::Schedule, serve, webhook};
use tokio::signal::unix::{SignalKind, signal};

use crate::durations::{parse_interval, parse_positive_duration};

mod http_tokens;

use http_tokens::TokenSources;

/// The log target of this command's own lines, as when they were written
/// in `main.rs` (log filters and readers keep working).
const LOG_TARGET: &str = "tally_collector";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to accept the agents' gRPC connections on (TLS
    /// unless --insecure-plaintext). `0.0.0.0` listens on every IPv4
    /// address; port 0 picks a free port (logged at start).
    #[arg(
        long,
        env = "TALLY_LISTEN",
        default_value = "0.0.0.0:50051",
        value_name = "ADDRESS"
    )]
    pub listen: SocketAddr,

    /// Address and port for the HTTP side: the dashboard (`/`), the JSON
    /// API and its event stream under `/api/v1`, `/metrics`, and health
    /// checks (`/healthz`, `/readyz`). HTTPS with --http-tls-cert and
    /// --http-tls-key; plain HTTP only on a loopback address (behind a
    /// TLS-terminating proxy) unless --http-insecure-plaintext. Without it,
    /// no HTTP is served.
    #[arg(long, env = "TALLY_HTTP_LISTEN", value_name = "ADDRESS")]
    pub http_listen: Option<SocketAddr>,

    /// PEM file with the certificate chain the HTTP side presents (HTTPS,
    /// HTTP/2 and HTTP/1.1); needs --http-tls-key. Read once, at start.
    /// Without it, the HTTP side is plain HTTP (see --http-listen).
    #[arg(
        long,
        env = "TALLY_HTTP_TLS_CERT",
        requires = "http_tls_key",
        value_name = "FILE"
    )]
    pub http_tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --http-tls-cert; needs
    /// --http-tls-cert. Without both, the HTTP side is plain HTTP.
    #[arg(
        long,
        env = "TALLY_HTTP_TLS_KEY",
        requires = "http_tls_cert",
        value_name = "FILE"
    )]
    pub http_tls_key: Option<PathBuf>,

    /// Serve plain HTTP on an address that is not loopback: bearer tokens,
    /// the API's answers and the dashboard cross the network in the clear.
    /// Only for a trusted network; cannot be combined with --http-tls-cert.
    #[arg(
        long,
        env = "TALLY_HTTP_INSECURE_PLAINTEXT",
        value_parser = BoolishValueParser::new(),
        conflicts_with = "http_tls_cert"
    )]
    pub http_insecure_plaintext: bool,

    /// PEM file with the certificate authorities whose client certificates
    /// the node channel accepts: with it, every agent must present a
    /// certificate one of them signed (mutual TLS, agent --client-cert), in
    /// addition to its token. Needs --tls-cert. Without it, agents prove
    /// who they are with their token alone.
    #[arg(
        long,
        env = "TALLY_CLIENT_CA",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub client_ca: Option<PathBuf>,

    /// A node not heard from for this long is shown offline (in the API,
    /// the dashboard and /metrics). Keep it a few heartbeat intervals long,
    /// e.g. `30s` or `2m`.
    #[arg(
        long,
        env = "TALLY_OFFLINE_AFTER",
        default_value = text(serve::defaults::OFFLINE_AFTER),
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub offline_after: Duration,

    /// Bearer token for the HTTP admin endpoints (enrol and remove nodes,
    /// reset periods); it also reads. At least 32 characters (e.g. `openssl
    /// rand -hex 32`); the examples' CHANGE-ME placeholders are refused.
    /// Without it (and without --admin-token-file), the admin endpoints
    /// answer 403. Wrong tokens are logged, and an address that sends too
    /// many is held off (--max-failed-authentications).
    #[arg(
        long,
        env = "TALLY_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,

    /// A file of admin tokens, one per line (`#` starts a comment), valid
    /// together with --admin-token. Read again on SIGHUP, so that a token
    /// can be rotated without a restart: add the new one, reload, move the
    /// clients over, remove the old one, reload. Without it, --admin-token
    /// alone decides.
    #[arg(long, env = "TALLY_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Bearer token required to read the HTTP API, the event stream and
    /// `/metrics` (admin tokens read too); at least 32 characters. Without
    /// it (and without --read-token-file), reading is open to anyone who
    /// reaches --http-listen.
    #[arg(
        long,
        env = "TALLY_READ_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub read_token: Option<String>,

    /// Wrong admin or read tokens one client address may send within a
    /// minute (1 to 10000); past it, the address is answered 429 (with
    /// Retry-After) for the rest of that minute, even with a right token.
    /// Each failure is logged at WARN with the address.
    #[arg(
        long,
        env = "TALLY_MAX_FAILED_AUTHENTICATIONS",
        default_value_t = tally_collector::http::auth::MAX_FAILED_AUTHENTICATIONS,
        value_parser = clap::value_parser!(u32).range(1..=10_000),
        value_name = "N"
    )]
    pub max_failed_authentications: u32,

    /// A file of read tokens, one per line, valid together with
    /// --read-token; read again on SIGHUP. Without it, --read-token alone
    /// decides.
    #[arg(long, env = "TALLY_READ_TOKEN_FILE", value_name = "FILE")]
    pub read_token_file: Option<PathBuf>,

    /// PEM file with the certificate chain the gRPC side presents to
    /// agents (the server's certificate first); needs --tls-key. Without
    /// --tls-cert and --tls-key, `serve` refuses to start unless
    /// --insecure-plaintext is given.
    #[arg(
        long,
        env = "TALLY_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert; needs --tls-cert.
    /// Without both, `serve` refuses to start unless --insecure-plaintext
    /// is given.
    #[arg(
        long,
        env = "TALLY_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,

    /// Serve gRPC without TLS: node tokens and counters cross the network
    /// in the clear. Only for a trusted network or a local test; cannot be
    /// combined with --tls-cert/--tls-key.
    #[arg(
        long,
        env = "TALLY_INSECURE_PLAINTEXT",
        value_parser = BoolishValueParser::new()
    )]
    pub insecure_plaintext: bool,

    /// Do not apply pending migrations at start (when they are applied
    /// separately with `tally-collector migrate`, e.g. before rolling out
    /// several collectors). The schema must then be up to date already.
    #[arg(
        long,
        env = "TALLY_NO_MIGRATE",
        value_parser = BoolishValueParser::new()
    )]
    pub no_migrate: bool,

    /// Ask every agent to send its heartbeats at this interval (at least
    /// 1s), e.g. `10s`. Without it, each agent keeps its own --interval.
    #[arg(
        long,
        env = "TALLY_HEARTBEAT_INTERVAL",
        value_parser = parse_interval,
        value_name = "DURATION"
    )]
    pub heartbeat_interval: Option<Duration>,

    /// The anchor day of nodes whose billing settings have none (neither
    /// their own nor the fleet's, see `billing`): `monthly:DAY` (DAY 1 to
    /// 31) starts a period on that day of every month at 00:00 UTC (on
    /// the last day of shorter months). Ended periods are archived. Safe
    /// with several collectors. Without it (and without anchor days in the
    /// billing settings), periods end only by hand (`period reset` or the
    /// admin API).
    #[arg(long, env = "TALLY_PERIOD_RESET", value_name = "SCHEDULE")]
    pub period_reset: Option<Schedule>,

    /// How long load and traffic history is kept (checked every ten
    /// minutes; older buckets are deleted), e.g. `30days`, `12weeks`. The
    /// counters themselves are never deleted.
    #[arg(
        long,
        env = "TALLY_HISTORY_RETENTION",
        default_value = text(serve::defaults::HISTORY_RETENTION),
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub history_retention: Duration,

    /// How far a node's clock (its heartbeats' time) may be off the
    /// collector's, ahead or behind, before the node is shown as having a
    /// skewed clock and a warning is logged (e.g. `5m`, `30s`). A wrong
    /// clock never makes a heartbeat count less: counter sets are ordered
    /// without it.
    #[arg(
        long,
        env = "TALLY_MAX_CLOCK_SKEW",
        default_value = text(serve::defaults::MAX_CLOCK_SKEW),
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub max_clock_skew: Duration,

    /// Most heartbeats written to the database in one transaction (1 to
    /// 10000). A batch is whatever queued up while the previous one was
    /// being written: one heartbeat under light load, up to this many under
    /// heavy load.
    #[arg(
        long,
        env = "TALLY_MAX_BATCH",
        default_value_t = ingest::DEFAULT_MAX_BATCH,
        value_parser = clap::value_parser!(u32).range(1..=10_000),
        value_name = "N"
    )]
    pub max_batch: u32,

    /// Concurrent database writers (1 to 64), each with its own
    /// connection: the node channel's pool. The HTTP side and the upkeep
    /// have pools of their own (--reader-connections, and 2), so that
    /// readers never take the writers' connections.
    #[arg(
        long,
        env = "TALLY_WRITERS",
        default_value_t = ingest::DEFAULT_WRITERS,
        value_parser = clap::value_parser!(u32).range(1..=64),
        value_name = "N"
    )]
    pub writers: u32,

    /// Database connections of the HTTP side (1 to 64): the API, the
    /// dashboard, the event stream and `/metrics`.
    #[arg(
        long,
        env = "TALLY_READER_CONNECTIONS",
        default_value_t = db::DEFAULT_READERS,
        value_parser = clap::value_parser!(u32).range(1..=64),
        value_name = "N"
    )]
    pub reader_connections: u32,

    /// Longest a database statement of the node channel or the HTTP side
    /// may run (PostgreSQL's statement_timeout, set on every connection),
    /// and longest a heartbeat batch may take; the upkeep's statements
    /// (retention, period sweeps) may run 30 times as long. A batch past it
    /// is rolled back and its heartbeats answered UNAVAILABLE (agents send
    /// again); a read past it is answered 503.
    #[arg(
        long,
        env = "TALLY_STATEMENT_TIMEOUT",
        default_value = text(db::DEFAULT_STATEMENT_TIMEOUT),
        value_parser = parse_positive_duration,
        value_name = "DURATION"
    )]
    pub statement_timeout: Duration,

    /// Longest a database statement may wait for a row lock (PostgreSQL's
    /// lock_timeout, set on every connection).
    #[arg(
        long,
        env = "TALLY_LOCK_TIMEOUT",
        default_value = text(db::DEFAULT_LOCK_TIMEOUT),
        value_parser = parse_positive_duration,
        value_name = "DURATION"
    )]
    pub lock_timeout: Duration,

    /// Expensive reads this collector serves at once (1 to 256): history
    /// (`/api/v1/nodes/{id}/history`) and window rankings. More are
    /// answered 503 with `Retry-After: 1` (the dashboard asks again), so
    /// that readers cannot hold the database's time the heartbeats need.
    #[arg(
        long,
        env = "TALLY_MAX_EXPENSIVE_READS",
        default_value_t = serve::defaults::MAX_EXPENSIVE_READS,
        value_parser = clap::value_parser!(u32).range(1..=256),
        value_name = "N"
    )]
    pub max_expensive_reads: u32,

    /// Live event streams (`/api/v1/events`: dashboards and other
    /// subscribers) this collector keeps open at once (1 to 100000); more
    /// are answered 503 with `Retry-After: 1`.
    #[arg(
        long,
        env = "TALLY_MAX_EVENT_STREAMS",
        default_value_t = serve::defaults::MAX_EVENT_STREAMS,
        value_parser = clap::value_parser!(u32).range(1..=100_000),
        value_name = "N"
    )]
    pub max_event_streams: u32,

    /// Concurrent heartbeat calls on one connection (1 to 100000). Each
    /// agent keeps one heartbeat stream open; a load balancer may carry
    /// thousands of agents on one connection.
    #[arg(
        long,
        env = "TALLY_MAX_STREAMS_PER_CONNECTION",
        default_value_t = serve::defaults::MAX_STREAMS_PER_CONNECTION,
        value_parser = clap::value_parser!(u32).range(1..=100_000),
        value_name = "N"
    )]
    pub max_streams_per_connection: u32,

    /// One node's heartbeats are taken at most one per this interval, after
    /// a burst of 20 (what an agent sends at once after an outage); more
    /// are refused with RESOURCE_EXHAUSTED and the time to wait, which the
    /// agent honours. Nothing is lost: the next heartbeat brings the same
    /// cumulative counters. Counted per collector replica. `0s`: no limit.
    #[arg(
        long,
        env = "TALLY_MIN_HEARTBEAT_INTERVAL",
        default_value = text(serve::defaults::MIN_HEARTBEAT_INTERVAL),
        value_parser = parse_min_heartbeat_interval,
        value_name = "DURATION"
    )]
    pub min_heartbeat_interval: Duration,

    /// Interface names with history per node and minute. A node that
    /// reports more names in one minute (one that makes names up) gets no
    /// history rows for the rest: history cannot be flooded. Their traffic
    /// is still in the node's totals, periods and history.
    #[arg(
        long,
        env = "TALLY_MAX_INTERFACE_NAMES",
        default_value_t = ingest::DEFAULT_MAX_INTERFACE_NAMES,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000),
        value_name = "N"
    )]
    pub max_interface_names: u32,

    /// A heartbeat stream that sends nothing for this long is ended (an
    /// agent sends every few seconds, and opens a new stream with its next
    /// heartbeat), so that calls that only hold streams open are let go.
    #[arg(
        long,
        env = "TALLY_STREAM_IDLE_TIMEOUT",
        default_value = text(serve::defaults::STREAM_IDLE_TIMEOUT),
        value_parser = parse_positive_duration,
        value_name = "DURATION"
    )]
    pub stream_idle_timeout: Duration,

    /// A new connection (node channel or HTTP) must send its first bytes
    /// within this time, and finish its TLS handshake (if any) within it, or
    /// it is closed: connections that only hold a socket cannot pile up.
    #[arg(
        long,
        env = "TALLY_HANDSHAKE_TIMEOUT",
        default_value = text(serve::defaults::HANDSHAKE_TIMEOUT),
        value_parser = parse_positive_duration,
        value_name = "DURATION"
    )]
    pub handshake_timeout: Duration,

    /// Connections open at once on the node channel (each agent keeps one;
    /// a load balancer that speaks HTTP/2 carries many agents on each).
    /// More are closed as soon as they are accepted. Each takes a file
    /// descriptor: the collector raises its open-file limit to the hard
    /// limit and warns when the connection limits do not fit in it.
    #[arg(
        long,
        env = "TALLY_MAX_CONNECTIONS",
        default_value_t = serve::defaults::MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub max_connections: u32,

    /// Connections open at once on the node channel from one source address.
    /// An agent needs one; a load balancer that keeps the nodes' addresses
    /// shows each node's, one that speaks HTTP/2 multiplexes up to
    /// --max-streams-per-connection agents on each connection. Behind a
    /// TCP-level balancer that hides the nodes' addresses, raise it to the
    /// share of the fleet one balancer address carries.
    #[arg(
        long,
        env = "TALLY_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = serve::defaults::MAX_CONNECTIONS_PER_ADDRESS,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub max_connections_per_address: u32,

    /// Connections open at once on the HTTP side (browsers, API clients,
    /// Prometheus). More are closed as soon as they are accepted.
    #[arg(
        long,
        env = "TALLY_MAX_HTTP_CONNECTIONS",
        default_value_t = serve::defaults::MAX_HTTP_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub max_http_connections: u32,

    /// Connections open at once on the HTTP side from one source address (a
    /// browser opens a few; an office behind one NAT address shares it).
    #[arg(
        long,
        env = "TALLY_MAX_HTTP_CONNECTIONS_PER_ADDRESS",
        default_value_t = serve::defaults::MAX_HTTP_CONNECTIONS_PER_ADDRESS,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub max_http_connections_per_address: u32,

    /// An HTTP/1 request's headers must come within this time after the
    /// connection is ready for it; an idle keep-alive connection is closed
    /// after it too.
    #[arg(
        long,
        env = "TALLY_HEADER_READ_TIMEOUT",
        default_value = text(serve::defaults::HEADER_READ_TIMEOUT),
        value_parser = parse_positive_duration,
        value_name = "DURATION"
    )]
    pub header_read_timeout: Duration,

    /// Where to POST quota events (JSON; each call is signed with
    /// --webhook-secret and retried with backoff until a 2xx answer, up to
    /// 12 attempts), e.g. `https://hooks.example.com/tally`. Needs
    /// --webhook-secret. Without it, no webhook is called.
    #[arg(
        long,
        env = "TALLY_WEBHOOK_URL",
        requires = "webhook_secret",
        value_parser = webhook::parse_url,
        value_name = "URL"
    )]
    pub webhook_url: Option<webhook::Url>,

    /// The key of the webhook calls' signature: each call carries
    /// `x-tally-timestamp: <Unix seconds>`, `x-tally-delivery: <id>` and
    /// `x-tally-signature: v1=<hex HMAC-SHA256 of "<timestamp>.<id>.<body>">`
    /// (docs/billing.md shows how to check it). Required with
    /// --webhook-url; without it, no webhook is called. Meant to be set in
    /// the environment (TALLY_WEBHOOK_SECRET), not on the command line
    /// where other users can see it.
    #[arg(
        long,
        env = "TALLY_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub webhook_secret: Option<String>,

    /// Delivered webhook calls are kept (in `webhook_deliveries`) this long,
    /// then deleted; calls not delivered stay until removed by hand.
    #[arg(
        long,
        env = "TALLY_WEBHOOK_RETENTION",
        default_value = text(webhook::DEFAULT_RETENTION),
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub webhook_retention: Duration,
}

/// A default duration as the flags take it and their help shows it
/// (`30s`, `5m`, `30days`).
fn text(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// At most a minute (an agent's interval is at least a second; a limit
/// above a minute would refuse every agent's regular heartbeats).
fn parse_min_heartbeat_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > Duration::from_secs(60) {
        return Err("must be at most 1m (0s: no limit)".into());
    }
    Ok(d)
}

/// The certificate and key files to serve TLS with.
pub type TlsFiles = Option<(PathBuf, PathBuf)>;

/// What `serve` checks of its flags and files before it connects to the
/// database.
#[derive(Debug)]
pub struct Checked {
    tls: TlsFiles,
    http_tls: TlsFiles,
    tokens: http::TokenSet,
}

/// Checks the flags that can be checked without the database: TLS files
/// given or plaintext asked for (on each side), and the HTTP tokens' form.
pub fn check(args: &ServeArgs) -> anyhow::Result<Checked> {
    Ok(Checked {
        tls: tls_files(args)?,
        http_tls: http_tls_files(args)?,
        tokens: token_sources(args).load()?,
    })
}

/// The HTTP side's certificate and key; `None` (plain HTTP) only on a
/// loopback address or when asked for explicitly.
fn http_tls_files(args: &ServeArgs) -> anyhow::Result<TlsFiles> {
    match (&args.http_tls_cert, &args.http_tls_key, args.http_listen) {
        (Some(cert), Some(key), _) => Ok(Some((cert.clone(), key.clone()))),
        (_, _, Some(address)) if !address.ip().is_loopback() && !args.http_insecure_plaintext => {
            anyhow::bail!(
                "--http-listen {address} would serve plain HTTP beyond this host: pass \
                 --http-tls-cert and --http-tls-key, listen on a loopback address behind a TLS \
                 proxy, or pass --http-insecure-plaintext"
            )
        }
        _ => Ok(None),
    }
}

fn token_sources(args: &ServeArgs) -> TokenSources {
    TokenSources {
        admin_token: args.admin_token.clone(),
        admin_token_file: args.admin_token_file.clone(),
        read_token: args.read_token.clone(),
        read_token_file: args.read_token_file.clone(),
    }
}

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

pub async fn run(pool: PgPool, args: ServeArgs, checked: Checked) -> anyhow::Result<()> {
    let Checked {
        tls,
        http_tls,
        tokens,
    } = checked;
    if !args.no_migrate {
        let count = db::migrate(&pool)
            .await
            .context("cannot apply the database migrations")?;
        tracing::info!(target: LOG_TARGET, migrations = count, "database schema up to date");
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
    let token_sources = token_sources(&args);
    let tokens = http::Tokens::with_failure_limit(tokens, args.max_failed_authentications);
    let options = tally_collector::serve::Options {
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
        http_tls,
        client_ca: args.client_ca.clone(),
        offline_after: args.offline_after,
        tokens: tokens.clone(),
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
            (Some(url), Some(secret)) => Some(webhook::Config {
                retention: args.webhook_retention,
                ..webhook::Config::new(url, &secret).context("cannot use --webhook-secret")?
            }),
            _ => None,
        },
    };
    if let Some(schedule) = args.period_reset {
        tracing::info!(target: LOG_TARGET, %schedule, "period counters reset on schedule");
    }
    // After every check of the settings: a refusal stays one line.
    tracing::info!(target: LOG_TARGET, version = %tally_collector::VERSION, "tally-collector serving");
    let listeners = tally_collector::serve::bind(&options).await?;
    token_sources.reload_on_sighup(tokens)?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let shutdown = async move {
        let signal = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(target: LOG_TARGET, signal, "stopping");
    };
    tally_collector::serve::serve(pool, options, listeners, shutdown).await
}
