//! `tally-agent` as a process in the guest: `run` with its log in a file,
//! `status --json`, `detach`, SIGKILL, SIGTERM and restart.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{
    say,
    stats::{Counts, expect_exact},
};

/// Where the initramfs puts the agent.
pub const BINARY: &str = "/bin/tally-agent";

/// One `tally-agent run` (and the other commands on its pin directory).
pub struct Agent {
    pub pin_dir: PathBuf,
    run_args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// Starts `tally-agent --pin-dir <pin_dir> run <run_args>`, its
    /// stderr appended to `/tmp/<name>.log`.
    pub fn start(name: &str, pin_dir: &str, run_args: &[&str]) -> anyhow::Result<Self> {
        let mut agent = Self {
            pin_dir: PathBuf::from(pin_dir),
            run_args: run_args.iter().map(|&a| a.to_owned()).collect(),
            log: PathBuf::from(format!("/tmp/{name}.log")),
            child: None,
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(BINARY)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("run")
            .args(&self.run_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {BINARY}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log written after its first `from` bytes holds
    /// `text`.
    pub fn wait_for_log(&mut self, from: usize, text: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            let new = log.get(from..).unwrap_or_default();
            if new.contains(text) {
                return Ok(new.to_owned());
            }
            if let Some(status) = self.try_wait()? {
                bail!("the agent exited ({status}); its log:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("no {text:?} in the agent's log within 60 s:\n{log}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Another command on the same pin directory.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(BINARY)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(args)
            .output()
            .with_context(|| format!("running tally-agent {}", args.join(" ")))
    }

    /// `status --json` (of the eBPF counters).
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        json_of(&self.cli(&["status", "--json"])?)
    }

    /// Waits until the status lists every one of `ifaces` as attached.
    pub fn wait_attached(&mut self, ifaces: &[&str]) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait().context("waiting")?
            {
                bail!("the agent exited ({status}); its log:\n{}", self.log());
            }
            if let Ok(status) = self.status() {
                let attached = |name: &&str| {
                    status["interfaces"].as_array().is_some_and(|list| {
                        list.iter()
                            .any(|i| i["name"] == **name && i["attached"] == true)
                    })
                };
                if ifaces.iter().all(attached) {
                    return Ok(status);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{ifaces:?} not all attached within 60 s; the agent's log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// How `run` exited, if it did.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match &mut self.child {
            Some(child) => child.try_wait().context("waiting for the agent"),
            None => Ok(None),
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("SIGKILL")?;
            child.wait().context("reaping")?;
        }
        Ok(())
    }

    /// Starts `run` again with the same arguments.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// SIGTERM, and waits (60 s at most) for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id()).context("pid")?;
        // SAFETY: a signal to our own child, which has not been reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().context("waiting")? {
                if !status.success() {
                    bail!("the agent exited with {status}; its log:\n{}", self.log());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the agent did not stop within 60 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Agent {
    /// SIGTERM, then `detach`: nothing of this agent's is left.
    pub fn stop_and_detach(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        let detached = self.cli(&["detach"])?;
        ensure!(
            detached.status.success(),
            "detach: {}",
            String::from_utf8_lossy(&detached.stderr)
        );
        Ok(())
    }

    /// Its counts of `iface` and the kernel's, of the same moment: the
    /// kernel's once settled, between two equal readings of the agent's.
    pub fn readings(&self, iface: &str) -> anyhow::Result<(Counts, Counts)> {
        for _ in 0..10 {
            let before = Counts::of_status(&self.status()?, iface)?;
            let kernel = Counts::of_kernel_settled(iface)?;
            let ours = Counts::of_status(&self.status()?, iface)?;
            if ours == before {
                return Ok((ours, kernel));
            }
        }
        bail!("{iface} did not fall quiet for a reading")
    }

    /// What the agent and the kernel counted on `iface` since `start` (a
    /// [`Self::readings`]), printed, and the same to the packet.
    pub fn expect_exact_since(
        &self,
        iface: &str,
        start: (Counts, Counts),
        what: &str,
    ) -> anyhow::Result<()> {
        let (ours, kernel) = self.readings(iface)?;
        let ours = ours.since(start.0).context("tally's counters")?;
        let kernel = kernel.since(start.1).context("the kernel's statistics")?;
        say(&format!("  {what}: kernel {kernel}; tally {ours}"));
        expect_exact(what, ours, kernel)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// The JSON a successful command printed.
pub fn json_of(out: &Output) -> anyhow::Result<serde_json::Value> {
    if !out.status.success() {
        bail!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("the output is not JSON")
}
