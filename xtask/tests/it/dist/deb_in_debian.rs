//! The amd64 `.deb`s in a booted Debian 12 ([`DebianHost`]): the
//! collector's package installs without starting anything, and starts with
//! `systemctl` once configured; the agent's package, installed without a
//! token, starts nothing; given the token, the agent runs as its unit says
//! (CAP_BPF and CAP_NET_ADMIN only) and its heartbeats are applied; an
//! upgrade from an older package version and a restart lose no byte; `apt-get
//! purge` leaves only what deploy/README.md says stays.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::{
    common::{VERSION, run_ok},
    container::Init,
    debian_host::{DebianHost, FILES},
};

const TEST: &str = "debs_install_start_upgrade_and_purge_in_debian_12";
/// The version the upgrade starts from: the same files, packaged older.
const OLD_VERSION: &str = "0.0.1-1";

/// An older `.deb` of the agent: the same files under [`OLD_VERSION`], made
/// by cargo-deb from the `dist` build `cargo xtask test` left.
fn old_agent_deb(dir: &Path) -> PathBuf {
    let out = dir.join(format!("tally-agent_{OLD_VERSION}_amd64.deb"));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    run_ok(
        Command::new("cargo")
            .current_dir(workspace)
            .args(["deb", "--package", "tally-agent"])
            .args(["--target", "x86_64-unknown-linux-musl", "--profile", "dist"])
            .args(["--no-build", "--no-strip", "--deb-version", OLD_VERSION])
            .arg("--output")
            .arg(&out),
    );
    out
}

#[test]
fn debs_install_start_upgrade_and_purge_in_debian_12() {
    let Some(mut host) = DebianHost::boot(TEST, "deb", Init::Systemd) else {
        return;
    };
    let agent_deb = format!("tally-agent_{VERSION}-1_amd64.deb");
    let collector_deb = format!("tally-collector_{VERSION}-1_amd64.deb");
    for name in [&agent_deb, &collector_deb] {
        host.put_file(&host.dist.join(name), name);
    }
    host.put_file(&old_agent_deb(host.scratch.path()), "tally-agent-old.deb");

    // The collector: installed, not started; configured, started, enrols.
    let installed = host
        .container
        .sh_ok(&format!("dpkg -i {FILES}/{collector_deb}"));
    assert!(
        installed.contains("tally-collector: not started"),
        "{installed}"
    );
    let enabled = host.container.sh("systemctl is-enabled tally-collector");
    assert_eq!(String::from_utf8_lossy(&enabled.stdout).trim(), "disabled");
    host.configure_collector();
    host.container.sh_ok("systemctl start tally-collector");
    host.wait_for_log("tally-collector", "tally-collector serving");
    let token = host.enrol();

    // The agent: the older package without a token starts nothing.
    let installed = host
        .container
        .sh_ok(&format!("dpkg -i {FILES}/tally-agent-old.deb"));
    assert!(
        installed.contains("tally-agent: not started"),
        "{installed}"
    );
    let active = host.container.sh("systemctl is-active tally-agent");
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "inactive");
    assert!(
        host.container
            .sh("getent passwd tally-agent")
            .status
            .success(),
        "the package made the user"
    );
    let state = host.container.sh_ok("stat -c '%U %a' /var/lib/tally-agent");
    assert_eq!(state.trim(), "tally-agent 700");

    // Given its settings and token, it runs; every byte arrives.
    host.baseline();
    host.put("agent.token", token.as_bytes());
    host.container.sh_ok(&format!(
        "install -m 0644 {FILES}/ca.pem /etc/tally/ca.pem
         printf '%s\\n' TALLY_COLLECTOR=https://localhost:50051 \
             TALLY_CA=/etc/tally/ca.pem TALLY_INTERVAL=1s > /etc/tally/agent.env
         install -m 0600 {FILES}/agent.token /etc/tally/agent.token
         systemctl enable --now tally-agent"
    ));
    host.wait_for_log("tally-agent", "attached; counting");
    host.send(500);
    let first = host.arrived("first start");
    assert!(first.0 >= 500 * 1000, "{first:?}");
    let pid_before = host.main_pid("tally-agent");

    // An upgrade restarts it on the new binary; a restart too: nothing lost.
    let upgraded = host
        .container
        .sh_ok(&format!("dpkg -i --force-confold {FILES}/{agent_deb}"));
    assert!(!upgraded.contains("not started"), "{upgraded}");
    assert_ne!(
        pid_before,
        host.main_pid("tally-agent"),
        "the upgrade restarted the agent"
    );
    let version = host
        .container
        .sh_ok("dpkg-query -W -f '${Version}' tally-agent");
    assert_eq!(version, format!("{VERSION}-1"));
    host.send(300);
    host.arrived("after the upgrade");
    host.container.sh_ok("systemctl restart tally-agent");
    host.send(200);
    let last = host.arrived("after a restart");
    assert!(last.0 >= 1000 * 1000, "{last:?}");
    let starts = host
        .container
        .sh_ok("journalctl -u tally-agent --no-pager | grep -c 'tally-agent starting'");
    assert_eq!(starts.trim(), "3", "started, upgraded, restarted");

    // Purge: only the user and what was put in /etc/tally by hand stay.
    host.container
        .sh_ok("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tally-agent tally-collector");
    let left = host.container.sh_ok(
        "for p in /usr/bin/tally-agent /usr/bin/tally-collector \
                  /usr/lib/systemd/system/tally-agent.service \
                  /usr/lib/systemd/system/tally-agent-pin-dir.service \
                  /usr/lib/systemd/system/tally-collector.service \
                  /usr/lib/sysusers.d/tally-agent.conf /usr/lib/tmpfiles.d/tally-agent.conf \
                  /etc/tally/agent.env /etc/tally/collector.env /etc/tally/agent.token \
                  /var/lib/tally-agent /sys/fs/bpf/tally /usr/share/doc/tally-agent \
                  /usr/share/doc/tally-collector; do
             if [ -e $p ]; then echo $p; fi
         done
         find /etc/tally -mindepth 1 | sort",
    );
    assert_eq!(
        left.lines().collect::<Vec<_>>(),
        [
            "/etc/tally/ca.pem",
            "/etc/tally/tls",
            "/etc/tally/tls/collector.crt",
            "/etc/tally/tls/collector.key",
        ],
        "left after the purge"
    );
    assert!(
        host.container
            .sh("getent passwd tally-agent")
            .status
            .success()
    );
    assert_eq!(host.pins(), Vec::<String>::new(), "pins left on the host");
}
