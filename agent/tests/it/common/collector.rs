//! The real `tally-collector serve` binary run inside a test namespace (a
//! [`Process`] from tally-testkit), logging into a file, against a database
//! the test made: it can be killed with SIGKILL and started again on the
//! same address, and is killed on drop; its HTTP side (API, `/metrics`) too
//! when asked for. [`Store`] is the database such a collector stores into,
//! with the node tokens the agents report with. [`send_as`] sends one
//! heartbeat from a namespace, as another agent with a node's token would.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use sqlx::{PgPool, Row as _};
use tally_collector::{db, nodes};
use tally_proto::v1::{HeartbeatReply, HeartbeatRequest, heartbeat_client::HeartbeatClient};
use tally_testkit::{
    devdb::{self, TempCluster},
    netns::Netns,
    process::{Binaries, Process},
};
use tokio::runtime::Runtime;

use super::{AGENT, Link, QUOTED_LINES, veth};

/// The name of the veth (in the agent's namespace) that carries the
/// heartbeats: the agent is told not to count it.
pub const CONTROL_IFACE: &str = "tca";

/// `tally-collector serve` inside a namespace.
pub struct Collector {
    listen: SocketAddr,
    /// Where its HTTP side listens, when it has one.
    http: Option<SocketAddr>,
    process: Process,
}

impl Collector {
    /// The `tally-collector` binary beside the agent's.
    pub fn binary() -> PathBuf {
        // Built beside the agent by `cargo test --workspace` (the collector
        // package's own tests need it).
        Binaries::beside(Path::new(AGENT))
            .unwrap_or_else(|e| panic!("{e} (or run the whole suite with `cargo xtask test`)"))
            .collector
    }

    /// Starts it in `ns`, listening for plaintext gRPC on `listen`, and
    /// waits until it listens.
    pub fn start(ns: &Netns, listen: SocketAddr, database_url: String, log: PathBuf) -> Self {
        Self::start_serving(ns, listen, None, database_url, log)
    }

    /// As [`Collector::start`], serving the HTTP side on `http` too.
    pub fn start_serving(
        ns: &Netns,
        listen: SocketAddr,
        http: Option<SocketAddr>,
        database_url: String,
        log: PathBuf,
    ) -> Self {
        let mut command = Command::new(Self::binary());
        command
            .args([
                "serve",
                "--insecure-plaintext",
                "--log",
                "info,tally_collector=debug",
                "--listen",
            ])
            .arg(listen.to_string())
            // Plain HTTP beyond loopback (the test namespace's veth) must be
            // asked for.
            .args(http.iter().flat_map(|http| {
                [
                    "--http-listen".to_owned(),
                    http.to_string(),
                    "--http-insecure-plaintext".to_owned(),
                ]
            }))
            .env("DATABASE_URL", database_url)
            .env("NO_COLOR", "1");
        let process = Process::builder("the collector", command, log)
            .netns(ns.path())
            .quoted_lines(QUOTED_LINES)
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut collector = Collector {
            listen,
            http,
            process,
        };
        collector.wait_listening();
        collector
    }

    fn wait_listening(&mut self) {
        if let Err(e) = self
            .process
            .wait_listening(self.listen, Duration::from_secs(30))
        {
            panic!("{e}");
        }
    }

    /// Starts it again after [`Collector::kill9`], on the same address, and
    /// waits until it listens.
    pub fn restart(&mut self) {
        self.process.restart().unwrap_or_else(|e| panic!("{e}"));
        self.wait_listening();
    }

    /// The URL agents report to.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Err(e) = self.process.kill() {
            eprintln!("{e}");
        }
    }

    pub fn log(&self) -> String {
        self.process.log().unwrap_or_default()
    }

    /// `GET path` on its HTTP side, from `ns`: the status and the body.
    pub fn get(&self, ns: &Netns, path: &str) -> (u16, String) {
        let address = self.http.expect("started with an HTTP side");
        let request = format!("GET {path} HTTP/1.0\r\nHost: tally\r\n\r\n");
        let raw = ns
            .run(move || {
                let mut stream =
                    TcpStream::connect_timeout(&address, Duration::from_secs(5)).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                stream.write_all(request.as_bytes()).expect("request");
                let mut raw = String::new();
                stream.read_to_string(&mut raw).expect("response");
                raw
            })
            .expect("run in the namespace");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, body.to_owned())
    }
}

/// Sends `heartbeat` with `token` to the collector at `url`, from `ns`, as
/// another agent would: the reply, or the refusal.
pub fn send_as(
    ns: &Netns,
    url: &str,
    token: &str,
    heartbeat: HeartbeatRequest,
) -> Result<HeartbeatReply, tonic::Status> {
    let (url, token) = (url.to_owned(), token.to_owned());
    ns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut client = HeartbeatClient::connect(url).await.expect("connect");
            let mut request = tonic::Request::new(heartbeat);
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("metadata"),
            );
            client.send(request).await.map(tonic::Response::into_inner)
        })
    })
    .expect("run in the namespace")
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A second veth pair between `link`'s hosts (`tca` in a, `tcb` in b) for
/// the heartbeats, so that the counted link carries only the test's
/// traffic; returns the address in b a collector there listens on.
pub fn control_link(link: &Link, port: u16) -> SocketAddr {
    let pair = veth(CONTROL_IFACE, "tcb", 2);
    pair.create(&link.a, &link.b).expect("the control link");
    pair.set_up(&link.a, &link.b).expect("the control link up");
    SocketAddr::from((pair.b.addr, port))
}

/// The agent's arguments to report to `collector_url` with the token in
/// `token_file` every second, without counting [`CONTROL_IFACE`].
pub fn reporting_args<'a>(collector_url: &'a str, token_file: &'a Path) -> Vec<&'a str> {
    vec![
        "--collector",
        collector_url,
        "--insecure-plaintext",
        "--token-file",
        token_file.to_str().expect("utf-8 path"),
        "--interval",
        "1s",
        "--exclude",
        CONTROL_IFACE,
    ]
}

/// A throwaway PostgreSQL cluster with the collector's schema: the runtime
/// and pool the test reads it with, and a directory for the nodes' token
/// files and the collector's log.
pub struct Store {
    pub pg: TempCluster,
    pub runtime: Runtime,
    pub url: String,
    pub pool: PgPool,
    pub dir: tempfile::TempDir,
}

impl Store {
    /// `None` (having said why) where no PostgreSQL can run.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        let pg = devdb::start_or_skip(test)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let url = runtime
            .block_on(pg.create_database("tally"))
            .expect("database");
        let pool = runtime.block_on(async {
            let pool = db::connect(&url, 2).await.expect("connect");
            db::migrate(&pool).await.expect("migrate");
            pool
        });
        let dir = tempfile::tempdir().expect("temp dir");
        Some(Self {
            pg,
            runtime,
            url,
            pool,
            dir,
        })
    }

    /// Adds a node, and writes its token into a file for the agent.
    pub fn add_node(&self, name: &str) -> (nodes::Added, PathBuf) {
        let node = self
            .runtime
            .block_on(nodes::add(&self.pool, name))
            .expect("node add");
        let token_file = self.dir.path().join(format!("token-{}", node.id));
        fs::write(&token_file, format!("{}\n", node.token)).expect("token file");
        // Readable by its owner only, as deployed (a looser one gets a warning).
        let private = <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
        fs::set_permissions(&token_file, private).expect("chmod the token file");
        (node, token_file)
    }

    /// The collector, in `ns` on `listen`, storing here.
    pub fn collector(&self, ns: &Netns, listen: SocketAddr) -> Collector {
        Collector::start(
            ns,
            listen,
            self.url.clone(),
            self.dir.path().join("collector.log"),
        )
    }

    /// As [`Store::collector`], with its HTTP side on `http`.
    pub fn collector_serving(&self, ns: &Netns, listen: SocketAddr, http: SocketAddr) -> Collector {
        Collector::start_serving(
            ns,
            listen,
            Some(http),
            self.url.clone(),
            self.dir.path().join("collector.log"),
        )
    }

    /// The node's stored `(totalDownload, totalUpload)`.
    pub fn totals(&self, node: &str) -> Option<(u64, u64)> {
        self.runtime.block_on(totals(&self.pool, node))
    }

    /// Polls the node's stored totals until they equal `expected` (or
    /// `within` passed); returns the last value seen.
    pub fn wait_for_totals(
        &self,
        node: &str,
        expected: (u64, u64),
        within: Duration,
    ) -> Option<(u64, u64)> {
        let deadline = Instant::now() + within;
        loop {
            let stored = self.totals(node);
            if stored == Some(expected) || Instant::now() >= deadline {
                return stored;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// A new pool (after PostgreSQL was restarted under the old one).
    pub fn reconnect(&mut self) {
        self.pool = self.runtime.block_on(async {
            self.pool.close().await;
            db::connect(&self.url, 2).await.expect("reconnect")
        });
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
