//! The demo's processes: the real `tally-agent` (one per host, inside its
//! namespace) and `tally-collector` (in the root namespace), each a
//! [`Process`] (from tally-testkit) with its own log file, in its own
//! process group (a Ctrl-C in the terminal reaches only the demo, which
//! stops them in order), and asked by the kernel to stop (SIGTERM) if the
//! demo dies without stopping them.
//!
//! Dropping a [`Collector`] or an [`Agent`] stops it (SIGTERM, then
//! SIGKILL); dropping an [`Agent`] also removes its attachments and pins.

use std::{
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
pub use tally_testkit::process::Binaries;
use tally_testkit::process::{Process, enter_netns};

use super::{
    api::Api,
    netns::{CONTROL_IF, COUNTED_IF, Host, PREFIX},
    wait_until,
};

/// A command with a clean environment (nothing of the caller's `TALLY_*`
/// settings leaks into the demo).
fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().stdin(Stdio::null()).env("NO_COLOR", "1");
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// Starts `cmd` as a [`Process`] logging to `log`: in its own process
/// group, sent SIGTERM if the demo dies. Every process is started from the
/// demo's main thread (the death signal is tied to the starting thread).
fn spawn(
    what: String,
    cmd: Command,
    log: PathBuf,
    netns: Option<PathBuf>,
) -> anyhow::Result<Process> {
    let mut builder = Process::builder(what, cmd, log)
        .own_process_group()
        .parent_death_signal(libc::SIGTERM);
    if let Some(path) = netns {
        builder = builder.netns(path);
    }
    Ok(builder.start()?)
}

/// Stops `proc` if it runs (SIGTERM, then SIGKILL), for a drop: what goes
/// wrong is said, not returned.
fn stop_in_drop(proc: &mut Process) {
    if proc.is_running() {
        proc.terminate();
        if let Err(error) = proc.wait() {
            eprintln!("demo: {error:#}");
        }
    }
}

/// `tally-collector serve` in the root namespace: gRPC on the control
/// links' address, HTTP on 127.0.0.1.
pub struct Collector {
    pub proc: Process,
}

impl Collector {
    /// Applies the migrations (`tally-collector migrate`), starts `serve`
    /// and waits until `/readyz` answers 200.
    pub fn start(
        bins: &Binaries,
        grpc: SocketAddr,
        api: &Api,
        database_url: &str,
        admin_token: &str,
        run_dir: &Path,
    ) -> anyhow::Result<Self> {
        let migrate = command(&bins.collector)
            .arg("migrate")
            .env("DATABASE_URL", database_url)
            .output()
            .with_context(|| format!("cannot run {}", bins.collector.display()))?;
        ensure_success("tally-collector migrate", &migrate)?;

        let mut cmd = command(&bins.collector);
        cmd.args([
            "serve",
            "--insecure-plaintext",
            "--no-migrate",
            "--log",
            "info",
        ])
        .arg("--listen")
        .arg(grpc.to_string())
        .arg("--http-listen")
        .arg(api.addr().to_string())
        .env("DATABASE_URL", database_url)
        .env("TALLY_ADMIN_TOKEN", admin_token);
        let mut proc = spawn(
            "tally-collector".to_owned(),
            cmd,
            run_dir.join("collector.log"),
            None,
        )?;
        wait_until("the collector to be ready", Duration::from_secs(60), || {
            proc.ensure_running()?;
            Ok(api.get("/readyz").is_ok_and(|(status, _)| status == 200))
        })
        .map_err(|e| {
            e.context(format!(
                "the end of the collector log:\n{}",
                proc.log_tail()
            ))
        })?;
        Ok(Self { proc })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        stop_in_drop(&mut self.proc);
    }
}

/// One host's `tally-agent run`, with its own pin directory.
pub struct Agent {
    pub host: &'static str,
    pub proc: Process,
    bin: PathBuf,
    ns_path: PathBuf,
    pin_dir: PathBuf,
}

impl Agent {
    /// The pin directory of host `host` of run `run`.
    pub fn pin_dir(run: u32, host: &str) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{PREFIX}{run}-{host}"))
    }

    /// Starts the agent in `host`'s namespace, reporting every second to
    /// `collector`, counting everything but `ctl0`.
    pub fn start(
        bins: &Binaries,
        run: u32,
        host: &Host,
        collector: SocketAddr,
        token_file: &Path,
        run_dir: &Path,
    ) -> anyhow::Result<Self> {
        let pin_dir = Self::pin_dir(run, host.name);
        let mut cmd = command(&bins.agent);
        cmd.arg("run")
            .arg("--pin-dir")
            .arg(&pin_dir)
            // Its own reboot journal (each agent locks its state directory).
            .arg("--state-dir")
            .arg(run_dir.join(format!("state-{}", host.name)))
            .args(["--log", "info", "--interval", "1s", "--exclude", CONTROL_IF])
            .arg("--collector")
            .arg(format!("http://{collector}"))
            .arg("--insecure-plaintext")
            .arg("--token-file")
            .arg(token_file);
        let proc = spawn(
            format!("the agent of {}", host.name),
            cmd,
            run_dir.join(format!("agent-{}.log", host.name)),
            Some(host.ns.path()),
        )?;
        Ok(Self {
            host: host.name,
            proc,
            bin: bins.agent.clone(),
            ns_path: host.ns.path(),
            pin_dir,
        })
    }

    /// Runs `tally-agent <args> --pin-dir <ours>` in the agent's namespace.
    fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = command(&self.bin);
        enter_netns(&mut cmd, &self.ns_path)?;
        cmd.args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output()
            .with_context(|| format!("cannot run {}", self.bin.display()))
    }

    /// Waits until `status --json` says the counted interface is attached.
    pub fn wait_attached(&mut self) -> anyhow::Result<()> {
        wait_until(
            &format!("the agent of {} to attach to {COUNTED_IF}", self.host),
            Duration::from_secs(30),
            || {
                self.proc.ensure_running()?;
                let out = self.cli(&["status", "--json"])?;
                let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                    return Ok(false);
                };
                Ok(status["interfaces"].as_array().is_some_and(|list| {
                    list.iter()
                        .any(|i| i["name"] == COUNTED_IF && i["attached"] == true)
                }))
            },
        )
        .map_err(|e| e.context(format!("the end of its log:\n{}", self.proc.log_tail())))
    }

    /// Removes the attachments and pins (`tally-agent detach`), and the pin
    /// directory if anything is left of it. The agent must be stopped.
    fn detach(&self) -> anyhow::Result<()> {
        if !self.pin_dir.exists() {
            return Ok(());
        }
        // Without the namespace (already gone) the pins just go.
        if self.ns_path.exists() {
            ensure_success("tally-agent detach", &self.cli(&["detach"])?)?;
        }
        match fs::remove_dir_all(&self.pin_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", self.pin_dir.display()))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop_in_drop(&mut self.proc);
        if let Err(error) = self.detach() {
            eprintln!("demo: {error:#}");
        }
    }
}

fn ensure_success(what: &str, out: &Output) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
