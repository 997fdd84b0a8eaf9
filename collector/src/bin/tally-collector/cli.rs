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

use clap::{Args, CommandFactory as _, Parser, Subcommand, error::ErrorKind};

use crate::{
    billing::{self, BillingCommand},
    corrections::{anomalies::AnomaliesCommand, calibrate::CalibrateArgs},
    migrate::MigrateArgs,
    node::NodeCommand,
    period::PeriodCommand,
    periods::PeriodsArgs,
    serve::ServeArgs,
    top::TopArgs,
};

/// tally's collector: receives heartbeats from tally agents over gRPC and
/// keeps exact, restart-proof traffic counters and load history in
/// PostgreSQL.
///
/// Every command works on the database given by --database-url or
/// DATABASE_URL.
#[derive(Debug, Parser)]
#[command(name = "tally-collector", version = tally_collector::VERSION)]
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
    ///
    /// TLS as libpq does it: `?sslmode=verify-full&sslrootcert=FILE` checks
    /// the server's certificate and name (use it for any other host);
    /// `disable`, `prefer` (the default: TLS when offered), `require`
    /// and `verify-ca` also work, as do PGSSLMODE and PGSSLROOTCERT.
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
        if let Command::Billing(billing) = &self.command
            && let Some((name, kind, message)) = billing::usage_problem(billing)
        {
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
        Ok(())
    }
}

/// Accepts a log filter only if tracing can use it.
fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{e} (try e.g. `info` or `info,tally_collector=debug`)"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::CommandFactory as _;
    use tally_collector::{
        corrections::calibrate::Adjustment,
        views::rankings::{By, Direction},
    };

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
        (
            "rotate-token",
            "grace",
            "decides one rotation: must be typed",
        ),
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
        // TALLY_INSECURE_PLAINTEXT=false beside TLS: tests/it/cli.rs.
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

    /// The flags' defaults are `serve::Options::new`'s: each default as
    /// the help shows it (`30days`) reads back as the library's value.
    #[test]
    fn serve_defaults_are_the_librarys() {
        let cli = Cli::try_parse_from(["tally-collector", "serve"]).expect("no flags");
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        let options = tally_collector::serve::Options::new(args.listen);
        assert_eq!(args.offline_after, options.offline_after);
        assert_eq!(args.history_retention, options.history_retention);
        assert_eq!(args.max_clock_skew, options.max_clock_skew);
        assert_eq!(args.min_heartbeat_interval, options.min_heartbeat_interval);
        assert_eq!(args.stream_idle_timeout, options.stream_idle_timeout);
        assert_eq!(args.handshake_timeout, options.handshake_timeout);
        assert_eq!(args.header_read_timeout, options.header_read_timeout);
        assert_eq!(args.statement_timeout, options.database.statement_timeout);
        assert_eq!(args.lock_timeout, options.database.lock_timeout);
        assert_eq!(args.reader_connections, options.database.readers);
        assert_eq!(args.max_batch as usize, options.ingest.max_batch);
        assert_eq!(args.writers as usize, options.ingest.writers);
        assert_eq!(
            i64::from(args.max_interface_names),
            options.ingest.max_interface_names
        );
        assert_eq!(
            args.max_expensive_reads as usize,
            options.max_expensive_reads
        );
        assert_eq!(args.max_event_streams as usize, options.max_event_streams);
        assert_eq!(
            args.max_streams_per_connection,
            options.max_streams_per_connection
        );
        assert_eq!(args.max_connections as usize, options.max_connections);
        assert_eq!(
            args.max_connections_per_address as usize,
            options.max_connections_per_address
        );
        assert_eq!(
            args.max_http_connections as usize,
            options.max_http_connections
        );
        assert_eq!(
            args.max_http_connections_per_address as usize,
            options.max_http_connections_per_address
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
                Some(Adjustment::Offset(-5)),
                None,
                Some(Adjustment::Set(9)),
                Some(Adjustment::Offset(7))
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
