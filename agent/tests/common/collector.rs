//! The real `tally-collector serve` binary run inside a test namespace
//! (through `nsenter`), logging into a file, against a database the test
//! made: it can be killed with SIGKILL and started again on the same
//! address, and is killed on drop. [`totals`] reads a node's stored totals.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use sqlx::{PgPool, Row as _};

use super::{AGENT, NetNs};

/// `tally-collector serve` inside a namespace.
pub struct Collector {
    ns_path: PathBuf,
    listen: SocketAddr,
    database_url: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Collector {
    fn binary() -> PathBuf {
        // Built beside the agent by `cargo test --workspace` (the collector
        // package's own tests need it).
        let path = PathBuf::from(AGENT).with_file_name("tally-collector");
        assert!(
            path.exists(),
            "{} is missing: build it first (`cargo build -p tally-collector`, or run the whole suite with `cargo xtask test`)",
            path.display()
        );
        path
    }

    /// Starts it in `ns`, listening for plaintext gRPC on `listen`, and
    /// waits until it listens.
    pub fn start(ns: &NetNs, listen: SocketAddr, database_url: String, log: PathBuf) -> Self {
        let mut collector = Collector {
            ns_path: ns.path(),
            listen,
            database_url,
            log,
            child: None,
        };
        collector.spawn(ns);
        collector
    }

    /// Starts it (again), and waits until it listens.
    pub fn spawn(&mut self, ns: &NetNs) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("collector log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path.display()))
            .arg("--")
            .arg(Self::binary())
            .args([
                "serve",
                "--insecure-plaintext",
                "--log",
                "info,tally_collector=debug",
                "--listen",
            ])
            .arg(self.listen.to_string())
            .env("DATABASE_URL", &self.database_url)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn tally-collector");
        self.child = Some(child);
        let listen = self.listen;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ns
            .run(move || TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok())
        {
            assert!(
                Instant::now() < deadline,
                "the collector did not listen within 30 s; log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A node's stored `(totalDownload, totalUpload)`, if it has a row.
pub async fn totals(pool: &PgPool, node: &str) -> Option<(u64, u64)> {
    let row = sqlx::query(
        r#"SELECT "totalDownload", "totalUpload" FROM "traffic_stats" WHERE "nodeId" = $1"#,
    )
    .bind(node)
    .fetch_one(pool)
    .await
    .ok()?;
    let get = |c: &str| row.try_get::<i64, _>(c).ok().map(|v| v as u64);
    Some((get("totalDownload")?, get("totalUpload")?))
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
