//! The real `tally-agent` binary run inside a test namespace (through
//! `nsenter`) with its own pin directory under /sys/fs/bpf, its own state
//! directory (`TALLY_STATE_DIR`, in a temporary directory) and a debug log: an
//! [`Agent`] can be started, stopped, killed and restarted, asked for its
//! `status --json`, and on drop is killed and detached so no pin is left.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use tally_testkit::netns::{IfStats, Netns};

use super::{AGENT, unique};

/// The agent, running in a namespace with its own pin directory. Dropping it
/// kills the process and removes every pin (`tally-agent detach`).
pub struct Agent {
    pub ns_path: PathBuf,
    pub pin_dir: PathBuf,
    /// Where the agent keeps its reboot journal.
    pub state_dir: PathBuf,
    pub args: Vec<String>,
    /// Environment variables the agent runs with, besides the state dir.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

pub fn pin_dir() -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/tally-test-{}-{}",
        std::process::id(),
        unique()
    ))
}

fn agent_cmd(ns_path: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns_path.display()))
        .arg("--")
        .arg(AGENT);
    cmd
}

impl Agent {
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        Self::start_with_env(ns, args, &[])
    }

    /// Starts the agent with `env` set as well.
    pub fn start_with_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Self {
        let logdir = tempfile::tempdir().expect("tempdir");
        let mut agent = Self {
            ns_path: ns.path(),
            pin_dir: pin_dir(),
            state_dir: logdir.path().join("state"),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            log: logdir.path().join("agent.log"),
            _logdir: logdir,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = agent_cmd(&self.ns_path)
            .arg("run")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--log")
            .arg("debug")
            .args(&self.args)
            .env("TALLY_STATE_DIR", &self.state_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn tally-agent");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `tally-agent <args> --pin-dir <ours>` in the namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        agent_cmd(&self.ns_path)
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .stdin(Stdio::null())
            .output()
            .expect("run tally-agent")
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
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("the agent exited ({status}); its log:\n{}", self.log());
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        status.success(),
                        "agent exited with {status}; log:\n{}",
                        self.log()
                    );
                    return;
                }
                assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the agent first");
        self.spawn();
    }

    pub fn detach(&self) -> Output {
        self.cli(&["detach"])
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        let _ = self.detach();
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}
