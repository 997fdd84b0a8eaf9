//! The amd64 `.deb`s in a booted Debian 12 (debootstrap, systemd-nspawn):
//! the collector's package installs without starting anything, starts with
//! `systemctl` against a throwaway PostgreSQL (its Unix socket bound in),
//! and enrols a node; the agent's package, installed without a token,
//! starts nothing; given the token it runs as its unit says (CAP_BPF and
//! CAP_NET_ADMIN, its pins in the bpf file system bound in) and its
//! heartbeats are applied; an upgrade from an older package version and a
//! restart lose no byte; `apt-get purge` leaves only what deploy/README.md
//! says stays.
//!
//! The counting itself is the agent tests' subject: here the container's
//! network namespace has one veth end (static neighbours, no IPv6), and the
//! stored totals must equal what its kernel counted.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sqlx::{PgPool, Row as _};
use tally_testkit::{
    certs::Pki,
    devdb,
    netns::{IfStats, Netns, VethPair},
    skip::skip,
    traffic,
};

use super::{
    common::{VERSION, dir_from, dist_dir, run_ok},
    container::{Bind, Container, wait_for},
};

const TEST: &str = "debs_install_start_upgrade_and_purge_in_debian_12";
const NODE: &str = "deb-node";
const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";
/// The version the upgrade starts from: the same files, packaged older.
const OLD_VERSION: &str = "0.0.1-1";

/// The pin directory's parent on the host, bound in as the container's
/// /sys/fs/bpf; removed (with every pin in it) when the test ends.
struct BpfDir(PathBuf);

impl BpfDir {
    fn make(name: &str) -> Self {
        let bpffs = Path::new("/sys/fs/bpf");
        let mounted = Command::new("mountpoint")
            .arg("-q")
            .arg(bpffs)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            run_ok(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(bpffs));
        }
        let dir = bpffs.join(name);
        fs::create_dir(&dir).expect("a directory on the bpf file system");
        Self(dir)
    }
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The stored `(totalDownload, totalUpload)` of node `name`.
async fn totals(pool: &PgPool, name: &str) -> Option<(u64, u64)> {
    let row = sqlx::query(
        r#"SELECT t."totalDownload", t."totalUpload" FROM "traffic_stats" t
           JOIN "nodes" n ON n."id" = t."nodeId" WHERE n."name" = $1"#,
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .ok()?;
    let down: i64 = row.try_get(0).ok()?;
    let up: i64 = row.try_get(1).ok()?;
    Some((u64::try_from(down).ok()?, u64::try_from(up).ok()?))
}

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
            .args([
                "deb",
                "--package",
                "tally-agent",
                "--target",
                "x86_64-unknown-linux-musl",
            ])
            .args([
                "--profile",
                "dist",
                "--no-build",
                "--no-strip",
                "--deb-version",
                OLD_VERSION,
            ])
            .arg("--output")
            .arg(&out),
    );
    out
}

#[test]
fn debs_install_start_upgrade_and_purge_in_debian_12() {
    let (Some(dist), Some(template)) = (dist_dir(TEST), dir_from("TALLY_DEBIAN_ROOT", TEST)) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(TEST, "booting a container needs root");
        return;
    }
    let Some(cluster) = devdb::start_or_skip(TEST) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime
        .block_on(cluster.create_database("tally"))
        .expect("create the database");
    let pool = runtime
        .block_on(PgPool::connect(&cluster.url("tally")))
        .expect("connect");
    // The collector's transient user must reach the socket.
    fs::set_permissions(cluster.socket_dir(), fs::Permissions::from_mode(0o755))
        .expect("open the socket directory");

    // The container's network: one veth end in its namespace, the other in
    // a peer namespace that sends it traffic.
    let id = std::process::id();
    let node_ns = Netns::create_host(format!("tally-deb-{id}")).expect("namespace");
    let peer_ns = Netns::create_host(format!("tally-deb-{id}-peer")).expect("namespace");
    let link = VethPair::new("tdeb0", "tdeb1", [10, 213, 7], [0x02, 0x7a, 0x13, 0x07]);
    link.create(&node_ns, &peer_ns).expect("veth pair");
    link.set_up(&node_ns, &peer_ns).expect("veth up");
    let bpf_dir = BpfDir::make(&format!("tally-deb-{id}"));

    let scratch = tempfile::tempdir().expect("temp dir");
    let container = Container::boot(
        &template,
        &node_ns.path(),
        &[
            Bind {
                host: &cluster.socket_dir(),
                inside: "/run/tally-pg",
            },
            Bind {
                host: &bpf_dir.0,
                inside: "/sys/fs/bpf",
            },
        ],
        &scratch.path().join("nspawn.log"),
    );

    // The packages and certificates, copied into the container's /root.
    let debs = container.root().join("root/debs");
    fs::create_dir_all(&debs).expect("mkdir");
    for name in [
        format!("tally-collector_{VERSION}-1_amd64.deb"),
        format!("tally-agent_{VERSION}-1_amd64.deb"),
    ] {
        fs::copy(dist.join(&name), debs.join(&name)).expect("copy a .deb");
    }
    let old_deb = old_agent_deb(scratch.path());
    fs::copy(&old_deb, debs.join("tally-agent-old.deb")).expect("copy the older .deb");
    let pki = Pki::new(&["localhost"]).expect("certificates");
    for (name, text) in [
        ("ca.pem", &pki.ca_pem),
        ("collector.crt", &pki.cert_pem),
        ("collector.key", &pki.key_pem),
    ] {
        fs::write(debs.join(name), text).expect("write a certificate");
    }

    // The collector: installed, not started; configured, started, enrols.
    let installed = container.sh_ok(&format!(
        "dpkg -i /root/debs/tally-collector_{VERSION}-1_amd64.deb"
    ));
    assert!(
        installed.contains("tally-collector: not started"),
        "{installed}"
    );
    let enabled = container.sh("systemctl is-enabled tally-collector");
    assert_eq!(String::from_utf8_lossy(&enabled.stdout).trim(), "disabled");
    let database_url = format!(
        "postgres://postgres@localhost/tally?host=/run/tally-pg&port={}&sslmode=disable",
        cluster.port()
    );
    container.sh_ok(&format!(
        "install -d -m 0755 /etc/tally/tls
         install -m 0600 /root/debs/collector.crt /root/debs/collector.key /etc/tally/tls/
         install -m 0644 /root/debs/ca.pem /etc/tally/ca.pem
         cat > /etc/tally/collector.env <<'EOF'
DATABASE_URL={database_url}
TALLY_LISTEN=127.0.0.1:50051
TALLY_HTTP_LISTEN=127.0.0.1:8080
TALLY_ADMIN_TOKEN={ADMIN_TOKEN}
EOF
         systemctl start tally-collector"
    ));
    let serving = wait_for(Duration::from_secs(60), || {
        let log = container.sh("journalctl -u tally-collector --no-pager");
        String::from_utf8_lossy(&log.stdout)
            .contains("tally-collector serving")
            .then_some(())
    });
    assert!(
        serving.is_some(),
        "the collector did not start:\n{}",
        container.sh_ok("systemctl status tally-collector --no-pager -l || true; journalctl -u tally-collector --no-pager | tail -30")
    );
    let token = container.sh_ok(&format!(
        "DATABASE_URL='{database_url}' tally-collector node add {NODE} --token-only"
    ));
    let token = token.trim();
    assert!(token.len() >= 32, "a token: {token:?}");

    // The agent: the older package without a token starts nothing.
    let installed = container.sh_ok("dpkg -i /root/debs/tally-agent-old.deb");
    assert!(
        installed.contains("tally-agent: not started"),
        "{installed}"
    );
    let active = container.sh("systemctl is-active tally-agent");
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "inactive");
    assert!(
        container.sh("getent passwd tally-agent").status.success(),
        "the package made the user"
    );
    let state = container.sh_ok("stat -c '%U %a' /var/lib/tally-agent");
    assert_eq!(state.trim(), "tally-agent 700");

    // Given its settings and token, it runs; every byte arrives.
    let kernel_start: IfStats = node_ns.settle(&link.a.iface).expect("stats");
    container.sh_ok(&format!(
        "cat > /etc/tally/agent.env <<'EOF'
TALLY_COLLECTOR=https://localhost:50051
TALLY_CA=/etc/tally/ca.pem
TALLY_INTERVAL=1s
EOF
         printf '%s' '{token}' > /root/token
         install -m 0600 /root/token /etc/tally/agent.token
         rm /root/token
         systemctl enable --now tally-agent"
    ));
    // Counting starts when the programs are attached, a moment after the
    // unit starts.
    let attached = wait_for(Duration::from_secs(30), || {
        let log = container.sh("journalctl -u tally-agent --no-pager");
        String::from_utf8_lossy(&log.stdout)
            .contains("attached; counting")
            .then_some(())
    });
    assert!(
        attached.is_some(),
        "the agent did not attach:\n{}",
        container.sh_ok("journalctl -u tally-agent --no-pager | tail -30")
    );
    let send = |count: usize| {
        traffic::udp_burst(&peer_ns, link.b.addr, &node_ns, link.a.addr, count, 1000)
            .expect("traffic");
    };
    let arrived = |what: &str| {
        let kernel = node_ns
            .settle(&link.a.iface)
            .expect("stats")
            .checked_since(&kernel_start)
            .expect("counters only grow");
        let expected = (kernel.rx_bytes, kernel.tx_bytes);
        let stored = wait_for(Duration::from_secs(60), || {
            let stored = runtime.block_on(totals(&pool, NODE));
            (stored == Some(expected)).then_some(())
        });
        if stored.is_none() {
            let status = container.sh("tally-agent status");
            panic!(
                "{what}: stored {:?} != kernel {expected:?}\n{}\n{}{}",
                runtime.block_on(totals(&pool, NODE)),
                container
                    .sh_ok("journalctl -u tally-agent -u tally-collector --no-pager | tail -40"),
                String::from_utf8_lossy(&status.stdout),
                String::from_utf8_lossy(&status.stderr),
            );
        }
        expected
    };
    send(500);
    let first = arrived("first start");
    assert!(first.0 >= 500 * 1000, "{first:?}");
    let pid_before = container.sh_ok("systemctl show -P MainPID tally-agent");

    // An upgrade restarts it on the new binary; a restart too: nothing lost.
    let upgraded = container.sh_ok(&format!(
        "dpkg -i --force-confold /root/debs/tally-agent_{VERSION}-1_amd64.deb"
    ));
    assert!(!upgraded.contains("not started"), "{upgraded}");
    let pid_after = container.sh_ok("systemctl show -P MainPID tally-agent");
    assert_ne!(pid_before, pid_after, "the upgrade restarted the agent");
    let version = container.sh_ok("dpkg-query -W -f '${Version}' tally-agent");
    assert_eq!(version, format!("{VERSION}-1"));
    send(300);
    arrived("after the upgrade");
    container.sh_ok("systemctl restart tally-agent");
    send(200);
    let last = arrived("after a restart");
    assert!(last.0 >= 1000 * 1000, "{last:?}");
    let starts =
        container.sh_ok("journalctl -u tally-agent --no-pager | grep -c 'tally-agent starting'");
    assert_eq!(starts.trim(), "3", "started, upgraded, restarted");

    // Purge: only the user and what was put in /etc/tally by hand stay.
    container
        .sh_ok("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tally-agent tally-collector");
    let left = container.sh_ok(
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
    assert!(container.sh("getent passwd tally-agent").status.success());
    let pins: Vec<_> = fs::read_dir(&bpf_dir.0).expect("list").collect();
    assert!(pins.is_empty(), "pins left on the host: {pins:?}");
    drop(container);
}
