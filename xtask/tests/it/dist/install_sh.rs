//! The x86_64 tarball's install.sh in a booted Debian 12 with systemd
//! ([`DebianHost`]): `install.sh collector` installs a collector that starts
//! once configured; `install.sh agent` with the collector's URL, its CA and
//! the token (on stdin) installs and starts an agent whose heartbeats are
//! applied; running it again upgrades in place without losing a byte;
//! `--uninstall` removes everything but the pinned counters, and a later
//! install adopts them; `--uninstall --purge` removes those too.

use super::{
    common::{VERSION, run_ok},
    debian_host::{DebianHost, FILES},
};

const TEST: &str = "install_sh_installs_upgrades_and_uninstalls_with_systemd";

#[test]
fn install_sh_installs_upgrades_and_uninstalls_with_systemd() {
    let Some(mut host) = DebianHost::boot(TEST, "ish") else {
        return;
    };
    let tarball = host
        .dist
        .join(format!("tally-{VERSION}-x86_64-unknown-linux-musl.tar.gz"));
    run_ok(
        std::process::Command::new("tar")
            .arg("--extract")
            .arg("--file")
            .arg(&tarball)
            .arg("--directory")
            .arg(host.container.root().join("root")),
    );
    let dir = format!("/root/tally-{VERSION}-x86_64-unknown-linux-musl");

    // The collector.
    let out = host
        .container
        .sh_ok(&format!("cd {dir} && sh install.sh collector"));
    assert!(out.contains("tally-collector not started"), "{out}");
    let unit = host
        .container
        .sh_ok("grep ExecStart= /etc/systemd/system/tally-collector.service");
    assert_eq!(
        unit.trim(),
        "ExecStart=/usr/local/bin/tally-collector serve"
    );
    host.configure_collector();
    host.container
        .sh_ok("systemctl enable --now tally-collector");
    host.wait_for_journal("tally-collector", "tally-collector serving");
    let token = host.enrol();
    host.put("agent.token", token.as_bytes());

    // The agent: installed, given its token on stdin, started.
    host.baseline();
    let install_agent = format!(
        "cd {dir} && sh install.sh agent --collector https://localhost:50051 \
         --ca {FILES}/ca.pem --token-file - < {FILES}/agent.token"
    );
    let out = host.container.sh_ok(&install_agent);
    assert!(out.contains("tally-agent (re)started"), "{out}");
    let token_mode = host
        .container
        .sh_ok("stat -c '%U %a' /etc/tally/agent.token");
    assert_eq!(token_mode.trim(), "root 600");
    host.wait_for_journal("tally-agent", "attached; counting");
    host.send(400);
    host.arrived("first install");
    let pid_before = host.main_pid("tally-agent");

    // Again, with no option: an upgrade in place, settings and token kept.
    let out = host
        .container
        .sh_ok(&format!("cd {dir} && sh install.sh agent"));
    assert!(out.contains("tally-agent (re)started"), "{out}");
    assert_ne!(pid_before, host.main_pid("tally-agent"), "restarted");
    let env = host.container.sh_ok("cat /etc/tally/agent.env");
    assert!(
        env.lines()
            .any(|l| l == "TALLY_COLLECTOR=https://localhost:50051"),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l == "TALLY_CA=/etc/tally/ca.pem"),
        "{env}"
    );
    host.send(300);
    host.arrived("after the upgrade in place");

    // Uninstall: everything goes but the pins, which a new install adopts.
    let pins = host.pins();
    assert_eq!(pins, ["tally"], "the agent's pin directory");
    host.container
        .sh_ok(&format!("cd {dir} && sh install.sh --uninstall"));
    let left = host.container.sh_ok(
        "for p in /usr/local/bin/tally-agent /usr/local/bin/tally-collector \
                  /etc/systemd/system/tally-agent.service \
                  /etc/systemd/system/tally-collector.service \
                  /etc/tally/agent.env /etc/tally/agent.token /etc/tally/collector.env \
                  /var/lib/tally-agent; do
             if [ -e $p ]; then echo $p; fi
         done",
    );
    assert_eq!(left, "", "left after --uninstall");
    assert_eq!(host.pins(), ["tally"], "the pins stay");
    host.container.sh_ok(&format!(
        "cd {dir} && sh install.sh collector --no-start && sh install.sh agent --no-start \
         --collector https://localhost:50051 --ca {FILES}/ca.pem \
         --token-file {FILES}/agent.token"
    ));
    host.configure_collector();
    host.container
        .sh_ok("systemctl enable --now tally-collector && systemctl enable --now tally-agent");
    // Adopted (as on the upgrade in place before), not made anew.
    host.wait_for_journal_lines("tally-agent", "adopted the pinned counter set", 2);
    assert_eq!(
        host.journal_count("tally-agent", "created a new counter set"),
        1
    );
    host.send(300);
    host.arrived("after a reinstall");

    // Purge: the programs leave the kernel, the pins go.
    host.container
        .sh_ok(&format!("cd {dir} && sh install.sh --uninstall --purge"));
    assert_eq!(host.pins(), Vec::<String>::new(), "pins after --purge");
}
