//! The real `tally-agent` binary run inside a test namespace (a [`Process`]
//! from tally-testkit) with its own pin directory under /sys/fs/bpf, its own
//! state directory (`TALLY_STATE_DIR`, in a temporary directory) and a debug
//! log: an [`Agent`] can be started, stopped, killed and restarted, asked
//! for its `status --json`, and on drop is killed and detached so no pin is
//! left.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use tally_testkit::{
    netns::{IfStats, Netns},
    process::{Process, ProcessError, enter_netns},
};

use super::{AGENT, QUOTED_LINES, unique};

/// The agent, running in a namespace with its own pin directory. Dropping it
/// kills the process and removes every pin (`tally-agent detach`).
pub struct Agent {
    pub ns_path: PathBuf,
    pub pin_dir: PathBuf,
    /// Where the agent keeps its reboot journal.
    pub state_dir: PathBuf,
    /// `tally-agent run` with the test's arguments and environment; a
    /// restart runs the same.
    process: Process,
    _logdir: tempfile::TempDir,
}

pub fn pin_dir() -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/tally-test-{}-{}",
        std::process::id(),
        unique()
    ))
}

/// `tally-agent`, to be run in the namespace at `ns_path`.
fn agent_cmd(ns_path: &Path) -> Result<Command, ProcessError> {
    let mut cmd = Command::new(AGENT);
    enter_netns(&mut cmd, ns_path)?;
    Ok(cmd)
}

impl Agent {
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        Self::start_with_env(ns, args, &[])
    }

    /// Starts the agent with `env` set as well.
    pub fn start_with_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Self {
        let logdir = tempfile::tempdir().expect("tempdir");
        let ns_path = ns.path();
        let pin_dir = pin_dir();
        let state_dir = logdir.path().join("state");
        let mut command = Command::new(AGENT);
        command
            .arg("run")
            .arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--log")
            .arg("debug")
            .args(args)
            .env("TALLY_STATE_DIR", &state_dir)
            .envs(env.iter().copied());
        let process = Process::builder("the agent", command, logdir.path().join("agent.log"))
            .netns(&ns_path)
            .quoted_lines(QUOTED_LINES)
            // As long as `stop` waited before it asserted.
            .stop_timeout(Duration::from_secs(10))
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            ns_path,
            pin_dir,
            state_dir,
            process,
            _logdir: logdir,
        }
    }

    pub fn log(&self) -> String {
        self.process.log().unwrap_or_default()
    }

    /// Runs `tally-agent <args> --pin-dir <ours>` in the namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Agent::cli`]; an error (not a panic) when it cannot run.
    fn try_cli(&self, args: &[&str]) -> Result<Output, String> {
        agent_cmd(&self.ns_path)
            .map_err(|e| e.to_string())?
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run tally-agent: {e}"))
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The interface's entry in `status --json`, if it is listed.
    pub fn iface(&self, name: &str) -> Option<serde_json::Value> {
        let status = self.status()?;
        status["interfaces"]
            .as_array()?
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
    }

    /// One interface's counters from a `status --json` document.
    pub fn stats_in(status: &serde_json::Value, name: &str) -> IfStats {
        let list = status["interfaces"].as_array().expect("interfaces");
        let i = list
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {status}"));
        let n = |k: &str| i[k].as_u64().unwrap_or_else(|| panic!("{k} in {i}"));
        IfStats {
            rx_bytes: n("rx_bytes"),
            tx_bytes: n("tx_bytes"),
            rx_packets: n("rx_packets"),
            tx_packets: n("tx_packets"),
            ..IfStats::default()
        }
    }

    pub fn counters(&self, name: &str) -> IfStats {
        let status = self
            .status()
            .unwrap_or_else(|| panic!("no status; agent log:\n{}", self.log()));
        Self::stats_in(&status, name)
    }

    /// Waits until `name` is listed and counted.
    pub fn wait_for(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.iface(name).is_some_and(|i| i["attached"] == true) {
                return;
            }
            if let Err(e) = self.process.ensure_running() {
                panic!("{e}");
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the agent did not start counting {name} within 20 s; its log:\n{}",
            self.log()
        );
    }

    pub fn epoch(&self) -> String {
        let status = self.status().expect("status");
        status["epoch"].as_str().expect("epoch").to_owned()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Err(e) = self.process.kill() {
            eprintln!("{e}");
        }
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(&mut self) {
        if self.process.is_running()
            && let Err(e) = self.process.stop()
        {
            panic!("{e}");
        }
    }

    /// Starts it again, with the same arguments, pins and state, after
    /// [`Agent::stop`] or [`Agent::kill9`].
    pub fn restart(&mut self) {
        assert!(!self.process.is_running(), "stop the agent first");
        self.process.restart().unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn detach(&self) -> Output {
        self.cli(&["detach"])
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        // Not `detach`: the namespace may be gone, and a drop must not panic.
        let _ = self.try_cli(&["detach"]);
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}
