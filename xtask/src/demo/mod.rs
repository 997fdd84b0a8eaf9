//! `cargo xtask demo`: tally end to end on this one machine, in one command.
//!
//! It builds the agent (with its eBPF object) and the collector, starts a
//! throwaway PostgreSQL under `target/tally-demo/<pid>/` (or uses
//! `DATABASE_URL`), starts `tally-collector serve` with the dashboard on
//! 127.0.0.1, enrols three nodes through the API, makes three test hosts
//! (network namespaces, [`netns`]) each running the real `tally-agent`
//! ([`processes`]), and drives a fixed plan of paced TCP streams between
//! them and a hub ([`traffic`]). While it runs it prints one line per node
//! every few seconds, read from the API ([`summary`]).
//!
//! On Ctrl-C, SIGTERM or at the end of `--duration` it stops the traffic,
//! lets every agent send its last heartbeat, and (with `--check`) checks the
//! API's figures against the kernel's ([`check`]); then it stops every
//! process and removes every namespace, pin and directory it made: guards
//! do so on error paths too. Whatever a killed run left behind is removed
//! at the start of the next ([`leftovers`]).

pub(crate) mod api;
mod check;
mod cli;
pub(crate) mod fleet;
mod leftovers;
mod netns;
pub(crate) mod processes;
pub(crate) mod summary;
mod traffic;

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub use self::cli::DemoArgs;
use self::{
    api::Api,
    netns::{IfStats, Network},
    processes::{Agent, Binaries, Collector},
    summary::NodeView,
    traffic::{HOSTS, Traffic},
};

/// How often the summary is printed.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// Set by SIGINT and SIGTERM: the demo winds down at the next check.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Polls `ready` every 100 ms until it says yes; an error after `timeout`,
/// on Ctrl-C, or when `ready` fails.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if stopping() {
            bail!("interrupted while waiting for {what}");
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the demo; cleans up whatever happens.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    preflight(args)?;
    let bins = match &args.bin_dir {
        Some(dir) => Binaries::in_dir(dir)?,
        None => build()?,
    };
    catch_signals();
    let runs_dir = target_dir().join("tally-demo");
    leftovers::clean(&runs_dir)?;
    let run = std::process::id();
    let result = RunDir::create(&runs_dir, run).and_then(|dir| {
        let result = demo(args, &bins, run, &dir.path);
        drop(dir);
        result
    });
    let cleaned = leftovers::verify_none(run, &run_dir_of(run));
    result?;
    cleaned
}

/// What the demo needs from the machine, checked before anything is made.
fn preflight(args: &DemoArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "cargo xtask demo needs root: it makes network namespaces and loads eBPF \
             programs (run it as root, e.g. with sudo)"
        );
    }
    if Command::new("ip").arg("-V").output().is_err() {
        bail!("`ip` is missing: install iproute2 (`apt install iproute2`)");
    }
    if !Path::new("/sys/fs/bpf").is_dir() {
        bail!("/sys/fs/bpf does not exist: this kernel has no bpf filesystem");
    }
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, args.http_port));
    TcpListener::bind(http).with_context(|| {
        format!(
            "cannot listen on {http} (another program uses it?); choose a port with --http-port"
        )
    })?;
    Ok(())
}

/// `cargo build -p tally-agent -p tally-collector` (the eBPF toolchain is
/// set up first, as `cargo xtask setup` does).
fn build() -> anyhow::Result<Binaries> {
    crate::setup()?;
    crate::status_ok(
        Command::new("cargo")
            .current_dir(crate::workspace_root())
            .env("PATH", crate::toolchain::path_with_cargo_bin()?)
            .args(["build", "-p", "tally-agent", "-p", "tally-collector"]),
    )?;
    Ok(Binaries::in_dir(&target_dir().join("debug"))?)
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/`).
fn target_dir() -> PathBuf {
    let root = crate::workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// The run's directory (`target/tally-demo/<pid>`: logs, tokens, the
/// throwaway cluster), removed when dropped.
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn create(runs_dir: &Path, run: u32) -> anyhow::Result<Self> {
        let path = runs_dir.join(run.to_string());
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let dir = Self { path };
        // PostgreSQL runs as `postgres` and must reach its directory in here.
        for path in [runs_dir, &dir.path] {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot chmod {}", path.display()))?;
        }
        Ok(dir)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.path) {
            eprintln!("demo: cannot remove {}: {error}", self.path.display());
        }
    }
}

/// The demo proper. Each guard undoes its part when dropped, in reverse
/// order: traffic, agents (and their pins), collector, namespaces, cluster.
fn demo(args: &DemoArgs, bins: &Binaries, run: u32, run_dir: &Path) -> anyhow::Result<()> {
    let admin_token = fleet::random_token()?;
    let api = Api::new(args.http_port, admin_token.clone());
    let (cluster, database_url) = fleet::database(args.database_url.as_deref(), run_dir)?;
    let mut net = Network::create(run, &HOSTS)?;
    let grpc = free_port(net.collector_addr)?;
    let mut collector = Collector::start(bins, grpc, &api, &database_url, &admin_token, run_dir)?;

    let names: Vec<String> = HOSTS.iter().map(|h| format!("demo-{h}")).collect();
    let tokens = fleet::enrol(&api, &names)?;
    let mut agents = Vec::new();
    for (host, token) in net.hosts.iter().zip(&tokens) {
        let token_file = run_dir.join(format!("{}.token", host.name));
        fleet::write_secret(&token_file, token)?;
        agents.push(Agent::start(bins, run, host, grpc, &token_file, run_dir)?);
    }
    for agent in &mut agents {
        agent.wait_attached()?;
    }
    // Nothing has crossed a counted interface yet (no IPv6, static
    // neighbours): the kernel's counts from here on are the agents'.
    let baseline = net.kernel_counts()?;
    wait_until(
        "every node's first heartbeat",
        Duration::from_secs(30),
        || {
            let nodes = summary::fetch(&api, &names)?;
            Ok(nodes.len() == names.len() && nodes.iter().all(|n| n.online))
        },
    )?;

    summary::announce(args, &api, &net, &database_url, cluster.is_some());
    let traffic = Traffic::start(&net)?;
    let watched = watch(args, &api, &names, &mut agents, &mut collector)?;
    println!("demo: stopping the traffic");
    traffic.stop()?;
    let kernel: Vec<IfStats> = net
        .settled_counts()?
        .iter()
        .zip(&baseline)
        .map(|(now, before)| now.since(before))
        .collect();

    // Each agent sends a last heartbeat on SIGTERM.
    for agent in &agents {
        agent.proc.terminate();
    }
    for agent in &mut agents {
        let status = agent.proc.wait()?;
        if !status.success() {
            bail!(
                "the agent of {} exited with {status}; the end of its log:\n{}",
                agent.host,
                agent.proc.log_tail()
            );
        }
    }
    let result = if args.check {
        let expected: Vec<check::Expected> = names
            .iter()
            .zip(&kernel)
            .map(|(node, kernel)| check::Expected {
                node: node.clone(),
                kernel: *kernel,
            })
            .collect();
        let planned: Vec<String> = traffic::planned_order()
            .into_iter()
            .filter_map(|i| names.get(i).cloned())
            .collect();
        let online: Vec<(String, bool)> = names
            .iter()
            .map(|name| {
                let seen = watched.last.iter().any(|n| &n.name == name && n.online);
                (name.clone(), seen)
            })
            .collect();
        check::run(&api, &expected, &planned, &online)
    } else {
        let nodes = summary::fetch(&api, &names)?;
        println!("demo: final figures (after each agent's last heartbeat; average rates):");
        let ran = watched.ended - watched.started;
        summary::print(ran, &nodes, &watched.first, ran, &summary::ranks(&api));
        Ok(())
    };
    if args.database_url.is_some() {
        fleet::remove_nodes(&api, &names)?;
    }
    println!("demo: cleaning up");
    drop(agents);
    collector.proc.stop()?;
    net.delete()?;
    drop(cluster);
    result
}

/// The nodes as the API showed them when the traffic started and last
/// while it ran.
struct Watched {
    started: Instant,
    ended: Instant,
    first: Vec<NodeView>,
    last: Vec<NodeView>,
}

/// Prints the summary every [`SUMMARY_EVERY`] until the duration is over or
/// a signal came, watching that every process still runs.
fn watch(
    args: &DemoArgs,
    api: &Api,
    names: &[String],
    agents: &mut [Agent],
    collector: &mut Collector,
) -> anyhow::Result<Watched> {
    let started = Instant::now();
    // The traffic has just started: rates are since then.
    let first = summary::fetch(api, names)?;
    let mut previous = (started, first.clone());
    let mut next_summary = started + SUMMARY_EVERY;
    loop {
        let over = args.duration.is_some_and(|d| started.elapsed() >= d);
        if over || stopping() {
            let last = summary::fetch(api, names)?;
            return Ok(Watched {
                started,
                ended: Instant::now(),
                first,
                last,
            });
        }
        collector.proc.ensure_running()?;
        for agent in agents.iter_mut() {
            agent.proc.ensure_running()?;
        }
        if Instant::now() >= next_summary {
            next_summary += SUMMARY_EVERY;
            let nodes = summary::fetch(api, names)?;
            let now = Instant::now();
            let (at, before) = &previous;
            summary::print(
                started.elapsed(),
                &nodes,
                before,
                now - *at,
                &summary::ranks(api),
            );
            previous = (now, nodes);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A port free on `addr` (the kernel picks it), for the collector's gRPC.
pub(crate) fn free_port(addr: Ipv4Addr) -> anyhow::Result<SocketAddr> {
    TcpListener::bind(SocketAddr::from((addr, 0)))
        .and_then(|listener| listener.local_addr())
        .with_context(|| format!("cannot find a free port on {addr}"))
}

fn run_dir_of(run: u32) -> PathBuf {
    target_dir().join("tally-demo").join(run.to_string())
}
