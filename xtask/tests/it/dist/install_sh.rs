//! The x86_64 tarball's install.sh in Debian 12 ([`DebianHost`]), once with
//! systemd and once with OpenRC: `install.sh collector` installs a collector
//! that starts once configured; `install.sh agent` with the collector's URL,
//! its CA and the token (on stdin) installs and starts an agent whose
//! heartbeats are applied; running it again upgrades in place without
//! losing a byte; `--uninstall` removes everything but the pinned counters,
//! and a later install adopts them; `--uninstall --purge` removes those too.

use super::{
    common::{VERSION, run_ok},
    container::Init,
    debian_host::{DebianHost, FILES},
};

#[test]
fn install_sh_installs_upgrades_and_uninstalls_with_systemd() {
    install_upgrade_uninstall(
        "install_sh_installs_upgrades_and_uninstalls_with_systemd",
        "ishs",
        Init::Systemd,
    );
}

#[test]
fn install_sh_installs_upgrades_and_uninstalls_with_openrc() {
    install_upgrade_uninstall(
        "install_sh_installs_upgrades_and_uninstalls_with_openrc",
        "isho",
        Init::OpenRc,
    );
}

/// Enables and starts `service` the way the init system does.
fn start(host: &DebianHost, init: Init, service: &str) {
    match init {
        Init::Systemd => host
            .container
            .sh_ok(&format!("systemctl enable --now {service}")),
        Init::OpenRc => host.container.sh_ok(&format!(
            "rc-update add {service} default && rc-service {service} start"
        )),
    };
}

/// The collector's settings, readable by its user under OpenRC (it reads
/// its TLS files itself there).
fn configure_collector(host: &DebianHost, init: Init) {
    host.configure_collector();
    if init == Init::OpenRc {
        host.container.sh_ok(
            "chown tally-collector /etc/tally/tls/collector.crt /etc/tally/tls/collector.key",
        );
    }
}

fn install_upgrade_uninstall(test: &str, short: &str, init: Init) {
    let Some(mut host) = DebianHost::boot(test, short, init) else {
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
    let (service_file, starts) = match init {
        Init::Systemd => ("/etc/systemd/system/tally-collector.service", "ExecStart="),
        Init::OpenRc => ("/etc/init.d/tally-collector", "command="),
    };

    // The collector.
    let out = host
        .container
        .sh_ok(&format!("cd {dir} && sh install.sh collector"));
    assert!(out.contains("tally-collector not started"), "{out}");
    let line = host
        .container
        .sh_ok(&format!("grep '^{starts}' {service_file}"));
    assert!(
        line.contains("/usr/local/bin/tally-collector"),
        "{service_file}: {line}"
    );
    configure_collector(&host, init);
    start(&host, init, "tally-collector");
    host.wait_for_log("tally-collector", "tally-collector serving");
    let token = host.enrol();
    host.put("agent.token", token.as_bytes());

    // The agent: installed, given its token on stdin, started.
    host.baseline();
    let out = host.container.sh_ok(&format!(
        "cd {dir} && sh install.sh agent --collector https://localhost:50051 \
         --ca {FILES}/ca.pem --token-file - < {FILES}/agent.token"
    ));
    assert!(out.contains("tally-agent (re)started"), "{out}");
    let token_mode = host
        .container
        .sh_ok("stat -c '%U %a' /etc/tally/agent.token");
    let expected_mode = match init {
        // A credential systemd reads as root.
        Init::Systemd => "root 600",
        // Read by the agent itself.
        Init::OpenRc => "tally-agent 400",
    };
    assert_eq!(token_mode.trim(), expected_mode);
    host.wait_for_log("tally-agent", "attached; counting");
    host.send(400);
    host.arrived("first install");

    // Again, with no option: an upgrade in place, settings and token kept.
    let out = host
        .container
        .sh_ok(&format!("cd {dir} && sh install.sh agent"));
    assert!(out.contains("tally-agent (re)started"), "{out}");
    host.wait_for_log_lines("tally-agent", "tally-agent starting", 2);
    let env = host.container.sh_ok("cat /etc/tally/agent.env");
    for setting in [
        "TALLY_COLLECTOR=https://localhost:50051",
        "TALLY_CA=/etc/tally/ca.pem",
    ] {
        assert!(env.lines().any(|l| l == setting), "{env}");
    }
    host.wait_for_log_lines("tally-agent", "adopted the pinned counter set", 1);
    host.send(300);
    host.arrived("after the upgrade in place");

    // Uninstall: everything goes but the pins, which a new install adopts.
    assert_eq!(host.pins(), ["tally"], "the agent's pin directory");
    host.container
        .sh_ok(&format!("cd {dir} && sh install.sh --uninstall"));
    let left = host.container.sh_ok(
        "for p in /usr/local/bin/tally-agent /usr/local/bin/tally-collector \
                  /etc/systemd/system/tally-agent.service \
                  /etc/systemd/system/tally-collector.service \
                  /etc/init.d/tally-agent /etc/init.d/tally-collector \
                  /etc/tally/agent.env /etc/tally/agent.token /etc/tally/collector.env \
                  /var/lib/tally-agent; do
             if [ -e $p ]; then echo $p; fi
         done",
    );
    assert_eq!(left, "", "left after --uninstall");
    assert_eq!(host.pins(), ["tally"], "the pins stay");
    // What the agent logged so far (under OpenRC its log file went too).
    let adopted = host.log_count("tally-agent", "adopted the pinned counter set");
    let created = host.log_count("tally-agent", "created a new counter set");
    host.container.sh_ok(&format!(
        "cd {dir} && sh install.sh collector --no-start && sh install.sh agent --no-start \
         --collector https://localhost:50051 --ca {FILES}/ca.pem \
         --token-file {FILES}/agent.token"
    ));
    configure_collector(&host, init);
    start(&host, init, "tally-collector");
    start(&host, init, "tally-agent");
    // Adopted again (as on the upgrade in place), never made anew.
    host.wait_for_log_lines("tally-agent", "adopted the pinned counter set", adopted + 1);
    assert_eq!(
        host.log_count("tally-agent", "created a new counter set"),
        created
    );
    host.send(300);
    host.arrived("after a reinstall");

    // Purge: the programs leave the kernel, the pins go.
    host.container
        .sh_ok(&format!("cd {dir} && sh install.sh --uninstall --purge"));
    assert_eq!(host.pins(), Vec::<String>::new(), "pins after --purge");
}
