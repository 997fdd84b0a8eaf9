//! The command line as a user meets it: help, and clear errors where eBPF
//! cannot be used or nothing is pinned.

use crate::common;

use std::process::{Command, Output, Stdio};

use common::{AGENT, privileged};

fn agent(args: &[&str]) -> Output {
    Command::new(AGENT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tally-agent")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_names_the_commit() {
    let out = agent(&["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    tally_testkit::cli_check::assert_version_line(
        &String::from_utf8_lossy(&out.stdout),
        "tally-agent",
        env!("CARGO_PKG_VERSION"),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
    );
}

#[test]
fn help_explains_every_run_flag() {
    let out = agent(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--source",
        "--attach",
        "--include",
        "--exclude",
        "--interval",
        "--pin-dir",
        "TALLY_PIN_DIR",
    ] {
        assert!(help.contains(flag), "run --help lacks {flag}:\n{help}");
    }
    assert!(
        help.contains("lo*"),
        "help says loopback is never counted:\n{help}"
    );
    let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("whole name") && words.contains("never a substring"),
        "help says name patterns are globs on the whole name:\n{help}"
    );
    assert!(
        words.contains("collector's counting rule"),
        "help says name patterns combine with the collector's counting rule:\n{help}"
    );
}

#[test]
fn status_without_pinned_counters_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = agent(&[
        "status",
        "--pin-dir",
        &dir.path().join("none").display().to_string(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no tally counters are pinned"), "{err}");
    assert!(err.contains("tally-agent run"), "{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "one clear line, no backtrace: {err}"
    );
}

#[test]
fn a_pin_dir_off_bpffs_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = agent(&[
        "run",
        "--pin-dir",
        &dir.path().join("pins").display().to_string(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("not on a bpf filesystem"), "{err}");
    assert!(err.contains("mount -t bpf bpf /sys/fs/bpf"), "{err}");
    assert!(err.contains("--source procfs"), "{err}");
}

#[test]
fn bad_patterns_and_intervals_are_refused_before_anything_happens() {
    let out = agent(&[
        "run",
        "--exclude",
        "veth[",
        "--pin-dir",
        "/nonexistent/tally",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid interface pattern \"veth[\""),
        "{}",
        stderr(&out)
    );
    let out = agent(&["run", "--interval", "100ms"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("minimum of 1s"), "{}", stderr(&out));
}

#[test]
fn without_privileges_the_error_names_the_missing_capability() {
    if !privileged("without_privileges_the_error_names_the_missing_capability") {
        return;
    }
    // Drop to an unprivileged user with no capabilities at all.
    let pin_dir = common::pin_dir();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(AGENT)
        .args(["run", "--pin-dir", &pin_dir.display().to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("setpriv");
    assert!(!out.status.success());
    let left_behind = pin_dir.exists();
    let _ = std::fs::remove_dir_all(&pin_dir);
    let err = stderr(&out);
    assert!(err.contains("eBPF cannot be used here"), "{err}");
    assert!(err.contains("lacks CAP_BPF"), "{err}");
    assert!(err.contains("--source procfs"), "{err}");
    assert!(
        !left_behind,
        "a failed start leaves no pin directory behind"
    );
}

#[test]
fn procfs_source_status_works_without_ebpf() {
    let out = agent(&["status", "--source", "procfs", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["source"], "procfs");
    assert!(
        json["epoch"]
            .as_str()
            .is_some_and(|e| e.starts_with("procfs-"))
    );
    assert!(json["load"]["one"].is_number());
    let names: Vec<&str> = json["interfaces"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("lo")), "{names:?}");
}

#[test]
fn bpffs_is_mounted_when_missing() {
    if !privileged("bpffs_is_mounted_when_missing") {
        return;
    }
    // A private mount namespace without bpffs on /sys/fs/bpf (and a network
    // namespace with only lo, so that no interface of the host is touched).
    let script = format!(
        r#"set -e
umount /sys/fs/bpf 2>/dev/null || true
if grep -q ' /sys/fs/bpf bpf ' /proc/self/mounts; then echo "bpffs still mounted"; exit 3; fi
{agent} run --pin-dir /sys/fs/bpf/tally-mount-test >/dev/null 2>&1 &
pid=$!
for i in $(seq 100); do
  if {agent} status --json --pin-dir /sys/fs/bpf/tally-mount-test >status.json 2>/dev/null; then break; fi
  sleep 0.1
done
kill -TERM $pid; wait $pid || true
grep -q ' /sys/fs/bpf bpf ' /proc/self/mounts && echo mounted-by-agent
cat status.json
{agent} detach --pin-dir /sys/fs/bpf/tally-mount-test >/dev/null
"#,
        agent = AGENT
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    assert!(stdout.contains("mounted-by-agent"), "{stdout}");
    let json = stdout
        .split_once("mounted-by-agent")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let status: serde_json::Value = serde_json::from_str(json.trim()).expect("status JSON");
    assert_eq!(status["epoch"].as_str().map(str::len), Some(32), "{status}");
}

#[test]
fn procfs_source_runs_without_ebpf_and_stops_on_sigterm() {
    if !privileged("procfs_source_runs_without_ebpf_and_stops_on_sigterm") {
        return;
    }
    let script = format!(
        "{agent} run --source procfs --interval 1s --log debug & pid=$!; sleep 2; kill -TERM $pid; wait $pid",
        agent = AGENT
    );
    let out = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("unshare");
    let err = stderr(&out);
    assert!(out.status.success(), "exit {}: {err}", out.status);
    assert!(err.contains("counting from /proc/net/dev"), "{err}");
    assert!(
        err.contains("counters"),
        "read the counters at least once: {err}"
    );
    assert!(err.contains("stopping"), "{err}");
}

#[test]
fn a_wrong_flag_is_a_usage_error() {
    for args in [
        &["--bogus", "status"][..],
        &["run", "--bogus"],
        &["status", "--jsn"],
    ] {
        let out = agent(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = stderr(&out);
        assert!(
            err.starts_with("error: unexpected argument '--"),
            "{args:?}: {err}"
        );
        assert!(err.contains("Usage: tally-agent"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let err = stderr(&agent(&["status", "--jsn"]));
    assert!(
        err.contains("tip: a similar argument exists: '--json'"),
        "{err}"
    );

    let out = agent(&["--log", "info,[", "status"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(err.starts_with("error: invalid --log filter"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn a_switch_turned_off_in_the_environment_requires_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pins = dir.path().join("pins").display().to_string();
    let run = |value: &str| {
        Command::new(AGENT)
            .args(["run", "--pin-dir", &pins])
            .env("TALLY_INSECURE_PLAINTEXT", value)
            .env_remove("TALLY_COLLECTOR")
            .stdin(Stdio::null())
            .output()
            .expect("run tally-agent")
    };
    // Off: the command line is fine; `run` gets as far as the pin
    // directory (which is not on bpffs here).
    for off in ["false", "0", "no"] {
        let out = run(off);
        assert_eq!(out.status.code(), Some(1), "{off}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("not on a bpf filesystem"),
            "{off}: {}",
            stderr(&out)
        );
    }
    // On: plaintext to which collector?
    for on in ["true", "1", "YES"] {
        let out = run(on);
        assert_eq!(out.status.code(), Some(2), "{on}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--collector"),
            "{on}: {}",
            stderr(&out)
        );
    }
}
