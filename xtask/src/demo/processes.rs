//! The demo's processes: the real `tally-agent` (one per host, inside its
//! namespace) and `tally-collector` (in the root namespace), each a child
//! with its own log file, in its own process group (a Ctrl-C in the terminal
//! reaches only the demo, which stops them in order), and asked by the
//! kernel to stop (SIGTERM) if the demo dies without stopping them.
//!
//! Dropping a [`Proc`] stops it (SIGTERM, then SIGKILL); dropping an
//! [`Agent`] also removes its attachments and pins.

use std::{
    fs, io,
    net::SocketAddr,
    os::{fd::RawFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    api::Api,
    netns::{CONTROL_IF, COUNTED_IF, Host, PREFIX},
    wait_until,
};

/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How many lines of a log an error message quotes.
const LOG_TAIL: usize = 20;

/// The binaries the demo runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub agent: PathBuf,
    pub collector: PathBuf,
}

impl Binaries {
    /// `tally-agent` and `tally-collector` in `dir`.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let bins = Self {
            agent: dir.join("tally-agent"),
            collector: dir.join("tally-collector"),
        };
        for bin in [&bins.agent, &bins.collector] {
            if !bin.is_file() {
                bail!(
                    "{} is missing: build it (`cargo build -p tally-agent -p tally-collector`)",
                    bin.display()
                );
            }
        }
        Ok(bins)
    }
}

/// A command with a clean environment (nothing of the caller's `TALLY_*`
/// settings leaks into the demo), run in the network namespace `netns` if
/// given.
fn command(program: &Path, netns: Option<RawFd>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().stdin(Stdio::null()).env("NO_COLOR", "1");
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    if let Some(fd) = netns {
        // SAFETY: setns is async-signal-safe and touches no memory of the
        // parent; `fd` stays open in the parent until the child has spawned.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// A long-running child process with its log file.
pub struct Proc {
    what: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    fn spawn(what: String, mut cmd: Command, log: PathBuf) -> anyhow::Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let parent = std::process::id();
        cmd.stdout(file.try_clone().context("cannot duplicate a log file")?)
            .stderr(file)
            .process_group(0);
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory
        // of the parent. The death signal is tied to the forking thread:
        // every process is spawned from the demo's main thread.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The demo died before prctl: nobody would signal us.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what} ({cmd:?})"))?;
        Ok(Self {
            what,
            child: Some(child),
            log,
        })
    }

    /// An error if the process has exited, quoting its log.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was stopped", self.what);
        };
        if let Some(status) = child.try_wait().context("cannot wait for a child")? {
            self.child = None;
            bail!(
                "{} exited ({status}); the end of {}:\n{}",
                self.what,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Sends SIGTERM (and does not wait).
    pub fn terminate(&self) {
        if let Some(child) = &self.child
            && let Ok(pid) = i32::try_from(child.id())
        {
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// Waits for the process to exit after [`terminate`](Self::terminate);
    /// SIGKILL after [`STOP_TIMEOUT`] (an error then).
    pub fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} was already stopped", self.what);
        };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().context("cannot wait for a child")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed",
                    self.what
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; an error unless it exits successfully.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.terminate();
        let status = self.wait()?;
        if !status.success() {
            bail!(
                "{} exited with {status}; the end of {}:\n{}",
                self.what,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        tally_testkit::devdb::tail(&self.log, LOG_TAIL)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
            if let Err(error) = self.wait() {
                eprintln!("demo: {error:#}");
            }
        }
    }
}

/// `tally-collector serve` in the root namespace: gRPC on the control
/// links' address, HTTP on 127.0.0.1.
pub struct Collector {
    pub proc: Proc,
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
        let migrate = command(&bins.collector, None)
            .arg("migrate")
            .env("DATABASE_URL", database_url)
            .output()
            .with_context(|| format!("cannot run {}", bins.collector.display()))?;
        ensure_success("tally-collector migrate", &migrate)?;

        let mut cmd = command(&bins.collector, None);
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
        let mut proc = Proc::spawn(
            "tally-collector".to_owned(),
            cmd,
            run_dir.join("collector.log"),
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

/// One host's `tally-agent run`, with its own pin directory.
pub struct Agent {
    pub host: &'static str,
    pub proc: Proc,
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
        let mut cmd = command(&bins.agent, Some(host.ns.raw_fd()?));
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
        let proc = Proc::spawn(
            format!("the agent of {}", host.name),
            cmd,
            run_dir.join(format!("agent-{}.log", host.name)),
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
        let ns = fs::File::open(&self.ns_path)
            .with_context(|| format!("cannot open {}", self.ns_path.display()))?;
        command(&self.bin, Some(std::os::fd::AsRawFd::as_raw_fd(&ns)))
            .args(args)
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
        if self.proc.child.is_some() {
            self.proc.terminate();
            if let Err(error) = self.proc.wait() {
                eprintln!("demo: {error:#}");
            }
        }
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
