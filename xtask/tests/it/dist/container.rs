//! A Debian 12 root run with systemd-nspawn, for the package tests: a copy
//! of a root `cargo xtask test` made (`TALLY_DEBIAN_ROOT` booted with
//! systemd, or `TALLY_DEBIAN_OPENRC_ROOT` with OpenRC's service commands),
//! in a network namespace the test made, with the directories the test
//! binds in.
//! Commands run inside through `nsenter` into its init's namespaces (no
//! machined or bus needed on the host). Dropping it powers it off and
//! removes the copy.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use tally_testkit::process::Process;

use super::common::run_ok;

pub struct Container {
    nspawn: Process,
    /// The container's init (PID 1 inside).
    init: u32,
    dir: tempfile::TempDir,
}

/// A host directory bound into the container (read-write).
pub struct Bind<'a> {
    pub host: &'a Path,
    pub inside: &'a str,
}

/// How the container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Booted: systemd is its PID 1.
    Systemd,
    /// Not booted: a placeholder process holds its namespaces, and OpenRC's
    /// service commands run as they would on a system it booted (its state
    /// directory made as `openrc sysinit` makes it).
    OpenRc,
}

impl Container {
    /// Starts a copy of `template` in the network namespace `netns` (a path
    /// under /run/netns) with `binds`, CAP_BPF and the bpf() system call
    /// allowed (the agent's), and waits until it is up.
    pub fn start(
        template: &Path,
        init: Init,
        netns: &Path,
        binds: &[Bind<'_>],
        log: &Path,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        run_ok(
            Command::new("cp")
                .args(["--archive", "--reflink=auto"])
                .arg(template)
                .arg(&root),
        );
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--directory")
            .arg(&root)
            .args(["--register=no", "--keep-unit", "--quiet"])
            .arg(format!("--network-namespace-path={}", netns.display()))
            .args(["--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN"])
            .args(["--system-call-filter=bpf", "--console=read-only"]);
        for bind in binds {
            cmd.arg(format!("--bind={}:{}", bind.host.display(), bind.inside));
        }
        let leader = match init {
            Init::Systemd => {
                cmd.arg("--boot");
                "systemd"
            }
            Init::OpenRc => {
                cmd.args(["--as-pid2", "/bin/sleep", "infinity"]);
                "sleep"
            }
        };
        let nspawn = Process::builder("systemd-nspawn", cmd, log)
            .own_process_group()
            .stop_timeout(Duration::from_secs(20))
            .start()
            .expect("start systemd-nspawn");
        let pid = nspawn.pid().expect("nspawn runs");
        let init_pid = wait_for(Duration::from_secs(30), || descendant(pid, leader))
            .unwrap_or_else(|| panic!("no {leader} under pid {pid}:\n{}", nspawn.log_tail()));
        let container = Container {
            nspawn,
            init: init_pid,
            dir,
        };
        match init {
            Init::Systemd => container.wait_for_systemd(),
            Init::OpenRc => {
                container.sh_ok(
                    "for d in started starting stopping inactive wasinactive coldplugged \
                              failed hotplugged daemons options exclusive scheduled tmp; do
                         mkdir -p /run/openrc/$d
                     done
                     touch /run/openrc/softlevel",
                );
            }
        }
        container
    }

    fn wait_for_systemd(&self) {
        let state = wait_for(Duration::from_secs(60), || {
            let out = self.sh("systemctl is-system-running");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            matches!(state.as_str(), "running" | "degraded").then_some(state)
        });
        if state.is_none() {
            let failed = self.sh("systemctl --failed --no-pager");
            panic!(
                "the container did not come up:\n{}{}\n{}",
                String::from_utf8_lossy(&failed.stdout),
                String::from_utf8_lossy(&failed.stderr),
                self.nspawn.log_tail()
            );
        }
    }

    /// Runs `script` with /bin/sh inside the container, as root.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .arg(format!("--target={}", self.init))
            .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"])
            .args(["--", "/bin/sh", "-c", script])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .output()
            .expect("run nsenter")
    }

    /// [`Self::sh`], asserting that it succeeded; its stdout and stderr.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "in the container: {script}\nfailed ({}):\n{text}",
            out.status
        );
        text
    }

    /// Where the container's root is, on the host.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // An orderly shutdown (SIGTERM to nspawn powers the container off),
        // then the process kit's SIGKILL if it takes too long.
        let _ = self.nspawn.stop();
    }
}

/// The first process named `name` below `pid` (a child or, when nspawn
/// forks once more, a grandchild or great-grandchild).
fn descendant(pid: u32, name: &str) -> Option<u32> {
    let mut level = vec![pid];
    for _ in 0..3 {
        level = level.into_iter().flat_map(children).collect();
        if let Some(&found) = level.iter().find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        }) {
            return Some(found);
        }
    }
    None
}

/// The processes whose parent is `pid` (from /proc/*/stat: this kernel may
/// lack /proc/<pid>/task/<tid>/children).
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid ...: the comm may hold spaces.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Polls `f` every 100 ms until it gives a value or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}
