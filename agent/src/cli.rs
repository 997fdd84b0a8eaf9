//! The command line of `tally-agent`.
//!
//! # Which options read the environment
//!
//! - Every option of `run` (the long-running agent) and the global
//!   `--pin-dir` and `--log` read a `TALLY_…` environment variable, so that
//!   a deployment (a systemd unit's environment file, a DaemonSet) can keep
//!   them out of the command line. The node's token itself is read from
//!   `TALLY_TOKEN` (never from the command line, where other users could see
//!   it in the process list), so it is not a clap option; `run --help` names
//!   it at `--token-file`.
//! - `TALLY_BOOT_ID_FILE` is no option either, and deliberately not in any
//!   help: it is for tests only (a file to read the boot id from instead of
//!   the kernel's, to play a reboot; see [`crate::system::BOOT_ID_FILE_ENV`]).
//! - An option of another command that is the same setting as one of
//!   those (`status --source`, `--include`, `--exclude`) reads the same
//!   variable, so that `status` run in the agent's environment reads what
//!   the agent counts.
//! - Options that only shape one run of a one-off command (`status
//!   --json`) read none: a value left over in the environment would
//!   silently change what was typed. The tests below keep an allow-list
//!   for those that take a value (none today), each with its reason.
//!
//! Switches that read the environment accept `true`/`false`, `1`/`0`,
//! `yes`/`no` or `on`/`off` there. clap counts such a variable as given
//! even when it says `false` (clap-rs/clap#5591), so a switch's
//! requirements are declared for its "on" spellings only ([`ON`]).
//!
//! Every option that takes a value shows its default in `--help`, or its
//! help says what happens without it. The tests below check all of this on
//! the whole command tree.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    ebpf::engine::AttachMode, pins::DEFAULT_PIN_DIR, source::SourceKind, state::DEFAULT_STATE_DIR,
};

/// The values that turn a switch on in its environment variable, as
/// [`clap::builder::BoolishValueParser`] reads them, in lower, upper and
/// title case (a switch on the command line is `true`). A requirement
/// declared for these only does not fire on `false`.
const ON: [&str; 14] = [
    "true", "TRUE", "True", "t", "T", "yes", "YES", "Yes", "y", "Y", "on", "ON", "On", "1",
];

/// tally's node agent: counts the traffic of every network interface but
/// loopback in the kernel (eBPF on the TC ingress and egress hooks), keeps the
/// counters pinned on the bpf filesystem so that restarts lose nothing, and
/// reports them with the load average.
#[derive(Debug, Parser)]
#[command(name = "tally-agent", version = crate::VERSION, propagate_version = true)]
pub struct Cli {
    /// Directory on the bpf filesystem where the counters, their epoch and the
    /// attachments are pinned; `run` creates it. Give each agent its own (one
    /// per network namespace).
    #[arg(long, global = true, env = "TALLY_PIN_DIR", default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,

    /// Which log messages to print on stderr, in tracing's EnvFilter syntax:
    /// a level (`error`, `warn`, `info`, `debug`, `trace`), or per-module
    /// directives such as `info,tally_agent=debug`.
    #[arg(
        long,
        global = true,
        env = "TALLY_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the programs to every counted interface (and to ones
    /// that appear later), then keep watching. Stopping the agent leaves the
    /// kernel counting; a restart adopts what is pinned.
    Run(Box<RunArgs>),
    /// Print each interface's counters, the counter epoch, the boot id and the
    /// load average.
    Status(StatusArgs),
    /// Remove every attachment and pin this agent made under --pin-dir (the
    /// counts are lost), and nothing else. Stop `run` first.
    Detach,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where the counters come from: the eBPF programs, or /proc/net/dev where
    /// eBPF cannot be used.
    #[arg(long, env = "TALLY_SOURCE", value_enum, default_value_t = SourceKind::Ebpf)]
    pub source: SourceKind,

    /// How to attach: TCX links where the kernel has them (6.6+), else the
    /// clsact qdisc via netlink; or force one of the two.
    #[arg(long, env = "TALLY_ATTACH", value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// How often to read the counters and, with --collector, send a heartbeat
    /// (at least 1s; the collector's reply may ask for another interval).
    #[arg(long, env = "TALLY_INTERVAL", default_value = "5s", value_parser = parse_interval, value_name = "DURATION")]
    pub interval: Duration,

    /// How long an interface that went away keeps its own counters (shown as
    /// gone) before they are folded into the `(retired)` entry; totals never
    /// change by this. Folding happens sooner when the map is nearly full.
    #[arg(long, env = "TALLY_FORGET_AFTER", default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    pub forget_after: Duration,

    /// How often to re-list the interfaces even without a netlink
    /// notification, as a safety net for missed ones (at least 1s).
    #[arg(long, env = "TALLY_RESYNC_INTERVAL", default_value = "30s", value_parser = parse_interval, value_name = "DURATION")]
    pub resync_interval: Duration,

    #[command(flatten)]
    pub collector: CollectorArgs,
}

/// Where and how `run` reports: every flag here but `--collector` only
/// matters with `--collector`.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Reporting to a collector")]
pub struct CollectorArgs {
    /// The collector to send heartbeats to: `https://HOST:PORT` (TLS, needs
    /// --ca) or `http://HOST:PORT` (plaintext, needs --insecure-plaintext).
    /// Without it the agent counts locally only (see `status`).
    #[arg(long, env = "TALLY_COLLECTOR", value_name = "URL")]
    pub collector: Option<String>,

    /// File holding this node's token, as printed by `tally-collector node
    /// add` (surrounding whitespace is ignored). Sent as `authorization:
    /// Bearer <token>`. Read again on SIGHUP and when the file changes
    /// (looked at every 2s), without a restart: a new token is used from the
    /// next heartbeat on, and a file that cannot be used keeps the token in
    /// use (with a warning). Without it, the token is read from the
    /// environment variable TALLY_TOKEN (give one of the two, not both),
    /// once, at start.
    #[arg(
        long,
        env = "TALLY_TOKEN_FILE",
        value_name = "PATH",
        requires = "collector"
    )]
    pub token_file: Option<PathBuf>,

    /// Refuse to start, instead of only warning, when --token-file is
    /// readable or writable by group or others (any of its mode bits 077 set;
    /// `chmod 0600` it); when the file is read again while the agent runs,
    /// such a file is refused and the token in use kept. Only the token file
    /// is concerned: a state directory that is not the agent's alone (see
    /// --state-dir) is refused either way.
    #[arg(
        long,
        env = "TALLY_STRICT",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub strict: bool,

    /// PEM file with the CA certificate(s) that signed the collector's
    /// certificate. Without it, an https:// collector is refused (the agent
    /// trusts no built-in roots).
    #[arg(long, env = "TALLY_CA", value_name = "PATH", requires = "collector")]
    pub ca: Option<PathBuf>,

    /// PEM file with this node's client certificate, for a collector that
    /// requires one (`tally-collector serve --client-ca`); needs --client-key
    /// and an https:// collector. Without it the agent presents no
    /// certificate, and such a collector refuses the connection (the token
    /// alone is enough for a collector without --client-ca).
    #[arg(
        long,
        env = "TALLY_CLIENT_CERT",
        value_name = "PATH",
        requires_all = ["client_key", "collector"]
    )]
    pub client_cert: Option<PathBuf>,

    /// PEM file with the private key of --client-cert (needs --client-cert).
    /// Without the two, no client certificate is presented.
    #[arg(
        long,
        env = "TALLY_CLIENT_KEY",
        value_name = "PATH",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// Allow an http:// collector: heartbeats and the token travel
    /// unencrypted. Only for a trusted network or a local test.
    #[arg(
        long,
        env = "TALLY_INSECURE_PLAINTEXT",
        requires_ifs = ON.map(|on| (on, "collector")),
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure_plaintext: bool,

    /// On SIGTERM or SIGINT, how long to try to deliver a last heartbeat
    /// before exiting (`0s`: exit without trying). The kernel keeps counting
    /// either way, and the last reading stays in the reboot journal (see
    /// --state-dir) until it is delivered.
    #[arg(long, env = "TALLY_FINAL_HEARTBEAT_TIMEOUT", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub final_heartbeat_timeout: Duration,

    /// Directory for what the agent keeps across restarts and reboots: the
    /// reboot journal (`journal`). On SIGTERM or SIGINT the last reading is
    /// written there before it is sent, and kept until the collector
    /// answered it; the next start delivers it before any other heartbeat,
    /// so the traffic up to a shutdown or reboot is counted even when the
    /// collector was unreachable then. Created (mode 0700) if missing; give
    /// each agent its own (it is locked while the agent runs). The agent
    /// refuses to start when it is a symbolic link, belongs to another user
    /// or is writable by group or others. Only used with --collector.
    #[arg(long, env = "TALLY_STATE_DIR", default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Count only interfaces whose whole name matches one of these glob
    /// patterns (`*`, `?`, `[...]`; never a substring: `eth` is eth alone,
    /// `eth*` takes eth0 but not veth0), e.g. `eth*` (repeatable, or
    /// comma-separated). Without it, every interface is counted but loopback
    /// (`lo*`), which never is. The collector's counting rule for the node
    /// (every interface, or only physical ones and those with the default
    /// route) then applies to what these patterns let through.
    #[arg(
        long = "include",
        env = "TALLY_INCLUDE",
        value_delimiter = ',',
        value_name = "PATTERN"
    )]
    pub include: Vec<String>,

    /// Leave out interfaces whose whole name matches one of these glob
    /// patterns, e.g. `veth*` or `docker*` (repeatable, or comma-separated;
    /// wins over --include). Without it, only loopback is left out. Like
    /// --include, it combines with the collector's counting rule.
    #[arg(
        long = "exclude",
        env = "TALLY_EXCLUDE",
        value_delimiter = ',',
        value_name = "PATTERN"
    )]
    pub exclude: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the counters as JSON (for scripts) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Where to read the counters: those `run` pinned under --pin-dir, or
    /// /proc/net/dev. The same setting (and variable) as `run --source`.
    #[arg(long, env = "TALLY_SOURCE", value_enum, default_value_t = SourceKind::Ebpf)]
    pub source: SourceKind,

    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Parses a duration such as `0s`, `90s`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (try e.g. `30s` or `1h`)"))
}

/// Parses `5s`, `1m`, `500ms`; refuses anything under one second.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{e} (try e.g. `5s` or `1m`)"))?;
    if duration < Duration::from_secs(1) {
        return Err(format!("{text} is shorter than the minimum of 1s"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// Options that take a value and read no environment variable, with
    /// the reason (see the rule at the top of this module): none today.
    const NO_ENV: &[(&str, &str, &str)] = &[];

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_option_is_explained() {
        tally_testkit::cli_check::check(
            &Cli::command(),
            &tally_testkit::cli_check::Policy {
                no_env: NO_ENV,
                ..Default::default()
            },
        );
    }

    /// The help check above asks a variable of options that take a value;
    /// the rule at the top of this module asks one of every option of `run`,
    /// switches too.
    #[test]
    fn every_option_of_run_reads_a_variable() {
        let command = Cli::command();
        let run = command.find_subcommand("run").expect("run");
        for arg in run.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            assert!(arg.get_env().is_some(), "run --{id} reads no variable");
        }
        let strict = run
            .get_arguments()
            .find(|a| a.get_id() == "strict")
            .expect("--strict");
        assert_eq!(strict.get_env(), Some(std::ffi::OsStr::new("TALLY_STRICT")));
    }

    #[test]
    fn on_lists_what_turns_a_switch_on() {
        use clap::builder::TypedValueParser as _;
        let boolish = clap::builder::BoolishValueParser::new();
        let read = |text: &str| {
            boolish
                .parse_ref(&Cli::command(), None, std::ffi::OsStr::new(text))
                .ok()
        };
        for on in ON {
            assert_eq!(read(on), Some(true), "{on}");
        }
        for word in ["true", "t", "yes", "y", "on", "1"] {
            for spelling in [word.to_owned(), word.to_uppercase()] {
                assert!(ON.contains(&spelling.as_str()), "{spelling}");
            }
        }
        for off in ["false", "f", "no", "n", "off", "0"] {
            assert_eq!(read(off), Some(false), "{off}");
        }
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
        assert!(
            parse_interval("500ms")
                .expect_err("too short")
                .contains("minimum of 1s")
        );
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "tally-agent",
            "run",
            "--exclude",
            "veth*",
            "--exclude",
            "docker*",
            "--attach",
            "netlink",
            "--pin-dir",
            "/sys/fs/bpf/t1",
        ])
        .expect("parses");
        assert_eq!(cli.pin_dir, PathBuf::from("/sys/fs/bpf/t1"));
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        assert_eq!(run.filter.exclude, ["veth*", "docker*"]);
        assert_eq!(run.attach, AttachMode::Netlink);
        assert_eq!(run.source, SourceKind::Ebpf);
    }

    #[test]
    fn collector_flags_parse() {
        let cli = Cli::try_parse_from([
            "tally-agent",
            "run",
            "--collector",
            "https://collector:4443",
            "--ca",
            "/etc/tally/ca.pem",
            "--token-file",
            "/etc/tally/token",
            "--final-heartbeat-timeout",
            "2s",
        ])
        .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        let c = run.collector;
        assert_eq!(c.collector.as_deref(), Some("https://collector:4443"));
        assert_eq!(c.ca, Some(PathBuf::from("/etc/tally/ca.pem")));
        assert_eq!(c.token_file, Some(PathBuf::from("/etc/tally/token")));
        assert!(!c.insecure_plaintext);
        assert!(!c.strict, "warn only, unless told");
        assert_eq!(c.final_heartbeat_timeout, Duration::from_secs(2));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/tally-agent"));

        let Command::Run(plain) = Cli::try_parse_from([
            "tally-agent",
            "run",
            "--collector",
            "http://127.0.0.1:50051",
            "--insecure-plaintext",
            "--state-dir",
            "/srv/tally",
            "--strict",
        ])
        .expect("parses")
        .command
        else {
            panic!("run")
        };
        assert!(plain.collector.insecure_plaintext);
        assert!(plain.collector.strict);
        assert_eq!(plain.collector.state_dir, PathBuf::from("/srv/tally"));
        assert_eq!(
            plain.collector.final_heartbeat_timeout,
            Duration::from_secs(5)
        );

        // Collector settings without a collector are a mistake.
        for flag in [
            &["--token-file", "/t"][..],
            &["--ca", "/ca.pem"],
            &["--insecure-plaintext"],
            &["--client-cert", "/c.pem", "--client-key", "/k.pem"],
        ] {
            let err = Cli::try_parse_from([&["tally-agent", "run"][..], flag].concat())
                .expect_err("needs --collector");
            assert!(err.to_string().contains("--collector"), "{err}");
        }
    }

    #[test]
    fn client_certificate_flags_come_together() {
        let tls = [
            "tally-agent",
            "run",
            "--collector",
            "https://collector:4443",
            "--ca",
            "/etc/tally/ca.pem",
        ];
        let Command::Run(run) = Cli::try_parse_from(
            [
                &tls[..],
                &[
                    "--client-cert",
                    "/etc/tally/agent.crt",
                    "--client-key",
                    "/etc/tally/agent.key",
                ],
            ]
            .concat(),
        )
        .expect("parses")
        .command
        else {
            panic!("run")
        };
        assert_eq!(
            run.collector.client_cert,
            Some(PathBuf::from("/etc/tally/agent.crt"))
        );
        assert_eq!(
            run.collector.client_key,
            Some(PathBuf::from("/etc/tally/agent.key"))
        );
        let Command::Run(run) = Cli::try_parse_from(tls).expect("parses").command else {
            panic!("run")
        };
        assert_eq!(
            (run.collector.client_cert, run.collector.client_key),
            (None, None)
        );

        let err = Cli::try_parse_from([&tls[..], &["--client-cert", "/c.pem"]].concat())
            .expect_err("needs the key");
        assert!(err.to_string().contains("--client-key"), "{err}");
        let err = Cli::try_parse_from([&tls[..], &["--client-key", "/k.pem"]].concat())
            .expect_err("needs the certificate");
        assert!(err.to_string().contains("--client-cert"), "{err}");
    }

    #[test]
    fn unknown_values_are_refused() {
        let err =
            Cli::try_parse_from(["tally-agent", "run", "--source", "magic"]).expect_err("bad");
        assert!(err.to_string().contains("magic"));
    }
}
