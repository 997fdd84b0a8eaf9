//! `cargo xtask demo --duration 60 --check` end to end, as CI runs it: the
//! real xtask binary, with the agent and collector that `cargo test
//! --workspace` built beside it (`--bin-dir`; the build step is the only
//! part of the demo this skips). The demo's own check asserts through the
//! API that the three demo nodes exist, were online, and have non-zero
//! totals equal to what their hosts' kernels counted, ranked as planned;
//! this test asserts that the check ran and passed, that the leftovers of
//! an earlier "crashed" run were removed at the start, and that afterwards
//! no namespace, pin directory, process or directory of the run is left.
//!
//! Needs root with network namespaces and bpffs, and PostgreSQL 15's
//! binaries: otherwise it prints `SKIP …`, or fails with
//! `TALLY_REQUIRE_PRIVILEGED=1`. Run alone (`cargo test -p xtask --test
//! it -- demo::`), it uses whatever `tally-agent` and `tally-collector` are in the
//! target directory: build them first.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
const TEST: &str = "demo_counts_exactly_and_leaves_nothing_behind";

/// Why this machine cannot run the demo, if it cannot.
fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("not running as root".to_owned());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        missing.push("`ip` (iproute2) is not installed".to_owned());
    }
    if !Path::new("/sys/fs/bpf").is_dir() {
        missing.push("/sys/fs/bpf does not exist".to_owned());
    }
    let pg = tally_testkit::devdb::pg_bin_dir();
    if !pg.join("postgres").is_file() || !pg.join("initdb").is_file() {
        missing.push(format!("no PostgreSQL binaries in {}", pg.display()));
    }
    missing
}

/// A namespace and a pin directory named as a demo run would name them,
/// after a pid that no longer runs: what a killed demo leaves behind.
struct FakeLeftovers {
    namespace: String,
    pin_dir: PathBuf,
}

impl FakeLeftovers {
    fn make() -> Self {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let dead = child.id();
        child.wait().expect("wait");
        let name = format!("tally-demo-{dead}-alpha");
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(status.success(), "ip netns add {name}");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        fs::create_dir(&pin_dir).expect("a directory on bpffs");
        Self {
            namespace: name,
            pin_dir,
        }
    }

    fn namespace_exists(&self) -> bool {
        namespaces().iter().any(|n| n == &self.namespace)
    }
}

impl Drop for FakeLeftovers {
    fn drop(&mut self) {
        if self.namespace_exists() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.namespace])
                .status();
        }
        let _ = fs::remove_dir(&self.pin_dir);
    }
}

fn namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Live (non-zombie) processes whose command line contains any of `needles`.
fn processes_mentioning(needles: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").filter_map(Result::ok) {
        let path = entry.path();
        let Ok(cmdline) = fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|stat| {
                let after = stat.rfind(')')?;
                stat[after + 1..]
                    .split_whitespace()
                    .next()
                    .map(|s| s == "Z")
            })
            .unwrap_or(true);
        if !zombie && needles.iter().any(|n| cmdline.contains(n.as_str())) {
            found.push(format!("{}: {cmdline}", path.display()));
        }
    }
    found
}

#[test]
fn demo_counts_exactly_and_leaves_nothing_behind() {
    let missing = missing();
    if !missing.is_empty() {
        let reason = missing.join(", ");
        tally_testkit::skip::skip(
            TEST,
            &format!("needs root with network namespaces, bpffs and PostgreSQL 15 ({reason})"),
        );
        return;
    }
    let bin_dir = Path::new(XTASK).parent().expect("the target directory");
    for bin in ["tally-agent", "tally-collector"] {
        assert!(
            bin_dir.join(bin).is_file(),
            "{} is missing: build it (`cargo build -p tally-agent -p tally-collector`) or run \
             the whole suite (`cargo xtask test`)",
            bin_dir.join(bin).display()
        );
    }
    let leftovers = FakeLeftovers::make();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();

    let child = Command::new(XTASK)
        .args(["demo", "--duration", "60", "--check", "--http-port"])
        .arg(port.to_string())
        .arg("--bin-dir")
        .arg(bin_dir)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xtask demo");
    let run = child.id();
    let out = child.wait_with_output().expect("wait for xtask demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with --nocapture, and when the test fails.
    println!("{stdout}");
    eprintln!("{stderr}");
    let context = || format!("xtask demo ({}):\n{stdout}\n{stderr}", out.status);

    assert!(out.status.success(), "the demo failed; {}", context());
    for node in ["demo-alpha", "demo-bravo", "demo-charlie"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("check: {node} ")) && l.ends_with("equal")),
            "{node}'s totals were checked against the kernel's; {}",
            context()
        );
    }
    assert!(
        stdout.contains("as planned") && stdout.contains("check: passed"),
        "the ranking was checked and the check passed; {}",
        context()
    );

    // The earlier run's leftovers went at the start.
    assert!(
        stdout.contains(&format!("namespace {}", leftovers.namespace)),
        "the demo says it removed the leftovers; {}",
        context()
    );
    assert!(
        !leftovers.namespace_exists(),
        "{} is left",
        leftovers.namespace
    );
    assert!(
        !leftovers.pin_dir.exists(),
        "{} is left",
        leftovers.pin_dir.display()
    );

    // Nothing of this run is left.
    let prefix = format!("tally-demo-{run}-");
    let namespaces: Vec<String> = namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(namespaces.is_empty(), "namespaces left: {namespaces:?}");
    let pins: Vec<String> = fs::read_dir("/sys/fs/bpf")
        .expect("/sys/fs/bpf")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(pins.is_empty(), "pin directories left: {pins:?}");
    let processes = processes_mentioning(&[
        format!("/sys/fs/bpf/{prefix}"),
        format!("/tally-demo/{run}/"),
        format!("127.0.0.1:{port}"),
    ]);
    assert!(processes.is_empty(), "processes left: {processes:#?}");
    let run_dir = bin_dir
        .parent()
        .expect("the target directory")
        .join("tally-demo")
        .join(run.to_string());
    assert!(!run_dir.exists(), "{} is left", run_dir.display());
}
