//! The command line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{
    Args, Parser, Subcommand,
    builder::{PossibleValuesParser, TypedValueParser as _},
};
use tally_collector::views::rankings::{self, By, Direction};

use crate::period::Schedule;

/// tally's collector: receives heartbeats from tally agents over gRPC and
/// keeps exact, restart-proof traffic counters and load history in
/// PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "tally-collector", version)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or
    /// `tally_collector=debug`.
    #[arg(long, env = "TALLY_LOG", default_value = "info", global = true)]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// The PostgreSQL database, e.g.
    /// `postgres://tally:secret@db.example/tally` or, over a Unix socket,
    /// `postgres://tally@localhost/tally?host=/run/postgresql`.
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
    /// Serve the node channel (gRPC tally.v1.Heartbeat).
    Serve(Box<ServeArgs>),
    /// Apply the database migrations (or revert them).
    Migrate(MigrateArgs),
    /// Enrol, list and remove nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Period counters.
    #[command(subcommand)]
    Period(PeriodCommand),
    /// Show the ranking and every node's status, load and traffic, read
    /// from the database (once, or every --interval with --watch).
    Top(TopArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for the gRPC node channel.
    #[arg(long, env = "TALLY_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Address for the HTTP side: the dashboard (`/`), the JSON API and
    /// its event stream under `/api/v1`, `/metrics`, health (`/healthz`,
    /// `/readyz`). Without it, no HTTP is served.
    #[arg(long, env = "TALLY_HTTP_LISTEN", value_name = "ADDRESS")]
    pub http_listen: Option<SocketAddr>,

    /// A node not heard from for this long is shown offline.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub offline_after: Duration,

    /// Bearer token for the HTTP admin endpoints (enrol and remove nodes,
    /// reset periods). Without it they answer 403. Use at least 32 random
    /// characters.
    #[arg(
        long,
        env = "TALLY_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,

    /// Bearer token required to read the HTTP API, the event stream and
    /// `/metrics` (the admin token reads too). Without it reading is open.
    #[arg(
        long,
        env = "TALLY_READ_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub read_token: Option<String>,

    /// PEM certificate chain for TLS (with --tls-key).
    #[arg(
        long,
        env = "TALLY_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS (with --tls-cert).
    #[arg(
        long,
        env = "TALLY_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,

    /// Serve without TLS: node tokens and counters cross the network in the
    /// clear. Only for a trusted network or a local test.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_plaintext: bool,

    /// Do not apply pending migrations at start.
    #[arg(long)]
    pub no_migrate: bool,

    /// Ask agents to send heartbeats at this interval (at least 1s); by
    /// default each agent keeps its own.
    #[arg(long, value_parser = parse_interval, value_name = "DURATION")]
    pub heartbeat_interval: Option<Duration>,

    /// Reset every node's period counters on a schedule: `monthly:DAY`
    /// starts a period on that day of every month at 00:00 UTC (the last day
    /// of shorter months). Safe with several collectors.
    #[arg(long, env = "TALLY_PERIOD_RESET", value_name = "SCHEDULE")]
    pub period_reset: Option<Schedule>,

    /// How long load and traffic history is kept.
    #[arg(long, env = "TALLY_HISTORY_RETENTION", default_value = "30days", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub history_retention: Duration,

    /// How far ahead of the collector's clock a node's clock may be before
    /// its heartbeats are refused.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub max_clock_skew: Duration,

    /// Most heartbeats written in one transaction.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_batch: u32,

    /// Concurrent database writers (each uses one connection while writing).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub writers: u32,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Revert the migrations newer than VERSION instead (0 reverts all,
    /// dropping every table of tally and its data).
    #[arg(long, value_name = "VERSION")]
    pub revert_to: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Enrol a node: prints its id and secret token (shown once; only a hash
    /// is stored). Give the token to the node's agent (`--token-file`).
    Add {
        /// A name for the node, unique in the fleet.
        name: String,
        /// Print only the token (for scripts).
        #[arg(long)]
        token_only: bool,
    },
    /// List the nodes with their traffic counters.
    List {
        /// Print JSON (counters as decimal strings).
        #[arg(long)]
        json: bool,
    },
    /// Remove a node and everything stored of it.
    Remove {
        /// The node's id or name.
        node: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PeriodCommand {
    /// Reset period counters now (periodUpload/periodDownload to 0,
    /// periodStart to now).
    Reset {
        /// The node's id or name.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        node: Option<String>,
        /// Every node.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Redraw every --interval until Ctrl-C.
    #[arg(long)]
    pub watch: bool,

    /// How often --watch redraws.
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

    /// How many nodes to rank.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=i64::from(rankings::MAX_LIMIT)), value_name = "N")]
    pub limit: u32,

    /// With --by window: how far back history counts (1m to 366d).
    #[arg(long, default_value = "24h", value_parser = parse_window, value_name = "DURATION")]
    pub window: Duration,

    /// Show exact byte counts instead of KiB, MiB, GiB, …
    #[arg(long)]
    pub bytes: bool,

    /// A node not heard from for this long is shown offline.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub offline_after: Duration,
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

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn plaintext_and_tls_exclude_each_other() {
        let error = Cli::try_parse_from([
            "tally-collector",
            "serve",
            "--insecure-plaintext",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ])
        .expect_err("conflict");
        assert!(error.to_string().contains("cannot be used with"));
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
