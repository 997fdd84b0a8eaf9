//! A migrated database with enrolled nodes, collectors serving it (in this
//! process or as real `tally-collector` processes), and heartbeats to send.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sqlx::{PgPool, Row as _};
use tally_collector::{db, nodes, serve};
use tally_proto::v1::{
    HeartbeatReply, HeartbeatRequest, InterfaceCounters, InterfaceState, LoadAverage,
    heartbeat_client::HeartbeatClient,
};
use tally_testkit::{devdb::TempCluster, process};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Status, Streaming, transport::Channel};

/// A migrated database on its own cluster.
pub struct Fleet {
    #[allow(
        dead_code,
        reason = "held for its drop: the server stops with the fleet"
    )]
    pub cluster: TempCluster,
    pub url: String,
    pub pool: PgPool,
}

impl Fleet {
    pub async fn start(test: &str) -> Option<Fleet> {
        let cluster = super::cluster(test)?;
        let url = cluster.create_database("tally").await.expect("database");
        let pool = db::connect(&url, 8).await.expect("connect");
        db::migrate(&pool).await.expect("migrate");
        Some(Fleet { cluster, url, pool })
    }

    pub async fn add_node(&self, name: &str) -> nodes::Added {
        nodes::add(&self.pool, name).await.expect("node add")
    }

    /// `(totalDownload, totalUpload, periodDownload, periodUpload)`.
    pub async fn totals(&self, node: &str) -> (i64, i64, i64, i64) {
        let row = sqlx::query(
            r#"SELECT "totalDownload", "totalUpload", "periodDownload", "periodUpload"
               FROM "traffic_stats" WHERE "nodeId" = $1"#,
        )
        .bind(node)
        .fetch_one(&self.pool)
        .await
        .expect("traffic_stats row");
        let get = |c: &str| row.try_get::<i64, _>(c).expect("column");
        (
            get("totalDownload"),
            get("totalUpload"),
            get("periodDownload"),
            get("periodUpload"),
        )
    }

    /// Sets `sql` (a SET list, e.g. `"countRule" = 'uplink'`) in the
    /// node's own billing settings (`node_settings`).
    pub async fn set_node_settings(&self, node: &str, sql: &str) {
        sqlx::query(r#"INSERT INTO "node_settings" ("nodeId") VALUES ($1) ON CONFLICT DO NOTHING"#)
            .bind(node)
            .execute(&self.pool)
            .await
            .expect("settings row");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"UPDATE "node_settings" SET {sql} WHERE "nodeId" = $1"#
        )))
        .bind(node)
        .execute(&self.pool)
        .await
        .expect("settings");
    }

    /// Every column of the node's rows in `nodes` and `traffic_stats`, as
    /// text: to show that a refused heartbeat changed nothing.
    pub async fn snapshot(&self, node: &str) -> String {
        let row = sqlx::query(
            r#"SELECT row_to_json(n)::text || row_to_json(t)::text AS all
               FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id"
               WHERE n."id" = $1"#,
        )
        .bind(node)
        .fetch_one(&self.pool)
        .await
        .expect("node rows");
        let history: i64 =
            sqlx::query_scalar(r#"SELECT count(*) FROM "node_history" WHERE "nodeId" = $1"#)
                .bind(node)
                .fetch_one(&self.pool)
                .await
                .expect("history count");
        format!("{} history={history}", row.get::<String, _>("all"))
    }

    /// One node `name`, a collector serving it here (asking agents for
    /// `interval`), and a client connected to it.
    pub async fn served_node(
        &self,
        name: &str,
        interval: Option<Duration>,
    ) -> (nodes::Added, InProcess, HeartbeatClient<Channel>) {
        let node = self.add_node(name).await;
        let server = self.serve_here_asking(interval).await;
        let client = client(server.address).await;
        (node, server, client)
    }

    /// Serves the database in this process on 127.0.0.1 (plaintext); the
    /// server stops when the returned guard is dropped.
    pub async fn serve_here(&self) -> InProcess {
        self.serve_here_asking(None).await
    }

    /// As [`Fleet::serve_here`], asking agents for `interval`.
    pub async fn serve_here_asking(&self, interval: Option<Duration>) -> InProcess {
        self.serve_here_with(|options| options.heartbeat_interval = interval)
            .await
    }

    /// As [`Fleet::serve_here`], with the options changed by `tweak` (e.g.
    /// to configure the HTTP tokens).
    pub async fn serve_here_with(&self, tweak: impl FnOnce(&mut serve::Options)) -> InProcess {
        let mut options = serve::Options::new("127.0.0.1:0".parse().expect("address"));
        options.http_listen = Some("127.0.0.1:0".parse().expect("address"));
        options.history_retention = Duration::from_secs(86_400);
        // Tests send as fast as they can; the pace has its own test.
        options.min_heartbeat_interval = Duration::ZERO;
        tweak(&mut options);
        let listeners = serve::bind(&options).await.expect("bind");
        let address = listeners.grpc.local_addr().expect("address");
        let http_address = listeners
            .http
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .expect("HTTP address");
        let (stop, stopped) = oneshot::channel::<()>();
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            serve::serve(pool, options, listeners, shutdown)
                .await
                .expect("serve");
        });
        InProcess {
            address,
            http_address,
            _stop: stop,
        }
    }
}

/// A collector serving in this process.
pub struct InProcess {
    pub address: SocketAddr,
    /// The HTTP side (health, JSON API).
    pub http_address: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// A `tally-collector serve` process (a testkit [`process::Process`]);
/// killed when dropped, its log printed if the test failed.
pub struct Process {
    pub address: SocketAddr,
    process: process::Process,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `tally-collector serve` on `database_url`, listening on a free
    /// port of 127.0.0.1, and waits until it serves.
    pub fn start(database_url: &str) -> Process {
        Self::start_with(database_url, &["--insecure-plaintext"])
    }

    /// As [`Process::start`], with `args` instead of `--insecure-plaintext`.
    pub fn start_with(database_url: &str, args: &[&str]) -> Process {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally-collector"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--log", "info"])
            .args(args)
            // Tests send as fast as they can; the pace's own test gives
            // its interval in `args` (which win over the environment).
            .env("TALLY_MIN_HEARTBEAT_INTERVAL", "0s")
            .env("DATABASE_URL", database_url)
            .env("NO_COLOR", "1");
        let mut process =
            process::Process::builder("tally-collector", command, dir.path().join("collector.log"))
                .start()
                .unwrap_or_else(|e| panic!("{e}"));
        let address = process
            .wait_for_line(
                "the collector to say where it listens",
                Duration::from_secs(30),
                |line| {
                    line.contains("serving tally.v1.Heartbeat")
                        .then_some(line)
                        .and_then(|line| line.split_once("address="))
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        Process {
            address,
            process,
            _dir: dir,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid().expect("the collector runs")
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.process.log().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until it logs a line that `found` picks.
    pub fn wait_for_line<T>(
        &mut self,
        waited_for: &str,
        found: impl FnMut(&str) -> Option<T>,
    ) -> T {
        self.process
            .wait_for_line(waited_for, Duration::from_secs(30), found)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(e) = self.process.kill() {
            eprintln!("{e}");
        }
        if std::thread::panicking() {
            for line in self.process.log().unwrap_or_default().lines() {
                eprintln!("[collector] {line}");
            }
        }
    }
}

/// A gRPC client for `address`.
pub async fn client(address: SocketAddr) -> HeartbeatClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match HeartbeatClient::connect(format!("http://{address}")).await {
            Ok(client) => return client,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {address}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Sends `heartbeat` with `token` (if any) as bearer metadata.
pub async fn send(
    client: &mut HeartbeatClient<Channel>,
    token: Option<&str>,
    heartbeat: HeartbeatRequest,
) -> Result<HeartbeatReply, Status> {
    let mut request = Request::new(heartbeat);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata value"),
        );
    }
    client.send(request).await.map(tonic::Response::into_inner)
}

/// An open `Stream` call: heartbeats go in with [`Stream::push`], replies
/// come out of `replies`, in order.
pub struct Stream {
    requests: mpsc::UnboundedSender<HeartbeatRequest>,
    pub replies: Streaming<HeartbeatReply>,
}

impl Stream {
    /// Opens a `Stream` call with `token` (if any) as bearer metadata; the
    /// status when the collector refuses it at once.
    pub async fn open(
        client: &mut HeartbeatClient<Channel>,
        token: Option<&str>,
    ) -> Result<Stream, Status> {
        let (requests, queued) = mpsc::unbounded_channel();
        let outgoing = futures_util::stream::unfold(queued, |mut queued| async move {
            queued.recv().await.map(|request| (request, queued))
        });
        let mut call = Request::new(outgoing);
        if let Some(token) = token {
            call.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("metadata value"),
            );
        }
        let replies = client.stream(call).await?.into_inner();
        Ok(Stream { requests, replies })
    }

    /// Sends a heartbeat without waiting for its reply.
    pub fn push(&self, heartbeat: HeartbeatRequest) {
        self.requests.send(heartbeat).expect("the stream is open");
    }

    /// The next reply: `Ok(None)` when the collector ended the stream.
    pub async fn next(&mut self) -> Result<Option<HeartbeatReply>, Status> {
        tokio::time::timeout(Duration::from_secs(10), self.replies.message())
            .await
            .expect("a reply within 10 s")
    }

    /// Sends `heartbeat` and waits for its reply.
    pub async fn send(&mut self, heartbeat: HeartbeatRequest) -> HeartbeatReply {
        self.push(heartbeat);
        self.next()
            .await
            .expect("a reply")
            .expect("the stream goes on")
    }
}

/// A heartbeat of the epoch `epoch` started after the default one (one
/// nanosecond later, generation 2), so that it replaces a set of
/// generation 1 whatever its sequence.
pub fn heartbeat_of(epoch: &str, sequence: u64, rx: u64, tx: u64) -> HeartbeatRequest {
    let mut heartbeat = heartbeat(epoch, sequence, rx, tx);
    heartbeat.epoch_created_unix_ns += 1;
    heartbeat.generation = 2;
    heartbeat
}

/// A heartbeat of epoch `epoch` (generation 1) with cumulative (rx, tx)
/// over two interfaces.
pub fn heartbeat(epoch: &str, sequence: u64, rx: u64, tx: u64) -> HeartbeatRequest {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let iface = |name: &str, rx, tx| InterfaceCounters {
        name: name.into(),
        ifindex: 2,
        rx_bytes: rx,
        rx_packets: 1,
        tx_bytes: tx,
        tx_packets: 1,
        state: InterfaceState::Attached as i32,
        ..InterfaceCounters::default()
    };
    HeartbeatRequest {
        boot_id: "00000000-0000-0000-0000-000000000001".into(),
        epoch: epoch.into(),
        epoch_created_unix_ns: 1_700_000_000_000_000_000,
        counters_start_at_zero: true,
        sequence,
        agent_time_unix_ns: now,
        interfaces: vec![
            iface("eth0", rx / 2, tx / 2),
            iface("eth1", rx - rx / 2, tx - tx / 2),
        ],
        load: Some(LoadAverage {
            one: 0.5,
            five: 0.25,
            fifteen: 0.125,
        }),
        hostname: "test-host".into(),
        kernel_release: "6.1.0".into(),
        agent_version: "test".into(),
        source: "ebpf".into(),
        generation: 1,
        ..HeartbeatRequest::default()
    }
}
