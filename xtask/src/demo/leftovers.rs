//! What a demo run that was killed (or crashed) may leave behind, found by
//! name and removed at the start of the next run: its processes (should
//! the kernel's parent-death signal not have ended them), namespaces, root
//! ends of control veths, pin directories and run directory. Every such
//! name carries the pid of the `xtask` process that made it; things of a
//! demo that still runs (an `xtask` process with that pid) are left alone.
//!
//! [`verify_none`] checks at the end of a run that nothing of it is left.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use anyhow::bail;

use super::{
    netns::{LINK_PREFIX, PREFIX, ip},
    processes::Agent,
    traffic::HOSTS,
};

const BPFFS: &str = "/sys/fs/bpf";

/// Removes the leftovers of demo runs that are no longer running; says what
/// it removed.
pub fn clean(runs_dir: &Path) -> anyhow::Result<()> {
    let mut removed = Vec::new();
    kill_processes(&mut removed);

    let namespaces = ip(&["netns", "list"])?;
    for name in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        if run_of(name, PREFIX).is_some_and(is_gone) {
            ip(&["netns", "delete", name])?;
            removed.push(format!("namespace {name}"));
        }
    }
    let links = ip(&["-o", "link", "show"])?;
    for name in links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
    {
        if run_of(name, LINK_PREFIX).is_some_and(is_gone) {
            // It may just be going with its peer's namespace (the kernel
            // cleans namespaces up asynchronously).
            if let Err(e) = ip(&["link", "delete", name])
                && Path::new("/sys/class/net").join(name).exists()
            {
                return Err(e.into());
            }
            removed.push(format!("link {name}"));
        }
    }
    for (dir, prefix) in [(Path::new(BPFFS), PREFIX), (runs_dir, "")] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if run_of(&name, prefix).is_some_and(is_gone) {
                let path = entry.path();
                fs::remove_dir_all(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
                removed.push(path.display().to_string());
            }
        }
    }
    if !removed.is_empty() {
        println!(
            "demo: removed what an earlier run left behind: {}",
            removed.join(", ")
        );
    }
    Ok(())
}

/// The run (pid) in a name made by the demo: `prefix`, digits, then the
/// end or a non-digit.
fn run_of(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether demo run `pid` is over: no `xtask` process with that pid runs.
fn is_gone(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |comm| comm.trim() != "xtask")
}

/// SIGKILLs the agents and PostgreSQL servers of runs that are over (their
/// command lines name the run's pin or run directory), and waits until
/// they are gone.
fn kill_processes(removed: &mut Vec<String>) {
    let markers = [format!("{BPFFS}/{PREFIX}"), "/tally-demo/".to_owned()];
    let mut killed = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if !matches!(comm.trim(), "tally-agent" | "tally-collector" | "postgres") {
            continue;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stale = markers.iter().any(|marker| {
            cmdline
                .match_indices(marker.as_str())
                .any(|(at, _)| run_of(&cmdline[at..], marker).is_some_and(is_gone))
        });
        if stale {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed.push(pid);
            removed.push(format!("process {pid} ({})", cmdline.trim()));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while killed
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that nothing of this run is left: namespaces, control links, pin
/// directories, the run directory. (The kernel removes a deleted
/// namespace's devices asynchronously: this waits a little for them.)
pub fn verify_none(run: u32, run_dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let left = left_behind(run, run_dir)?;
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        thread::sleep(Duration::from_millis(100));
    };
    if !left.is_empty() {
        bail!("the demo left behind: {}", left.join(", "));
    }
    println!(
        "demo: cleaned up (namespaces {PREFIX}{run}-*, pin directories /sys/fs/bpf/{PREFIX}{run}-*, {})",
        run_dir.display()
    );
    Ok(())
}

/// What is left of run `run`.
fn left_behind(run: u32, run_dir: &Path) -> anyhow::Result<Vec<String>> {
    let ours = format!("{PREFIX}{run}-");
    let mut left: Vec<String> = ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&ours))
        .map(|name| format!("namespace {name}"))
        .collect();
    let link = format!("{LINK_PREFIX}{run}");
    left.extend(
        ip(&["-o", "link", "show"])?
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter(|name| name.starts_with(&link))
            .map(|name| format!("link {name}")),
    );
    for host in HOSTS {
        let pin = Agent::pin_dir(run, host);
        if pin.exists() {
            left.push(pin.display().to_string());
        }
    }
    if run_dir.exists() {
        left.push(run_dir.display().to_string());
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_read_from_names() {
        assert_eq!(run_of("tally-demo-1234-alpha", PREFIX), Some(1234));
        assert_eq!(run_of("tdemo77a", LINK_PREFIX), Some(77));
        assert_eq!(run_of("4321", ""), Some(4321));
        assert_eq!(run_of("tally-demo-hub", PREFIX), None);
        assert_eq!(run_of("tally-t1-a", PREFIX), None);
    }

    #[test]
    fn this_run_is_not_over() {
        assert!(!is_gone(std::process::id()));
    }
}
