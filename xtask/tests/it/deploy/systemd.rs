//! The systemd units under `deploy/systemd`: `systemd-analyze verify` accepts
//! them and refuses broken copies of them, the agent keeps only CAP_BPF and
//! CAP_NET_ADMIN and never removes its pins, the collector runs without any
//! privilege, and the environment files and the sysusers entry are sound.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use super::common::{self, agent_help, collector_help, env_file_names, help_names, skip};

const AGENT: &str = "tally-agent.service";
const PIN_DIR: &str = "tally-agent-pin-dir.service";
const COLLECTOR: &str = "tally-collector.service";
const UNITS: [&str; 3] = [AGENT, PIN_DIR, COLLECTOR];
/// Where the units expect the binaries (the packages install them there).
const INSTALLED: &str = "/usr/bin/";
const BINARIES: [&str; 2] = ["tally-agent", "tally-collector"];

fn unit_text(name: &str) -> String {
    let path = common::deploy_dir().join("systemd").join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `systemd-analyze`, or `None` after saying why the test skips.
fn analyzer(test: &str) -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if found {
        Some("systemd-analyze")
    } else {
        skip(
            test,
            "systemd-analyze is not installed (Debian package `systemd`)",
        );
        None
    }
}

/// Writes the units into `dir` for `verify`, changing one thing: the
/// installed binaries' paths (`/usr/bin/tally-*`, absent on a build
/// machine) point at the ones built here, so that `verify` still checks that
/// every `Exec*=` names an executable.
fn stage(dir: &Path, units: &[(&str, String)]) -> Vec<PathBuf> {
    units
        .iter()
        .map(|(name, text)| {
            let mut staged = text.clone();
            for binary in BINARIES {
                let installed = format!("{INSTALLED}{binary} ");
                let built = format!("{} ", common::built_binary(binary).display());
                staged = staged.replace(&installed, &built);
            }
            let path = dir.join(name);
            fs::write(&path, staged).expect("write the staged unit");
            path
        })
        .collect()
}

/// What `systemd-analyze verify` says against the units: a non-zero exit,
/// and every line of its output that names one of them (it reports a
/// misspelt directive or a bad value on stderr and still exits 0). Lines about
/// other units (the host's own) are shown, not counted.
fn verify(analyzer: &str, files: &[PathBuf]) -> Vec<String> {
    let out = Command::new(analyzer)
        .args(["verify", "--man=no", "--generators=no"])
        .args(files)
        .output()
        .expect("run systemd-analyze verify");
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .collect();
    let mut problems = Vec::new();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if names.iter().any(|name| line.contains(name.as_str())) {
            problems.push(line.to_owned());
        } else {
            println!("systemd-analyze (not about our units): {line}");
        }
    }
    if !out.status.success() {
        problems.push(format!("systemd-analyze verify exited with {}", out.status));
    }
    problems
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyzer) = analyzer("units_pass_systemd_analyze_verify") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let units: Vec<(&str, String)> = UNITS.iter().map(|u| (*u, unit_text(u))).collect();
    for (name, text) in &units {
        let runs_ours = BINARIES
            .iter()
            .any(|b| text.contains(&format!("ExecStart={INSTALLED}{b} ")));
        assert!(
            runs_ours || *name == PIN_DIR,
            "{name} should start a binary from {INSTALLED}"
        );
    }
    let files = stage(dir.path(), &units);
    let problems = verify(analyzer, &files);
    assert!(
        problems.is_empty(),
        "systemd-analyze verify complains:\n{}",
        problems.join("\n")
    );
}

#[test]
fn verify_refuses_broken_units() {
    let Some(analyzer) = analyzer("verify_refuses_broken_units") else {
        return;
    };
    let breakages = [
        (
            "a misspelt directive",
            "Restart=on-failure",
            "Restrat=on-failure",
        ),
        ("a bad value", "RestartSec=5s", "RestartSec=soon"),
        ("a misspelt section", "[Service]", "[Servcie]"),
        (
            "an unknown system call",
            "SystemCallFilter=@system-service bpf",
            "SystemCallFilter=@system-service bfp",
        ),
        (
            "a binary that does not exist",
            "ExecStart=/usr/bin/tally-agent run",
            "ExecStart=/usr/bin/tally-agnet run",
        ),
    ];
    let original = unit_text(AGENT);
    for (what, good, bad) in breakages {
        assert!(
            original.contains(good),
            "the agent unit no longer has `{good}`"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let broken = original.replacen(good, bad, 1);
        let files = stage(
            dir.path(),
            &[(AGENT, broken), (PIN_DIR, unit_text(PIN_DIR))],
        );
        let problems = verify(analyzer, &files);
        assert!(
            !problems.is_empty(),
            "a unit with {what} (`{bad}`) passed the check"
        );
        println!("{what}: {}", problems.join(" | "));
    }
}

/// `(section, key, value)` of every directive in a unit (no line
/// continuations in ours: checked).
fn directives(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(!line.ends_with('\\'), "line continuation in a unit: {line}");
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, value)) = line.split_once('=') {
            out.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
    }
    out
}

fn values<'a>(directives: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    directives
        .iter()
        .filter(|(_, k, _)| k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

fn words(values: &[&str]) -> Vec<String> {
    let mut words: Vec<String> = values
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(str::to_owned)
        .collect();
    words.sort();
    words
}

#[test]
fn agent_unit_keeps_only_bpf_and_net_admin_and_its_pins() {
    let text = unit_text(AGENT);
    let d = directives(&text);
    let expected = vec!["CAP_BPF".to_owned(), "CAP_NET_ADMIN".to_owned()];
    assert_eq!(words(&values(&d, "CapabilityBoundingSet")), expected);
    assert_eq!(words(&values(&d, "AmbientCapabilities")), expected);
    let user = values(&d, "User");
    assert_eq!(user, ["tally-agent"], "a dedicated user, not root");
    assert_eq!(values(&d, "NoNewPrivileges"), ["yes"]);
    assert_eq!(values(&d, "Restart"), ["on-failure"]);
    assert_eq!(values(&d, "ProtectSystem"), ["strict"]);
    // Nothing run at stop (or ever) removes the pins.
    for key in ["ExecStop", "ExecStopPost", "ExecReload"] {
        assert!(values(&d, key).is_empty(), "the agent unit has {key}=");
    }
    for (_, key, value) in &d {
        assert!(
            !value.contains("detach"),
            "{key}={value} would remove the pins"
        );
    }
    // The pin directory: prepared by its own unit, the only writable part of
    // the bpf filesystem inside the sandbox.
    assert_eq!(values(&d, "Requires"), [PIN_DIR]);
    assert!(values(&d, "After").contains(&PIN_DIR));
    assert_eq!(values(&d, "TemporaryFileSystem"), ["/sys/fs/bpf"]);
    assert_eq!(values(&d, "BindPaths"), ["/sys/fs/bpf/tally"]);
    // The state directory (the reboot journal), writable and private.
    assert_eq!(values(&d, "StateDirectory"), ["tally-agent"]);
    assert_eq!(values(&d, "StateDirectoryMode"), ["0700"]);
    let families = words(&values(&d, "RestrictAddressFamilies"));
    for family in ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"] {
        assert!(families.iter().any(|f| f == family), "{family} is refused");
    }
    assert!(
        values(&d, "SystemCallFilter")
            .iter()
            .any(|v| v.split_whitespace().any(|w| w == "bpf")),
        "the system call filter must allow bpf()"
    );
    // The token never sits in the environment.
    assert!(values(&d, "LoadCredential").contains(&"token:/etc/tally/agent.token"));

    let pin_dir = directives(&unit_text(PIN_DIR));
    let script = values(&pin_dir, "ExecStart").join(" ");
    for step in [
        "mount -t bpf",
        "mkdir -p /sys/fs/bpf/tally",
        "chown -R tally-agent:tally-agent /sys/fs/bpf/tally",
    ] {
        assert!(script.contains(step), "the pin-dir unit lost `{step}`");
    }
    for namespacing in [
        "PrivateTmp",
        "ProtectSystem",
        "ProtectHome",
        "TemporaryFileSystem",
    ] {
        assert!(
            values(&pin_dir, namespacing).is_empty(),
            "{namespacing}= would mount bpffs in a private namespace, not the host's"
        );
    }
}

#[test]
fn collector_unit_runs_without_privileges() {
    let d = directives(&unit_text(COLLECTOR));
    assert_eq!(values(&d, "DynamicUser"), ["yes"]);
    assert_eq!(values(&d, "CapabilityBoundingSet"), [""]);
    assert_eq!(values(&d, "NoNewPrivileges"), ["yes"]);
    assert_eq!(values(&d, "Restart"), ["on-failure"]);
    assert_eq!(values(&d, "EnvironmentFile"), ["/etc/tally/collector.env"]);
    for key in ["Wants", "After"] {
        let units = words(&values(&d, key));
        for unit in ["network-online.target", "postgresql.service"] {
            assert!(units.iter().any(|u| u == unit), "{key}= lacks {unit}");
        }
    }
}

#[test]
fn environment_files_name_only_real_settings() {
    let cases = [
        ("tally-agent.env.example", AGENT, agent_help()),
        ("tally-collector.env.example", COLLECTOR, collector_help()),
    ];
    for (env_file, unit, help) in cases {
        let text = unit_text(env_file);
        let names = env_file_names(&text);
        assert!(!names.is_empty(), "{env_file} names no setting");
        for (name, _) in &names {
            assert!(
                help_names(&help, name),
                "{env_file} sets {name}, which the binary does not read"
            );
        }
        // And the unit's own Environment= lines.
        for value in values(&directives(&unit_text(unit)), "Environment") {
            for assignment in value.split_whitespace() {
                let (name, _) = assignment.split_once('=').expect("NAME=value");
                assert!(
                    help_names(&help, name),
                    "{unit} sets {name}, which the binary does not read"
                );
            }
        }
    }
    // The agent's token comes from the credential, never from this file.
    let agent = env_file_names(&unit_text("tally-agent.env.example"));
    for (name, commented) in agent {
        assert!(
            commented || !name.starts_with("TALLY_TOKEN"),
            "tally-agent.env.example sets {name}: the unit passes the token as a credential"
        );
    }
}

#[test]
fn env_file_names_are_read_as_systemd_reads_them() {
    let names =
        env_file_names("A_1=x\n#B=y\n# C=z\n# not a setting\n#   ExecStart=/bin/x\nlower=1\n");
    assert_eq!(
        names,
        [
            ("A_1".to_owned(), false),
            ("B".to_owned(), true),
            ("C".to_owned(), true)
        ]
    );
    assert!(help_names("[env: TALLY_CA=]", "TALLY_CA"));
    assert!(!help_names("[env: TALLY_CA=]", "TALLY_C"));
}

#[test]
fn sysusers_entry_creates_the_agents_user() {
    let test = "sysusers_entry_creates_the_agents_user";
    if Command::new("systemd-sysusers")
        .arg("--version")
        .output()
        .is_err()
    {
        skip(
            test,
            "systemd-sysusers is not installed (Debian package `systemd`)",
        );
        return;
    }
    let file = common::deploy_dir()
        .join("systemd")
        .join("tally-agent.sysusers");
    let text = fs::read_to_string(&file).expect("read the sysusers entry");
    let run = |path: &Path| {
        let root = tempfile::tempdir().expect("tempdir");
        Command::new("systemd-sysusers")
            .arg("--dry-run")
            .arg(format!("--root={}", root.path().display()))
            .arg(path)
            .output()
            .expect("run systemd-sysusers")
    };
    let out = run(&file);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-sysusers refuses it: {said}");
    assert!(
        said.contains("Creating user 'tally-agent'"),
        "no user tally-agent: {said}"
    );
    // The unit runs as that user.
    assert_eq!(
        values(&directives(&unit_text(AGENT)), "User"),
        ["tally-agent"]
    );
    // And the check catches a broken entry.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.conf");
    fs::write(&broken, text.replace("u tally-agent -", "u tally agent -"))
        .expect("write the broken entry");
    assert!(!run(&broken).status.success(), "a broken entry passed");
}
