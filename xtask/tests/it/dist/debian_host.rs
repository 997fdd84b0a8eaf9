//! A node made for the install tests: a Debian 12 run with systemd-nspawn
//! (a copy of `TALLY_DEBIAN_ROOT` booted with systemd, or of
//! `TALLY_DEBIAN_OPENRC_ROOT` with OpenRC) in a network namespace of its own
//! with one veth end (static neighbours, no IPv6) whose peer sends it
//! traffic, a throwaway PostgreSQL reached through its Unix socket bound in
//! at /run/tally-pg, a directory of the host's bpf file system bound in as
//! its /sys/fs/bpf, and certificates for `localhost` in /root/files. What
//! is installed, and how, is each test's business; this knows how to give
//! the collector its settings, enrol the node, send traffic and compare the
//! stored totals with what the node's kernel counted.

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
    devdb::{self, TempCluster},
    netns::{IfStats, Netns, VethPair},
    skip::skip,
    traffic,
};

use super::{
    common::{dir_from, dist_dir, run_ok},
    container::{Bind, Container, Init, wait_for},
};

/// The node's name in the collector.
pub const NODE: &str = "install-node";
const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";
/// Where the test's files are inside the container.
pub const FILES: &str = "/root/files";

/// A directory of the host's bpf file system, bound in as the container's
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

/// Fields drop in this order: the container before what it uses.
pub struct DebianHost {
    pub container: Container,
    init: Init,
    pool: PgPool,
    runtime: tokio::runtime::Runtime,
    cluster: TempCluster,
    node_ns: Netns,
    peer_ns: Netns,
    link: VethPair,
    bpf_dir: BpfDir,
    kernel_start: Option<IfStats>,
    pub dist: PathBuf,
    pub scratch: tempfile::TempDir,
}

impl DebianHost {
    /// The node, booted; `None` (after saying why) where it cannot be made.
    pub fn boot(test: &str, short: &str, init: Init) -> Option<Self> {
        let template_variable = match init {
            Init::Systemd => "TALLY_DEBIAN_ROOT",
            Init::OpenRc => "TALLY_DEBIAN_OPENRC_ROOT",
        };
        let (Some(dist), Some(template)) = (dist_dir(test), dir_from(template_variable, test))
        else {
            return None;
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            skip(test, "booting a container needs root");
            return None;
        }
        let cluster = devdb::start_or_skip(test)?;
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime
            .block_on(cluster.create_database("tally"))
            .expect("create the database");
        let pool = runtime
            .block_on(PgPool::connect(&cluster.url("tally")))
            .expect("connect");
        // The collector's unprivileged user must reach the socket (it still
        // needs the cluster's password).
        fs::set_permissions(cluster.socket_dir(), fs::Permissions::from_mode(0o755))
            .expect("open the socket directory");

        let id = std::process::id();
        let node_ns = Netns::create_host(format!("tally-{short}-{id}")).expect("namespace");
        let peer_ns = Netns::create_host(format!("tally-{short}-{id}-peer")).expect("namespace");
        let link = VethPair::new("tnode0", "tpeer0", [10, 213, 7], [0x02, 0x7a, 0x13, 0x07]);
        link.create(&node_ns, &peer_ns).expect("veth pair");
        link.set_up(&node_ns, &peer_ns).expect("veth up");
        let bpf_dir = BpfDir::make(&format!("tally-{short}-{id}"));

        let scratch = tempfile::tempdir().expect("temp dir");
        let container = Container::start(
            &template,
            init,
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
        let host = DebianHost {
            container,
            init,
            dist,
            scratch,
            runtime,
            pool,
            cluster,
            node_ns,
            peer_ns,
            link,
            bpf_dir,
            kernel_start: None,
        };
        let pki = Pki::new(&["localhost"]).expect("certificates");
        for (name, text) in [
            ("ca.pem", &pki.ca_pem),
            ("collector.crt", &pki.cert_pem),
            ("collector.key", &pki.key_pem),
        ] {
            host.put(name, text.as_bytes());
        }
        Some(host)
    }

    /// Writes `name` into the container's [`FILES`] directory.
    pub fn put(&self, name: &str, bytes: &[u8]) {
        let dir = self.container.root().join(FILES.trim_start_matches('/'));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(name), bytes).expect("write into the container");
    }

    /// Copies `path` into the container's [`FILES`] directory as `name`.
    pub fn put_file(&self, path: &Path, name: &str) {
        self.put(name, &fs::read(path).expect("read"));
    }

    /// The collector's settings for this node's database, listening on
    /// localhost, and its TLS files in /etc/tally/tls; starts nothing.
    pub fn configure_collector(&self) {
        let database_url = self.database_url();
        self.container.sh_ok(&format!(
            "install -d -m 0755 /etc/tally/tls
             install -m 0600 {FILES}/collector.crt {FILES}/collector.key /etc/tally/tls/
             cat > /etc/tally/collector.env <<'EOF'
DATABASE_URL={database_url}
TALLY_LISTEN=127.0.0.1:50051
TALLY_HTTP_LISTEN=127.0.0.1:8080
TALLY_ADMIN_TOKEN={ADMIN_TOKEN}
EOF"
        ));
    }

    fn database_url(&self) -> String {
        format!(
            "postgres://postgres:{}@localhost/tally?host=/run/tally-pg&port={}&sslmode=disable",
            self.cluster.password(),
            self.cluster.port()
        )
    }

    /// What `unit` (`tally-agent`, `tally-collector`) logged: its journal
    /// under systemd, its log file under OpenRC.
    pub fn log(&self, unit: &str) -> String {
        let out = match self.init {
            Init::Systemd => self
                .container
                .sh(&format!("journalctl -u {unit} --no-pager")),
            Init::OpenRc => self.container.sh(&format!("cat /var/log/{unit}.log")),
        };
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many lines `unit` logged that contain `text`.
    pub fn log_count(&self, unit: &str, text: &str) -> usize {
        self.log(unit).lines().filter(|l| l.contains(text)).count()
    }

    /// Waits until `unit` logged `count` lines containing `text`; panics
    /// with its log.
    pub fn wait_for_log_lines(&self, unit: &str, text: &str, count: usize) {
        let found = wait_for(Duration::from_secs(60), || {
            (self.log_count(unit, text) >= count).then_some(())
        });
        if found.is_none() {
            let log = self.log(unit);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{unit} never logged {count} lines with {text:?}; its last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }

    /// Waits until `unit` logged `text`.
    pub fn wait_for_log(&self, unit: &str, text: &str) {
        self.wait_for_log_lines(unit, text, 1);
    }

    /// Enrols [`NODE`] with `tally-collector node add` inside; its token.
    pub fn enrol(&self) -> String {
        let token = self.container.sh_ok(&format!(
            "DATABASE_URL='{}' tally-collector node add {NODE} --token-only",
            self.database_url()
        ));
        let token = token.trim().to_owned();
        assert!(token.len() >= 32, "a token: {token:?}");
        token
    }

    /// The node's kernel counters now: what the stored totals are compared
    /// with from here on (take it before the agent first starts).
    pub fn baseline(&mut self) {
        self.kernel_start = Some(self.node_ns.settle(&self.link.a.iface).expect("stats"));
    }

    /// Sends `count` UDP datagrams of 1000 bytes from the peer to the node.
    pub fn send(&self, count: usize) {
        traffic::udp_burst(
            &self.peer_ns,
            self.link.b.addr,
            &self.node_ns,
            self.link.a.addr,
            count,
            1000,
        )
        .expect("traffic");
    }

    /// Waits until the stored totals equal what the node's kernel counted
    /// since [`Self::baseline`]; returns them. Panics with the journals.
    pub fn arrived(&self, what: &str) -> (u64, u64) {
        let start = self.kernel_start.as_ref().expect("baseline() first");
        let kernel = self
            .node_ns
            .settle(&self.link.a.iface)
            .expect("stats")
            .checked_since(start)
            .expect("counters only grow");
        let expected = (kernel.rx_bytes, kernel.tx_bytes);
        let stored = wait_for(Duration::from_secs(60), || {
            (self.totals() == Some(expected)).then_some(())
        });
        if stored.is_none() {
            let status = self.container.sh("tally-agent status");
            panic!(
                "{what}: stored {:?} != kernel {expected:?}\nagent:\n{}\ncollector:\n{}\n{}{}",
                self.totals(),
                self.log("tally-agent"),
                self.log("tally-collector"),
                String::from_utf8_lossy(&status.stdout),
                String::from_utf8_lossy(&status.stderr),
            );
        }
        expected
    }

    /// The stored `(totalDownload, totalUpload)` of [`NODE`].
    fn totals(&self) -> Option<(u64, u64)> {
        self.runtime.block_on(async {
            let row = sqlx::query(
                r#"SELECT t."totalDownload", t."totalUpload" FROM "traffic_stats" t
                   JOIN "nodes" n ON n."id" = t."nodeId" WHERE n."name" = $1"#,
            )
            .bind(NODE)
            .fetch_one(&self.pool)
            .await
            .ok()?;
            let down: i64 = row.try_get(0).ok()?;
            let up: i64 = row.try_get(1).ok()?;
            Some((u64::try_from(down).ok()?, u64::try_from(up).ok()?))
        })
    }

    /// What is pinned in the node's /sys/fs/bpf (seen from the host).
    pub fn pins(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.bpf_dir.0)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The main PID of a unit inside.
    pub fn main_pid(&self, unit: &str) -> String {
        self.container
            .sh_ok(&format!("systemctl show -P MainPID {unit}"))
            .trim()
            .to_owned()
    }
}
