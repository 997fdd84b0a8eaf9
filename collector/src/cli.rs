//! The command line of `tally-collector`.
//!
//! # Which options read the environment
//!
//! - Every option of `serve` (the long-running service) and the global
//!   `--database-url` and `--log` read an environment variable
//!   (`DATABASE_URL`, `TALLY_…`), so that a deployment can keep them in an
//!   environment file or a manifest. Secrets (the database URL, the tokens)
//!   are marked `hide_env_values`: `--help` never prints their values.
//! - An option of another command that is the same setting as one of those
//!   (`top --offline-after`) reads the same variable, so that a command run
//!   in the service's environment agrees with the service.
//! - Options that only shape one run of a one-off command (`migrate
//!   --revert-to`, `node list --json`, `period reset --all`, `top --by`, …)
//!   read none: a value left over in the environment would silently change
//!   what the operator typed. The tests below keep an allow-list of the
//!   ones that take a value, each with this reason.
//!
//! Switches that read the environment accept `true`/`false`, `1`/`0`,
//! `yes`/`no` or `on`/`off` there. clap counts such a variable as given even
//! when it says `false` (clap-rs/clap#5591), so a conflict between a switch
//! and other options is checked on the parsed values ([`parse`]) rather
//! than declared to clap.
//!
//! Every option that takes a value shows its default in `--help`, or its
//! help says what happens without it. The tests below check all of this on
//! the whole command tree.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{
    ArgAction, Args, CommandFactory as _, Parser, Subcommand,
    builder::{BoolishValueParser, PossibleValuesParser, TypedValueParser as _},
    error::ErrorKind,
};
use tally_collector::{
    billing::{CountRule, Mode, settings::Field, view},
    corrections::calibrate::Change,
    views::rankings::{self, By, Direction},
    webhook,
};

use crate::{billing_cli, period::Schedule};

/// tally's collector: receives heartbeats from tally agents over gRPC and
/// keeps exact, restart-proof traffic counters and load history in
/// PostgreSQL.
///
/// Every command works on the database given by --database-url or
/// DATABASE_URL.
#[derive(Debug, Parser)]
#[command(name = "tally-collector", version)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,

    /// Which log messages to print on stderr, in tracing's EnvFilter
    /// syntax: a level (`error`, `warn`, `info`, `debug`, `trace`), or
    /// per-module directives such as `info,tally_collector=debug`.
    #[arg(
        long,
        env = "TALLY_LOG",
        default_value = "info",
        global = true,
        value_name = "FILTER",
        value_parser = parse_log_filter
    )]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// The PostgreSQL database every command works on, e.g.
    /// `postgres://tally:secret@db.example/tally` (required: there is no
    /// default).
    ///
    /// The form is `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (port 5432
    /// unless given); over a Unix socket,
    /// `postgres://tally@localhost/tally?host=/run/postgresql`. A database
    /// that refuses connections (still starting) is retried for up to 5
    /// seconds.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: accept the agents' heartbeats (gRPC) and, with
    /// --http-listen, serve the dashboard, the JSON API and /metrics.
    ///
    /// Applies pending migrations first (unless --no-migrate). Several
    /// collectors may serve one database. Stops cleanly on SIGTERM or
    /// SIGINT.
    Serve(Box<ServeArgs>),
    /// Apply the database migrations that are not applied yet (or revert
    /// them with --revert-to).
    Migrate(MigrateArgs),
    /// Enrol, list and remove nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Reset the period counters of one node or of every node.
    #[command(subcommand)]
    Period(PeriodCommand),
    /// Show the ranking and every node's status, load and traffic, read
    /// from the database (once, or every --interval with --watch).
    Top(TopArgs),
    /// Show and change billing settings: the fleet's defaults and each
    /// node's own values (anchor day, time zone, mode, count rule, quota,
    /// thresholds, max rate).
    ///
    /// A node uses its own value of a setting where it has one, else the
    /// fleet's. A changed anchor day or time zone moves the end of the
    /// current period, never its start.
    #[command(subcommand)]
    Billing(BillingCommand),
    /// List a node's closed billing periods, newest first, with their
    /// counters, usage (under the mode each was closed under), and peak and
    /// 95th percentile rates.
    Periods(PeriodsArgs),
    /// Set or offset a node's period or total counters (e.g. to match the
    /// provider's bill); each change is recorded with who made it and why.
    ///
    /// Each counter option takes a CHANGE: `=N` sets the counter to N
    /// bytes, `+N` adds N bytes, `-N` subtracts N bytes. The period is part
    /// of the total: changing a period counter moves its total by the same
    /// amount; setting a total changes only the total. Refused, changing
    /// nothing, if a counter would go below 0 or above 2^63 - 1, a period
    /// would exceed its total, or nothing would change. Example:
    /// `calibrate web-1 --period-download =500000000000 --actor alice
    /// --reason "provider bill #123"`.
    Calibrate(CalibrateArgs),
    /// List a node's calibrations, newest first: who, when, why, and the
    /// counters before and after.
    Calibrations {
        /// The node: its id or its name.
        node: String,
    },
    /// List the deltas held as anomalies (too large for their interface),
    /// and accept or discard them.
    #[command(subcommand)]
    Anomalies(AnomaliesCommand),
}

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
    /// checks (`/healthz`, `/readyz`). It is plain HTTP: put a
    /// TLS-terminating proxy in front when it leaves the host. Without it,
    /// no HTTP is served.
    #[arg(long, env = "TALLY_HTTP_LISTEN", value_name = "ADDRESS")]
    pub http_listen: Option<SocketAddr>,

    /// A node not heard from for this long is shown offline (in the API,
    /// the dashboard and /metrics). Keep it a few heartbeat intervals long,
    /// e.g. `30s` or `2m`.
    #[arg(
        long,
        env = "TALLY_OFFLINE_AFTER",
        default_value = "30s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub offline_after: Duration,

    /// Bearer token for the HTTP admin endpoints (enrol and remove nodes,
    /// reset periods); it also reads. Use at least 32 random characters.
    /// Without it, the admin endpoints answer 403.
    #[arg(
        long,
        env = "TALLY_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,

    /// Bearer token required to read the HTTP API, the event stream and
    /// `/metrics` (the admin token reads too). Without it, reading is open
    /// to anyone who reaches --http-listen.
    #[arg(
        long,
        env = "TALLY_READ_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub read_token: Option<String>,

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
        default_value = "30days",
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
        default_value = "5m",
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
        default_value_t = 512,
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
        default_value_t = 4,
        value_parser = clap::value_parser!(u32).range(1..=64),
        value_name = "N"
    )]
    pub writers: u32,

    /// Database connections of the HTTP side (1 to 64): the API, the
    /// dashboard, the event stream and `/metrics`.
    #[arg(
        long,
        env = "TALLY_READER_CONNECTIONS",
        default_value_t = 4,
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
        default_value = "10s",
        value_parser = parse_positive_duration,
        value_name = "DURATION"
    )]
    pub statement_timeout: Duration,

    /// Longest a database statement may wait for a row lock (PostgreSQL's
    /// lock_timeout, set on every connection).
    #[arg(
        long,
        env = "TALLY_LOCK_TIMEOUT",
        default_value = "5s",
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
        default_value_t = 2,
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
        default_value_t = 256,
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
        default_value_t = 4096,
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
        default_value = "500ms",
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
        default_value_t = 4096,
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
        default_value = "2m",
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
        default_value = "10s",
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
        default_value_t = 100_000,
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
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub max_connections_per_address: u32,

    /// Connections open at once on the HTTP side (browsers, API clients,
    /// Prometheus). More are closed as soon as they are accepted.
    #[arg(
        long,
        env = "TALLY_MAX_HTTP_CONNECTIONS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub max_http_connections: u32,

    /// Connections open at once on the HTTP side from one source address (a
    /// browser opens a few; an office behind one NAT address shares it).
    #[arg(
        long,
        env = "TALLY_MAX_HTTP_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256,
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
        default_value = "30s",
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
    /// `x-tally-signature: sha256=<hex HMAC-SHA256 of the body>`. Required
    /// with --webhook-url; without it, no webhook is called. Meant to be
    /// set in the environment (TALLY_WEBHOOK_SECRET), not on the command
    /// line where other users can see it.
    #[arg(
        long,
        env = "TALLY_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub webhook_secret: Option<String>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Revert the migrations newer than VERSION instead of applying (a
    /// migration's version is the number its file name starts with; 0
    /// reverts all, dropping every table of tally and its data). Without
    /// it, pending migrations are applied.
    #[arg(long, value_name = "VERSION")]
    pub revert_to: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Enrol a node: prints its id and secret token (shown once; only a hash
    /// is stored). Give the token to the node's agent (`--token-file`).
    Add {
        /// A name for the node, unique in the fleet (e.g. its host name).
        name: String,
        /// Print only the token, on one line (for scripts).
        #[arg(long)]
        token_only: bool,
    },
    /// List the nodes with their traffic counters (bytes).
    List {
        /// Print a JSON array instead of a table (counters as decimal
        /// strings: they may exceed what JSON numbers hold exactly).
        #[arg(long)]
        json: bool,
    },
    /// Remove a node and everything stored of it (counters and history).
    Remove {
        /// The node to remove: its id (as printed by `node add`) or its
        /// name.
        node: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PeriodCommand {
    /// Reset period counters now (periodUpload/periodDownload to 0,
    /// periodStart to now).
    Reset {
        /// The node whose period to reset: its id or its name (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        node: Option<String>,
        /// Reset the period of every node instead of one.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("changes")
        .required(true)
        .multiple(true)
        .args(["period_upload", "period_download", "total_upload", "total_download"])
))]
pub struct CalibrateArgs {
    /// The node to calibrate: its id or its name.
    pub node: String,
    /// Change the current period's upload (bytes sent): `=N`, `+N` or
    /// `-N`; the total upload moves by the same amount. Without it, the
    /// period upload stays.
    #[arg(long, value_name = "CHANGE", allow_hyphen_values = true)]
    pub period_upload: Option<Change>,
    /// Change the current period's download (bytes received): `=N`, `+N`
    /// or `-N`; the total download moves by the same amount. Without it,
    /// the period download stays.
    #[arg(long, value_name = "CHANGE", allow_hyphen_values = true)]
    pub period_download: Option<Change>,
    /// Change the total upload: `=N` sets it (the period stays), `+N`/`-N`
    /// offsets it (on top of a period change). Without it, it moves only
    /// with the period upload.
    #[arg(long, value_name = "CHANGE", allow_hyphen_values = true)]
    pub total_upload: Option<Change>,
    /// Change the total download: `=N` sets it (the period stays),
    /// `+N`/`-N` offsets it (on top of a period change). Without it, it
    /// moves only with the period download.
    #[arg(long, value_name = "CHANGE", allow_hyphen_values = true)]
    pub total_download: Option<Change>,
    /// Who makes the change (required; recorded), e.g. your name: 1 to 200
    /// characters.
    #[arg(long, value_name = "NAME")]
    pub actor: String,
    /// Why the change is made (required; recorded), e.g. "provider bill
    /// #123": 1 to 1000 characters.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum AnomaliesCommand {
    /// List every node's anomalies, newest first (at most 1000).
    List {
        /// Which anomalies to list: `held` (waiting for a decision),
        /// `accepted`, `discarded` or `all`.
        #[arg(long, default_value = "held", value_parser = PossibleValuesParser::new(["held", "accepted", "discarded", "all"]))]
        status: String,
    },
    /// Accept an anomaly: add its bytes to the node's totals and to the
    /// period it was held in (the current one, or the archived one).
    Accept(DecideArgs),
    /// Discard an anomaly: add nothing (it stays listed with the decision).
    Discard(DecideArgs),
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The anomaly's id (as `anomalies list` shows it).
    pub id: i64,
    /// Who decides (required; recorded), e.g. your name: 1 to 200
    /// characters.
    #[arg(long, value_name = "NAME")]
    pub actor: String,
    /// Why (required; recorded), e.g. "a backup really ran at line rate":
    /// 1 to 1000 characters.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// Show a node's effective billing settings (each marked as its own or
    /// the fleet's) and its current period: counters, usage, share of the
    /// quota, forecast at the period's end, peak and 95th percentile rates.
    Show {
        /// The node: its id or its name.
        node: String,
        #[command(flatten)]
        output: BillingOutput,
    },
    /// Change a node's own billing settings, then show its billing.
    ///
    /// Only the settings given change; --clear FIELD removes the node's own
    /// value, so that the fleet's applies again. Example: `billing set web-1
    /// --anchor-day 15 --time-zone Europe/Berlin --quota 2TiB`.
    Set {
        /// The node: its id or its name.
        node: String,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        output: BillingOutput,
    },
    /// Show the fleet's default billing settings (what applies to every
    /// node without its own value), or change them when settings are given.
    ///
    /// Only the settings given change; --clear FIELD sets anchor-day or
    /// quota to none and any other setting to its built-in default (UTC,
    /// sum, all, 80,100, 100Gbit).
    Defaults {
        #[command(flatten)]
        settings: SettingsArgs,
        /// Print the JSON that `GET /api/v1/billing/defaults` answers
        /// instead of text (counters as decimal strings).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct BillingOutput {
    /// The same setting (and variable) as `serve --period-reset`: nodes
    /// whose settings have no anchor day use this schedule's day, in UTC.
    /// Without it, such nodes' periods are shown as ending only on request.
    #[arg(long, env = "TALLY_PERIOD_RESET", value_name = "SCHEDULE")]
    pub period_reset: Option<Schedule>,
    /// Print the JSON that `GET /api/v1/nodes/{id}/billing` answers instead
    /// of text (counters as decimal strings).
    #[arg(long)]
    pub json: bool,
}

/// The settings `billing set` and `billing defaults` change.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// The day of the month periods start on, 1 to 31, at local midnight
    /// in the time zone (in shorter months, on their last day). Without
    /// it, unchanged.
    #[arg(long, value_name = "DAY", value_parser = billing_cli::parse_anchor_day)]
    pub anchor_day: Option<u32>,
    /// The IANA time zone periods start in, e.g. `Europe/Berlin` or `UTC`.
    /// Without it, unchanged.
    #[arg(long, value_name = "ZONE", value_parser = billing_cli::parse_time_zone)]
    pub time_zone: Option<String>,
    /// How usage is billed: `sum` (upload + download), `max` (the larger),
    /// `upload`, `download`, or `p95` (the 95th percentile of 5-minute
    /// rates, in bytes per second). Without it, unchanged.
    #[arg(long, value_name = "MODE", value_parser = PossibleValuesParser::new(["sum", "max", "upload", "download", "p95"]).try_map(|s| s.parse::<Mode>()))]
    pub mode: Option<Mode>,
    /// Which interfaces count: `all` (every interface but loopback) or
    /// `uplink` (physical interfaces and those carrying a default route,
    /// so that container traffic is not counted twice). Without it,
    /// unchanged.
    #[arg(long, value_name = "RULE", value_parser = PossibleValuesParser::new(["all", "uplink"]).try_map(|s| s.parse::<CountRule>()))]
    pub count_rule: Option<CountRule>,
    /// The traffic limit per period, in bytes (in mode p95, bytes per
    /// second): a whole number, or a number with a unit (any case): kB,
    /// MB, GB, TB, PB (powers of 1000), KiB, MiB, GiB, TiB, PiB (powers of
    /// 1024), or kbit, Mbit, Gbit, Tbit (bits), e.g. `500GiB`, `1.5TB`,
    /// `100Mbit`; it must come to a whole number of bytes. Without it,
    /// unchanged.
    #[arg(long, value_name = "BYTES", value_parser = billing_cli::parse_quota)]
    pub quota: Option<i64>,
    /// Percentages of the quota at which a quota event fires (once per
    /// period each), comma-separated, e.g. `80,100`: at most 10, each 1 to
    /// 1000; `none` for no events. Without it, unchanged.
    #[arg(long, value_name = "PERCENTS", value_parser = billing_cli::parse_thresholds)]
    pub thresholds: Option<billing_cli::Percents>,
    /// The most bytes per second one interface carries in one direction (a
    /// larger delta is held as an anomaly), with the units of --quota and
    /// an optional `/s`, e.g. `10Gbit` (= 1250000000). Without it,
    /// unchanged.
    #[arg(long, value_name = "BYTES_PER_S", value_parser = billing_cli::parse_max_rate)]
    pub max_rate: Option<i64>,
    /// Settings to clear, repeated or comma-separated: anchor-day,
    /// time-zone, mode, count-rule, quota, thresholds, max-rate. On a node,
    /// its own value goes (the fleet's applies); on the fleet, anchor-day
    /// and quota become none and the others their built-in defaults.
    /// Without it, nothing is cleared.
    #[arg(long, value_name = "FIELD", value_delimiter = ',', action = ArgAction::Append, value_parser = PossibleValuesParser::new(Field::ALL.map(Field::flag)).try_map(|s| s.parse::<Field>()))]
    pub clear: Vec<Field>,
}

#[derive(Debug, Args)]
pub struct PeriodsArgs {
    /// The node: its id or its name.
    pub node: String,
    /// How many periods to list, newest first (1 to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(view::MAX_LIMIT)), value_name = "N")]
    pub limit: u32,
    /// Print the JSON that `GET /api/v1/nodes/{id}/periods` answers instead
    /// of a table (counters as decimal strings).
    #[arg(long)]
    pub json: bool,
}

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

/// Parses the command line like [`Cli::parse`], then checks what clap
/// cannot check by itself ([`Cli::check`]); on a mistake, prints clap's
/// error with the usage and exits with status 2.
pub fn parse() -> Cli {
    let cli = Cli::parse();
    if let Err(error) = cli.check() {
        error.exit();
    }
    cli
}

impl Cli {
    /// The rules that depend on values rather than on which options are
    /// present: `serve --insecure-plaintext` (when true) excludes TLS.
    pub fn check(&self) -> Result<(), clap::Error> {
        if let Command::Serve(serve) = &self.command
            && serve.insecure_plaintext
            && (serve.tls_cert.is_some() || serve.tls_key.is_some())
        {
            let mut command = Cli::command();
            command.build();
            let message = "--insecure-plaintext cannot be used with --tls-cert/--tls-key \
                           (check TALLY_INSECURE_PLAINTEXT, TALLY_TLS_CERT and TALLY_TLS_KEY)";
            let error = match command.find_subcommand_mut("serve") {
                Some(serve) => serve.error(ErrorKind::ArgumentConflict, message),
                None => command.error(ErrorKind::ArgumentConflict, message),
            };
            return Err(error);
        }
        let billing = match &self.command {
            Command::Billing(BillingCommand::Set { settings, .. }) => Some(("set", settings)),
            Command::Billing(BillingCommand::Defaults { settings, .. }) => {
                Some(("defaults", settings))
            }
            _ => None,
        };
        if let Some((name, settings)) = billing {
            let problem = match settings.patch() {
                Err(conflict) => Some((ErrorKind::ArgumentConflict, conflict)),
                Ok(patch) if patch.is_empty() && name == "set" => Some((
                    ErrorKind::MissingRequiredArgument,
                    "give at least one setting to change, or --clear FIELD".to_owned(),
                )),
                Ok(_) => None,
            };
            if let Some((kind, message)) = problem {
                let mut command = Cli::command();
                command.build();
                let error = match command
                    .find_subcommand_mut("billing")
                    .and_then(|billing| billing.find_subcommand_mut(name))
                {
                    Some(sub) => sub.error(kind, message),
                    None => command.error(kind, message),
                };
                return Err(error);
            }
        }
        Ok(())
    }
}

/// Accepts a log filter only if tracing can use it.
fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{e} (try e.g. `info` or `info,tally_collector=debug`)"))
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !(rankings::MIN_WINDOW..=rankings::MAX_WINDOW).contains(&d) {
        return Err("must be from 1m to 366d".into());
    }
    Ok(d)
}

/// A database time limit: from 1 ms to a day (0 would turn it off).
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(86_400) {
        return Err("must be from 1ms to 1day".into());
    }
    Ok(d)
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

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Options that take a value and read no environment variable, with
    /// the reason (see the rule at the top of this module).
    const NO_ENV: &[(&str, &str, &str)] = &[
        (
            "migrate",
            "revert-to",
            "one-off and destructive: must be typed",
        ),
        ("top", "interval", "shapes one look at the data"),
        ("top", "by", "shapes one look at the data"),
        ("top", "direction", "shapes one look at the data"),
        ("top", "limit", "shapes one look at the data"),
        ("top", "window", "shapes one look at the data"),
        ("calibrate", "period-upload", "a one-off correction"),
        ("calibrate", "period-download", "a one-off correction"),
        ("calibrate", "total-upload", "a one-off correction"),
        ("calibrate", "total-download", "a one-off correction"),
        ("calibrate", "actor", "audited: must be typed"),
        ("calibrate", "reason", "audited: must be typed"),
        ("list", "status", "shapes one look at the data"),
        ("accept", "actor", "audited: must be typed"),
        ("accept", "reason", "audited: must be typed"),
        ("discard", "actor", "audited: must be typed"),
        ("discard", "reason", "audited: must be typed"),
        ("set", "anchor-day", "changes settings: must be typed"),
        ("set", "time-zone", "changes settings: must be typed"),
        ("set", "mode", "changes settings: must be typed"),
        ("set", "count-rule", "changes settings: must be typed"),
        ("set", "quota", "changes settings: must be typed"),
        ("set", "thresholds", "changes settings: must be typed"),
        ("set", "max-rate", "changes settings: must be typed"),
        ("set", "clear", "changes settings: must be typed"),
        ("defaults", "anchor-day", "changes settings: must be typed"),
        ("defaults", "time-zone", "changes settings: must be typed"),
        ("defaults", "mode", "changes settings: must be typed"),
        ("defaults", "count-rule", "changes settings: must be typed"),
        ("defaults", "quota", "changes settings: must be typed"),
        ("defaults", "thresholds", "changes settings: must be typed"),
        ("defaults", "max-rate", "changes settings: must be typed"),
        ("defaults", "clear", "changes settings: must be typed"),
        ("periods", "limit", "shapes one look at the data"),
    ];

    /// Options whose values are secrets: their variables' values must not
    /// show in `--help`.
    const SECRETS: &[&str] = &[
        "database-url",
        "admin-token",
        "read-token",
        "webhook-secret",
    ];

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_option_is_explained() {
        tally_testkit::cli_check::check(
            &Cli::command(),
            &tally_testkit::cli_check::Policy {
                no_env: NO_ENV,
                secrets: SECRETS,
                other_env: &["DATABASE_URL"],
            },
        );
    }

    #[test]
    fn the_database_help_states_the_real_timeout() {
        let help = tally_testkit::cli_check::rendered_help(
            Cli::command(),
            &["tally-collector".to_owned()],
        );
        let seconds = tally_collector::db::CONNECT_TIMEOUT.as_secs();
        assert!(
            help.contains(&format!("for up to {seconds} seconds")),
            "{help}"
        );
    }

    #[test]
    fn a_bad_log_filter_is_a_usage_error() {
        let error = Cli::try_parse_from(["tally-collector", "--log", "info,[", "top"])
            .expect_err("bad filter");
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
        assert!(error.to_string().contains("--log"), "{error}");
    }

    #[test]
    fn plaintext_and_tls_exclude_each_other() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["tally-collector", "serve"][..], args].concat())
                .and_then(|cli| cli.check())
        };
        let error = parse(&["--insecure-plaintext", "--tls-cert", "c", "--tls-key", "k"])
            .expect_err("conflict");
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
        let text = error.to_string();
        assert!(text.contains("cannot be used with"), "{text}");
        assert!(text.contains("Usage: tally-collector serve"), "{text}");
        // TALLY_INSECURE_PLAINTEXT=false beside TLS: tests/cli.rs.
        parse(&["--insecure-plaintext"]).expect("plaintext alone");
    }

    #[test]
    fn a_webhook_needs_a_secret_and_an_http_url() {
        let parse =
            |args: &[&str]| Cli::try_parse_from([&["tally-collector", "serve"][..], args].concat());
        let error =
            parse(&["--webhook-url", "https://hooks.example.invalid/t"]).expect_err("no secret");
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        assert!(error.to_string().contains("--webhook-secret"), "{error}");
        let error = parse(&["--webhook-url", "ftp://x.invalid/", "--webhook-secret", "s"])
            .expect_err("not http");
        assert!(error.to_string().contains("http://"), "{error}");
        let cli = parse(&[
            "--webhook-url",
            "https://hooks.example.invalid/t",
            "--webhook-secret",
            "s",
        ])
        .expect("a webhook");
        let Command::Serve(serve) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(
            serve.webhook_url.as_ref().map(|u| u.as_str()),
            Some("https://hooks.example.invalid/t")
        );
    }

    #[test]
    fn schedules_and_intervals_are_checked() {
        let error = Cli::try_parse_from(["tally-collector", "serve", "--period-reset", "weekly:1"])
            .expect_err("bad schedule");
        assert!(error.to_string().contains("expected monthly:DAY"));
        let error =
            Cli::try_parse_from(["tally-collector", "serve", "--heartbeat-interval", "500ms"])
                .expect_err("too short");
        assert!(error.to_string().contains("at least 1s"));
    }

    #[test]
    fn calibrations_take_changes_an_actor_and_a_reason() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["tally-collector", "calibrate", "web-1"][..], args].concat())
        };
        let Cli {
            command: Command::Calibrate(args),
            ..
        } = parse(&[
            "--period-upload",
            "-5",
            "--total-download=+7",
            "--total-upload",
            "=9",
            "--actor",
            "alice",
            "--reason",
            "bill #1",
        ])
        .expect("valid")
        else {
            panic!("not calibrate");
        };
        assert_eq!(
            (
                args.period_upload,
                args.period_download,
                args.total_upload,
                args.total_download
            ),
            (
                Some(Change::Offset(-5)),
                None,
                Some(Change::Set(9)),
                Some(Change::Offset(7))
            )
        );
        assert_eq!(
            (args.actor.as_str(), args.reason.as_str()),
            ("alice", "bill #1")
        );
        let kind = |args: &[&str]| parse(args).expect_err("refused").kind();
        assert_eq!(
            kind(&["--actor", "a", "--reason", "r"]),
            ErrorKind::MissingRequiredArgument,
            "no change"
        );
        assert_eq!(
            kind(&["--period-upload", "+1", "--reason", "r"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["--period-upload", "+1", "--actor", "a"]),
            ErrorKind::MissingRequiredArgument
        );
        let error = parse(&["--period-upload", "5", "--actor", "a", "--reason", "r"])
            .expect_err("no sign")
            .to_string();
        assert!(error.contains("=N sets the counter to N bytes"), "{error}");
    }

    #[test]
    fn top_options_are_checked() {
        let Cli {
            command: Command::Top(top),
            ..
        } = Cli::try_parse_from(["tally-collector", "top"]).expect("defaults")
        else {
            panic!("not top");
        };
        assert_eq!(
            (top.by, top.direction, top.limit, top.window),
            (By::Total, Direction::Both, 10, Duration::from_secs(86_400))
        );
        assert!(!top.watch && !top.bytes);
        for (flag, value, message) in [
            ("--by", "bogus", "possible values: total, period, window"),
            (
                "--direction",
                "up",
                "possible values: upload, download, both",
            ),
            ("--limit", "0", "not in 1..=1000"),
            ("--limit", "1001", "not in 1..=1000"),
            ("--window", "30s", "from 1m to 366d"),
            ("--interval", "100ms", "at least 1s"),
        ] {
            let error = Cli::try_parse_from(["tally-collector", "top", flag, value])
                .expect_err(value)
                .to_string();
            assert!(error.contains(message), "{flag} {value}: {error}");
        }
    }
}
