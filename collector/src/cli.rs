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
    Args, CommandFactory as _, Parser, Subcommand,
    builder::{BoolishValueParser, PossibleValuesParser, TypedValueParser as _},
    error::ErrorKind,
};
use tally_collector::views::rankings::{self, By, Direction};

use crate::period::Schedule;

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

    /// Reset every node's period counters on a schedule: `monthly:DAY`
    /// (DAY 1 to 31) starts a period on that day of every month at 00:00
    /// UTC (on the last day of shorter months). Safe with several
    /// collectors. Without it, periods are only reset by hand (`period
    /// reset` or the admin API).
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

    /// How far ahead of the collector's clock a node's clock may be before
    /// its heartbeats are refused (e.g. `5m`, `30s`).
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

    /// Concurrent database writers (1 to 64). Each holds one connection
    /// while it writes; the pool has this many connections plus 4.
    #[arg(
        long,
        env = "TALLY_WRITERS",
        default_value_t = 4,
        value_parser = clap::value_parser!(u32).range(1..=64),
        value_name = "N"
    )]
    pub writers: u32,
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
    ];

    /// Options whose values are secrets: their variables' values must not
    /// show in `--help`.
    const SECRETS: &[&str] = &["database-url", "admin-token", "read-token"];

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_option_is_explained() {
        tally_collector::cli_check::check(
            &Cli::command(),
            &tally_collector::cli_check::Policy {
                no_env: NO_ENV,
                secrets: SECRETS,
                other_env: &["DATABASE_URL"],
            },
        );
    }

    #[test]
    fn the_database_help_states_the_real_timeout() {
        let help = tally_collector::cli_check::rendered_help(
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
