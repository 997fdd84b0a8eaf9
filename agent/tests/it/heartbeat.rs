//! Heartbeats as a collector sees them: the real agent binary (counting from
//! /proc/net/dev, so no privileges are needed) reporting to a small
//! in-process gRPC peer that implements `tally.v1.Heartbeat` and records what
//! it receives. The peer is stopped and started again on the same port to
//! play an outage; SIGTERM must bring one last heartbeat. It can also refuse
//! the heartbeats of one epoch, as a collector does whose position the
//! agent's counters fell behind.

use crate::common;

use std::{
    fs,
    net::{Ipv4Addr, TcpListener as StdTcpListener},
    path::{Path, PathBuf},
    pin::Pin,
    process::{Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{AGENT, Agent, Link, QUOTED_LINES, privileged};
use futures_util::{Stream, stream};
use tally_proto::v1::{
    HeartbeatReply, HeartbeatRequest, InterfaceState, Outcome, Refusal,
    heartbeat_server::{Heartbeat, HeartbeatServer},
};
use tally_testkit::{certs, process::Process, traffic::udp_burst};
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming},
};

const TOKEN: &str = "tly_test.node-7_secret";

/// One heartbeat as the peer received it.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    authorization: Option<String>,
    request: HeartbeatRequest,
    /// How the peer answered it, when not with "applied".
    verdict: Option<Verdict>,
    /// Whether it came on a `Stream` call (else as a `Send` call).
    streamed: bool,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// How the peer answers the heartbeats of one epoch instead of applying them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// FAILED_PRECONDITION, as for counters that went backwards.
    Backwards,
    /// Stale without a position: the collector follows a later epoch.
    Behind,
    /// INVALID_ARGUMENT for the epoch's `last_of_boot` heartbeats only.
    RefuseLastOfBoot,
    /// RESOURCE_EXHAUSTED with a retry hint of [`PACED_MS`], once (then
    /// the verdict is over), as a collector answers a node whose heartbeats
    /// come too fast.
    Paced,
}

/// The retry hint of [`Verdict::Paced`]: longer than any first backoff
/// delay of the agent (at most 1.5 s), so that waiting it shows.
const PACED_MS: u64 = 2_500;

/// The epoch the peer does not apply, and its answer to it.
type Verdicts = Arc<Mutex<Option<(String, Verdict)>>>;

/// The peer's service: records every heartbeat and applies it (unless it is
/// of the epoch `verdicts` names).
#[derive(Clone)]
struct Peer {
    log: Log,
    verdicts: Verdicts,
    /// Whether it implements `Stream` (else it answers UNIMPLEMENTED, as an
    /// older collector would).
    streams: bool,
}

impl Peer {
    /// Records `request` and answers it as `Send` would.
    fn answer(
        &self,
        authorization: Option<String>,
        request: HeartbeatRequest,
        streamed: bool,
    ) -> Result<HeartbeatReply, Status> {
        let sequence = request.sequence;
        let verdict = {
            let mut verdicts = self.verdicts.lock().expect("verdicts");
            let verdict = verdicts
                .as_ref()
                .and_then(|(epoch, verdict)| (*epoch == request.epoch).then_some(*verdict))
                .filter(|v| *v != Verdict::RefuseLastOfBoot || request.last_of_boot);
            if verdict == Some(Verdict::Paced) {
                *verdicts = None;
            }
            verdict
        };
        let epoch = request.epoch.clone();
        self.log.lock().expect("log").push(Received {
            at: Instant::now(),
            authorization,
            request,
            verdict,
            streamed,
        });
        match verdict {
            Some(Verdict::Backwards) => Err(Status::failed_precondition(format!(
                "protocol violation: rx bytes went backwards within epoch {epoch} \
                 (last applied 1000, now 10); nothing was stored"
            ))),
            Some(Verdict::Behind) => Ok(HeartbeatReply {
                outcome: Outcome::Stale.into(),
                ..HeartbeatReply::default()
            }),
            Some(Verdict::RefuseLastOfBoot) => {
                Err(Status::invalid_argument("interface name must not be empty"))
            }
            Some(Verdict::Paced) => {
                let mut status = Status::resource_exhausted("this node's heartbeats come too fast");
                status.metadata_mut().insert(
                    tally_proto::RETRY_PUSHBACK,
                    PACED_MS.to_string().parse().expect("metadata"),
                );
                Err(status)
            }
            None => Ok(HeartbeatReply {
                outcome: Outcome::Applied.into(),
                applied_sequence: sequence,
                ..HeartbeatReply::default()
            }),
        }
    }
}

fn authorization<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

type Replies = Pin<Box<dyn Stream<Item = Result<HeartbeatReply, Status>> + Send>>;

#[tonic::async_trait]
impl Heartbeat for Peer {
    async fn send(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let authorization = authorization(&request);
        self.answer(authorization, request.into_inner(), false)
            .map(Response::new)
    }

    type StreamStream = Replies;

    /// As the collector does: a refusal is a reply, and the stream goes on.
    async fn stream(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Replies>, Status> {
        if !self.streams {
            return Err(Status::unimplemented("no Stream here"));
        }
        let authorization = authorization(&request);
        let state = (self.clone(), authorization, request.into_inner());
        let replies = stream::unfold(state, |(peer, authorization, mut requests)| async move {
            let request = requests.message().await.ok()??;
            let reply = peer
                .answer(authorization.clone(), request, true)
                .unwrap_or_else(|status| HeartbeatReply {
                    refusal: Some(Refusal {
                        code: status.code() as u32,
                        message: status.message().to_owned(),
                        retry_after_ms: status
                            .metadata()
                            .get(tally_proto::RETRY_PUSHBACK)
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(0),
                    }),
                    ..HeartbeatReply::default()
                });
            Some((Ok(reply), (peer, authorization, requests)))
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// A collector stand-in on 127.0.0.1, in its own thread and runtime. Stopping
/// it drops the runtime: the listener and every connection close at once, as
/// when a collector dies.
struct Collector {
    port: u16,
    log: Log,
    verdicts: Verdicts,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Collector {
    /// Listens on 127.0.0.1:`port` (0: any free port).
    fn start(port: u16, log: Log, tls: Option<Identity>) -> Self {
        // std sets SO_REUSEADDR: the port can be taken again right after a stop.
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("bind the peer");
        Self::start_on(listener, log, tls)
    }

    /// A peer without `Stream` (as an older collector), on any free port.
    fn start_without_stream(log: Log) -> Self {
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the peer");
        Self::serve(listener, log, None, false)
    }

    /// Serves on a listener bound already (perhaps in another namespace).
    fn start_on(listener: StdTcpListener, log: Log, tls: Option<Identity>) -> Self {
        let tls = tls.map(|identity| ServerTlsConfig::new().identity(identity));
        Self::serve(listener, log, tls, true)
    }

    /// Serves TLS as `tls` says (a client CA, say), on any free port.
    fn start_tls(log: Log, tls: ServerTlsConfig) -> Self {
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the peer");
        Self::serve(listener, log, Some(tls), true)
    }

    fn serve(
        listener: StdTcpListener,
        log: Log,
        tls: Option<ServerTlsConfig>,
        streams: bool,
    ) -> Self {
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let service_log = log.clone();
        let verdicts = Verdicts::default();
        let service_verdicts = verdicts.clone();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let mut builder = Server::builder();
                if let Some(tls) = tls {
                    builder = builder.tls_config(tls).expect("server TLS");
                }
                let server = builder
                    .add_service(HeartbeatServer::new(Peer {
                        log: service_log,
                        verdicts: service_verdicts,
                        streams,
                    }))
                    .serve_with_incoming(TcpIncoming::from(listener));
                tokio::select! {
                    result = server => result.expect("peer serves"),
                    _ = stop_rx => {}
                }
            });
        });
        Self {
            port,
            log,
            verdicts,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("peer thread");
        }
    }

    /// From now on, answers the heartbeats of `epoch` with `verdict`.
    fn answer(&self, epoch: &str, verdict: Verdict) {
        *self.verdicts.lock().expect("verdicts") = Some((epoch.to_owned(), verdict));
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().expect("log").clone()
    }

    /// Waits until at least `count` heartbeats were received in all.
    fn wait_for(&self, count: usize, within: Duration, log: impl Fn() -> String) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} heartbeats within {within:?}; agent log:\n{}",
                received.len(),
                log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The agent binary, `run --source procfs`, logging at debug into a file (a
/// testkit [`Process`]); killed when dropped.
struct ProcfsAgent {
    process: Process,
    _dir: tempfile::TempDir,
}

impl ProcfsAgent {
    fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Starts it with `env` set as well.
    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = clean_command();
        command
            .args(["run", "--source", "procfs", "--log", "debug"])
            .args(args)
            .envs(env.iter().copied())
            // Its own state directory; a test may name another with
            // --state-dir.
            .env("TALLY_STATE_DIR", dir.path().join("state"));
        let process = Process::builder("the agent", command, dir.path().join("agent.log"))
            .quoted_lines(QUOTED_LINES)
            .stop_timeout(Duration::from_secs(10))
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        Self { process, _dir: dir }
    }

    fn log(&self) -> String {
        self.process.log().unwrap_or_default()
    }

    fn terminate(&self) -> Instant {
        assert!(self.process.is_running(), "the agent runs");
        self.process.terminate();
        Instant::now()
    }

    /// Its process id; panics (quoting its log) when it exited.
    fn pid(&mut self) -> u32 {
        if let Err(e) = self.process.ensure_running() {
            panic!("{e}");
        }
        self.process.pid().expect("running")
    }

    /// Sends SIGHUP.
    fn hangup(&mut self) {
        let pid = i32::try_from(self.pid()).expect("pid");
        // SAFETY: signalling our own, not yet reaped, child.
        let sent = unsafe { libc::kill(pid, libc::SIGHUP) };
        assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the exit (at most 10 s, then it is killed); returns its
    /// status and when it was seen.
    fn wait_exit(&mut self) -> (ExitStatus, Instant) {
        match self.process.wait() {
            Ok(status) => (status, Instant::now()),
            Err(e) => panic!("{e}; log:\n{}", self.log()),
        }
    }
}

impl Drop for ProcfsAgent {
    fn drop(&mut self) {
        if let Err(e) = self.process.kill() {
            eprintln!("{e}");
        }
    }
}

fn clean_command() -> Command {
    let mut cmd = Command::new(AGENT);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TALLY_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A token file readable by its owner only, as deployed (a looser one gets
/// a warning, which the tests that look for one must not mistake for theirs).
fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token");
    fs::write(&path, format!("{TOKEN}\n")).expect("token file");
    set_mode(&path, 0o600);
    path
}

/// Sets the permission bits of `path`.
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn unix_ns() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos(),
    )
    .expect("fits")
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path).expect(path).trim().to_owned()
}

fn assert_increasing(received: &[Received]) {
    for pair in received.windows(2) {
        assert!(
            pair[1].request.sequence > pair[0].request.sequence,
            "sequences must grow: {} then {}",
            pair[0].request.sequence,
            pair[1].request.sequence
        );
    }
}

#[test]
fn heartbeats_carry_the_token_and_resume_after_an_outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let mut collector = Collector::start(0, Log::default(), None);
    let url = format!("http://127.0.0.1:{}", collector.port);
    let agent = ProcfsAgent::start(&[
        "--collector",
        &url,
        "--insecure-plaintext",
        "--token-file",
        &token.display().to_string(),
        "--interval",
        "1s",
    ]);

    let before = collector.wait_for(3, Duration::from_secs(10), || agent.log());
    assert_increasing(&before);
    assert!(
        before.iter().all(|r| r.streamed),
        "heartbeats go on one stream"
    );
    let boot_id = read_trimmed("/proc/sys/kernel/random/boot_id");
    for heartbeat in &before {
        assert_eq!(
            heartbeat.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        let r = &heartbeat.request;
        assert_eq!(r.boot_id, boot_id);
        assert_eq!(r.epoch, format!("procfs-{boot_id}"));
        assert!(r.epoch_created_unix_ns > 0 && r.epoch_created_unix_ns < unix_ns());
        assert!(!r.counters_start_at_zero, "procfs counters start at boot");
        assert!(r.sequence > 0 && r.sequence <= i64::MAX as u64);
        assert!(
            r.agent_time_unix_ns.abs_diff(unix_ns()) < 60_000_000_000,
            "agent time {} is now",
            r.agent_time_unix_ns
        );
        assert_eq!(r.source, "procfs");
        assert_eq!(r.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(r.kernel_release, read_trimmed("/proc/sys/kernel/osrelease"));
        assert!(!r.hostname.is_empty());
        let load = r.load.as_ref().expect("load average");
        assert!(load.one >= 0.0 && load.five >= 0.0 && load.fifteen >= 0.0);
        for iface in &r.interfaces {
            assert!(!iface.name.starts_with("lo"), "{iface:?}");
            assert_eq!(iface.state(), InterfaceState::Attached, "{iface:?}");
        }
    }
    // One heartbeat per interval, give or take.
    let span = before[2].at - before[0].at;
    assert!(
        span >= Duration::from_millis(1_500) && span <= Duration::from_secs(4),
        "{span:?} for two intervals of 1s"
    );

    // The collector goes away for a while, then comes back on the same port.
    collector.stop();
    let last_before = collector.received().len();
    thread::sleep(Duration::from_millis(2_500));
    let collector = Collector::start(collector.port, collector.log.clone(), None);
    let after = collector.wait_for(last_before + 2, Duration::from_secs(20), || agent.log());
    assert_increasing(&after);
    let log = agent.log();
    assert!(log.contains("heartbeat not delivered"), "{log}");
    assert!(
        log.contains("Connection refused"),
        "the cause is logged: {log}"
    );
    assert!(
        log.contains("collector reachable again after"),
        "the recovery is logged: {log}"
    );
}

#[test]
fn without_a_stream_at_the_collector_heartbeats_are_calls_of_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let collector = Collector::start_without_stream(Log::default());
    let agent = ProcfsAgent::start(&[
        "--collector",
        &format!("http://127.0.0.1:{}", collector.port),
        "--insecure-plaintext",
        "--token-file",
        &token.display().to_string(),
        "--interval",
        "1s",
    ]);
    let received = collector.wait_for(3, Duration::from_secs(10), || agent.log());
    assert_increasing(&received);
    assert!(received.iter().all(|r| !r.streamed), "{received:#?}");
    assert!(
        received
            .iter()
            .all(|r| r.authorization.as_deref() == Some(format!("Bearer {TOKEN}").as_str()))
    );
    let log = agent.log();
    assert_eq!(
        log.matches("the collector has no heartbeat stream").count(),
        1,
        "said once: {log}"
    );
    assert!(!log.contains("heartbeat not delivered"), "{log}");
}

#[test]
fn sigterm_sends_a_last_heartbeat_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let collector = Collector::start(0, Log::default(), None);
    // A long interval: any heartbeat after the first is the last one.
    let mut agent = ProcfsAgent::start(&[
        "--collector",
        &format!("http://127.0.0.1:{}", collector.port),
        "--insecure-plaintext",
        "--token-file",
        &token.display().to_string(),
        "--interval",
        "1h",
    ]);
    let first = collector.wait_for(1, Duration::from_secs(10), || agent.log());
    let signalled = agent.terminate();
    let (status, exited) = agent.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", agent.log());
    assert!(
        exited - signalled < Duration::from_secs(3),
        "took {:?} to stop",
        exited - signalled
    );
    let all = collector.received();
    assert_eq!(all.len(), 2, "the first and the last heartbeat: {all:#?}");
    let last = &all[1];
    assert!(
        last.at > signalled && last.at <= exited,
        "sent after the signal, before the exit"
    );
    assert!(last.request.sequence > first[0].request.sequence);
    assert_eq!(last.request.epoch, first[0].request.epoch);
    assert!(last.request.last_of_boot, "the last heartbeat says so");
    assert!(!first[0].request.last_of_boot);
    assert!(
        agent.log().contains("last heartbeat delivered"),
        "{}",
        agent.log()
    );
}

#[test]
fn without_a_collector_the_last_heartbeat_waits_only_the_final_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    // A port where nothing listens.
    let port = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut agent = ProcfsAgent::start(&[
        "--collector",
        &format!("http://127.0.0.1:{port}"),
        "--insecure-plaintext",
        "--token-file",
        &token.display().to_string(),
        "--interval",
        "1s",
        "--final-heartbeat-timeout",
        "1s",
    ]);
    // Counting goes on locally while the collector is away.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.log().matches("counters").count() < 2 {
        assert!(Instant::now() < deadline, "no readings: {}", agent.log());
        thread::sleep(Duration::from_millis(50));
    }
    let signalled = agent.terminate();
    let (status, exited) = agent.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", agent.log());
    let took = exited - signalled;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "tried for the final timeout, then stopped: {took:?}"
    );
    let log = agent.log();
    assert!(log.contains("heartbeat not delivered"), "{log}");
    assert!(
        log.contains("last heartbeat not delivered within 1s"),
        "{log}"
    );
}

/// A procfs agent whose boot epoch the collector stops taking (from its
/// `applied_first + 1`-th heartbeat on) starts a new epoch: the refused one is
/// not retried, and the next heartbeats carry `procfs-<boot id>-<created>`,
/// created later, whose first reading is only a baseline.
fn starts_a_new_epoch_when(verdict: Verdict, applied_first: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let collector = Collector::start(0, Log::default(), None);
    let boot_id = read_trimmed("/proc/sys/kernel/random/boot_id");
    let boot_epoch = format!("procfs-{boot_id}");
    if applied_first == 0 {
        collector.answer(&boot_epoch, verdict);
    }
    let started = unix_ns();
    let agent = ProcfsAgent::start(&[
        "--collector",
        &format!("http://127.0.0.1:{}", collector.port),
        "--insecure-plaintext",
        "--token-file",
        &token.display().to_string(),
        "--interval",
        "1s",
    ]);
    if applied_first > 0 {
        collector.wait_for(applied_first, Duration::from_secs(10), || agent.log());
        collector.answer(&boot_epoch, verdict);
    }

    let deadline = Instant::now() + Duration::from_secs(15);
    let received = loop {
        let received = collector.received();
        if received
            .iter()
            .filter(|r| r.request.epoch != boot_epoch)
            .count()
            >= 3
        {
            break received;
        }
        assert!(
            Instant::now() < deadline,
            "no new epoch after the refusal: {:#?}\nagent log:\n{}",
            received
                .iter()
                .map(|r| &r.request.epoch)
                .collect::<Vec<_>>(),
            agent.log()
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_increasing(&received);
    let (old, new): (Vec<&Received>, Vec<&Received>) =
        received.iter().partition(|r| r.request.epoch == boot_epoch);
    assert!(
        old.iter().take(applied_first).all(|r| r.verdict.is_none()),
        "{old:#?}"
    );
    let turned_down: Vec<&&Received> = old.iter().filter(|r| r.verdict.is_some()).collect();
    assert!(
        (1..=2).contains(&turned_down.len()),
        "a reading of the refused epoch is not retried: {turned_down:#?}"
    );
    let first_new = received
        .iter()
        .position(|r| r.request.epoch != boot_epoch)
        .expect("a new epoch");
    assert!(
        received[first_new..]
            .iter()
            .all(|r| r.request.epoch == new[0].request.epoch),
        "one new epoch, never the old one again: {received:#?}"
    );

    let r = &new[0].request;
    let created = r.epoch_created_unix_ns;
    assert_eq!(r.epoch, format!("procfs-{boot_id}-{created}"));
    assert!(
        created > old[0].request.epoch_created_unix_ns,
        "later than the boot's epoch, so that the collector adopts it"
    );
    assert!(created >= started && created <= unix_ns(), "{created}");
    assert!(!r.counters_start_at_zero, "its first reading is a baseline");
    assert_eq!(r.boot_id, boot_id);
    assert_eq!(r.source, "procfs");
    assert!(new.iter().all(|h| h.verdict.is_none()));

    let log = agent.log();
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("starting a new procfs epoch"), "{log}");
    assert!(log.contains("are lost"), "{log}");
    assert!(log.contains(&r.epoch), "the new epoch is named: {log}");
    if verdict == Verdict::Backwards {
        assert!(log.contains("going backwards"), "{log}");
        assert!(log.contains("last applied 1000, now 10"), "{log}");
    }
    assert!(
        !log.contains("ERROR"),
        "a rebase is no error for procfs: {log}"
    );
}

/// A collector that takes this node's heartbeats no faster answers
/// RESOURCE_EXHAUSTED with the time to wait: the agent waits that long
/// (not its shorter backoff), then sends its newest reading. Over a stream
/// (the hint in the reply's refusal) and over Send calls (in the status's
/// metadata).
#[test]
fn the_agent_waits_as_long_as_the_collector_asks() {
    for streams in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = token_file(dir.path());
        let collector = if streams {
            Collector::start(0, Log::default(), None)
        } else {
            Collector::start_without_stream(Log::default())
        };
        let boot_id = read_trimmed("/proc/sys/kernel/random/boot_id");
        let agent = ProcfsAgent::start(&[
            "--collector",
            &format!("http://127.0.0.1:{}", collector.port),
            "--insecure-plaintext",
            "--token-file",
            &token.display().to_string(),
            "--interval",
            "1s",
        ]);
        collector.wait_for(2, Duration::from_secs(10), || agent.log());
        collector.answer(&format!("procfs-{boot_id}"), Verdict::Paced);
        let deadline = Instant::now() + Duration::from_secs(15);
        let (paced, next) = loop {
            let received = collector.received();
            if let Some(at) = received
                .iter()
                .position(|r| r.verdict == Some(Verdict::Paced))
                && let Some(next) = received.get(at + 1)
            {
                break (received[at].clone(), next.clone());
            }
            assert!(Instant::now() < deadline, "agent log:\n{}", agent.log());
            thread::sleep(Duration::from_millis(20));
        };
        let waited = next.at.duration_since(paced.at);
        assert!(
            waited >= Duration::from_millis(PACED_MS - 100),
            "sent again after {waited:?}, asked to wait {PACED_MS} ms (streams: {streams})"
        );
        assert!(next.verdict.is_none() && next.request.sequence > paced.request.sequence);
        assert!(agent.log().contains("ResourceExhausted"), "{}", agent.log());
    }
}

#[test]
fn procfs_counters_refused_as_going_backwards_start_a_new_epoch() {
    starts_a_new_epoch_when(Verdict::Backwards, 2);
}

#[test]
fn procfs_counters_of_an_epoch_the_collector_left_start_a_new_epoch() {
    starts_a_new_epoch_when(Verdict::Behind, 0);
}

/// A procfs agent stopped while the collector is away leaves its last
/// reading in the reboot journal under `state`; returns it.
fn leave_a_journal(token: &Path, state: &Path) -> JournalFile {
    let port = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut agent = ProcfsAgent::start(&[
        "--collector",
        &format!("http://127.0.0.1:{port}"),
        "--insecure-plaintext",
        "--token-file",
        &token.display().to_string(),
        "--interval",
        "1s",
        "--final-heartbeat-timeout",
        "1s",
        "--state-dir",
        &state.display().to_string(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("heartbeat not delivered") {
        assert!(Instant::now() < deadline, "no attempt: {}", agent.log());
        thread::sleep(Duration::from_millis(50));
    }
    agent.terminate();
    let (status, _) = agent.wait_exit();
    assert!(status.success(), "{status}; log:\n{}", agent.log());
    let log = agent.log();
    assert!(log.contains("journal written"), "{log}");
    let path = state.join("journal");
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}\n{log}", path.display()));
    assert!(bytes.starts_with(b"TALLYJNL"), "a journal: {bytes:?}");
    JournalFile { path, bytes }
}

/// A journal file as the agent left it.
struct JournalFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

#[test]
fn the_journal_goes_first_and_a_refused_one_is_set_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let state = dir.path().join("state");
    let journal = leave_a_journal(&token, &state);
    let stopped_at = unix_ns();

    // The collector takes the regular heartbeats but refuses the journal's
    // for good.
    let collector = Collector::start(0, Log::default(), None);
    let boot_id = read_trimmed("/proc/sys/kernel/random/boot_id");
    collector.answer(&format!("procfs-{boot_id}"), Verdict::RefuseLastOfBoot);
    let agent = ProcfsAgent::start(&[
        "--collector",
        &format!("http://127.0.0.1:{}", collector.port),
        "--insecure-plaintext",
        "--token-file",
        &token.display().to_string(),
        "--interval",
        "1s",
        "--state-dir",
        &state.display().to_string(),
    ]);
    let received = collector.wait_for(3, Duration::from_secs(15), || agent.log());
    assert_increasing(&received);
    let first = &received[0];
    assert!(
        first.request.last_of_boot,
        "the journal first: {received:#?}"
    );
    assert!(
        first.request.agent_time_unix_ns < stopped_at,
        "taken before the stop"
    );
    assert_eq!(first.verdict, Some(Verdict::RefuseLastOfBoot));
    assert!(
        received[1..]
            .iter()
            .all(|r| !r.request.last_of_boot && r.verdict.is_none()),
        "then the regular ones, never the refused one again: {received:#?}"
    );
    assert!(!journal.path.exists(), "the journal left its place");
    assert_eq!(
        fs::read(state.join("journal.rejected")).expect("set aside"),
        journal.bytes,
        "kept aside as it was"
    );
    let log = agent.log();
    assert!(log.contains("ERROR"), "{log}");
    assert!(
        log.contains("refused the reboot journal's heartbeat for good"),
        "{log}"
    );
    assert!(
        log.contains("interface name must not be empty"),
        "the reason: {log}"
    );
}

#[test]
fn a_corrupt_journal_is_set_aside_and_heartbeats_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let state = dir.path().join("state");
    let journal = leave_a_journal(&token, &state);
    // Torn: the last bytes never reached the disk.
    let torn = &journal.bytes[..journal.bytes.len() - 3];
    fs::write(&journal.path, torn).expect("tear the journal");

    let collector = Collector::start(0, Log::default(), None);
    let agent = ProcfsAgent::start(&[
        "--collector",
        &format!("http://127.0.0.1:{}", collector.port),
        "--insecure-plaintext",
        "--token-file",
        &token.display().to_string(),
        "--interval",
        "1s",
        "--state-dir",
        &state.display().to_string(),
    ]);
    let received = collector.wait_for(2, Duration::from_secs(10), || agent.log());
    assert!(
        received.iter().all(|r| !r.request.last_of_boot),
        "nothing from the torn journal: {received:#?}"
    );
    assert!(!journal.path.exists());
    assert_eq!(
        fs::read(state.join("journal.corrupt")).expect("moved aside"),
        torn
    );
    let log = agent.log();
    assert!(log.contains("the reboot journal cannot be read"), "{log}");
    assert!(log.contains("torn"), "the reason: {log}");
}

fn run_agent(args: &[&str]) -> Output {
    clean_command()
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tally-agent")
}

/// The one line an agent that refused to start printed.
fn refusal(out: &Output) -> String {
    assert!(!out.status.success(), "should refuse to start");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    err
}

#[test]
fn collector_settings_are_checked_before_anything_is_attached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path()).display().to_string();
    // A pin directory off bpffs: reaching the eBPF set-up would fail with
    // another message, so these errors come first.
    let pins = dir.path().join("pins").display().to_string();
    let base = ["--pin-dir", &pins];

    let plain = run_agent(
        &[
            &base[..],
            &["--collector", "http://127.0.0.1:1", "--token-file", &token],
        ]
        .concat(),
    );
    let err = refusal(&plain);
    assert!(
        err.contains("refusing to send the token unencrypted"),
        "{err}"
    );
    assert!(err.contains("--insecure-plaintext"), "{err}");

    let no_ca = run_agent(
        &[
            &base[..],
            &[
                "--collector",
                "https://collector:4443",
                "--token-file",
                &token,
            ],
        ]
        .concat(),
    );
    assert!(refusal(&no_ca).contains("needs --ca"));

    let no_token = run_agent(
        &[
            &base[..],
            &["--collector", "http://127.0.0.1:1", "--insecure-plaintext"],
        ]
        .concat(),
    );
    let err = refusal(&no_token);
    assert!(err.contains("needs the node's token"), "{err}");
    assert!(err.contains("--token-file"), "{err}");

    let missing = dir.path().join("missing").display().to_string();
    let unreadable = run_agent(
        &[
            &base[..],
            &[
                "--collector",
                "http://127.0.0.1:1",
                "--insecure-plaintext",
                "--token-file",
                &missing,
            ],
        ]
        .concat(),
    );
    let err = refusal(&unreadable);
    assert!(err.contains("cannot read --token-file"), "{err}");
    assert!(err.contains("No such file"), "{err}");

    let empty = dir.path().join("empty");
    fs::write(&empty, "\n").expect("write");
    let empty = empty.display().to_string();
    let out = run_agent(
        &[
            &base[..],
            &[
                "--collector",
                "http://127.0.0.1:1",
                "--insecure-plaintext",
                "--token-file",
                &empty,
            ],
        ]
        .concat(),
    );
    assert!(refusal(&out).contains("is empty"));

    let bad_url = run_agent(
        &[
            &base[..],
            &["--collector", "collector:4443", "--token-file", &token],
        ]
        .concat(),
    );
    assert!(refusal(&bad_url).contains("https:// or http://"));

    // A token file group or others may read: refused under --strict (and
    // only warned about without it, once every setting was checked).
    let exposed = dir.path().join("exposed-token");
    fs::write(&exposed, format!("{TOKEN}\n")).expect("write");
    set_mode(&exposed, 0o644);
    let exposed = exposed.display().to_string();
    let plain_collector = ["--collector", "http://127.0.0.1:1", "--insecure-plaintext"];
    let strict = run_agent(
        &[
            &base[..],
            &plain_collector,
            &["--strict", "--token-file", &exposed],
        ]
        .concat(),
    );
    let err = refusal(&strict);
    assert!(err.contains("refusing --token-file"), "{err}");
    assert!(err.contains("(mode 0644)"), "{err}");
    assert!(err.contains(&format!("chmod 0600 {exposed}")), "{err}");

    // A state directory others may write: refused, whatever --strict says,
    // in one line (the token file's warning would come after the checks).
    let open = dir.path().join("open-state");
    fs::create_dir(&open).expect("mkdir");
    set_mode(&open, 0o777);
    let state = open.display().to_string();
    let out = run_agent(
        &[
            &base[..],
            &plain_collector,
            &["--token-file", &exposed, "--state-dir", &state],
        ]
        .concat(),
    );
    let err = refusal(&out);
    assert!(err.contains("refusing the state directory"), "{err}");
    assert!(err.contains("mode 0777"), "{err}");
    assert!(err.contains("chmod 0700"), "{err}");
    assert_eq!(fs::read_dir(&open).expect("list").count(), 0, "untouched");

    // The token may come from TALLY_TOKEN instead, but not from both.
    let both = clean_command()
        .args([
            "run",
            "--pin-dir",
            &pins,
            "--collector",
            "http://127.0.0.1:1",
        ])
        .args(["--insecure-plaintext", "--token-file", &token])
        .env("TALLY_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(refusal(&both).contains("one way only"));

    // A collector flag without --collector is a mistake clap names.
    let stray = run_agent(&[&base[..], &["--token-file", &token]].concat());
    assert!(!stray.status.success());
    assert!(String::from_utf8_lossy(&stray.stderr).contains("--collector"));
}

#[test]
fn help_documents_the_collector_flags() {
    let out = clean_command()
        .args(["run", "--help"])
        .output()
        .expect("help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--collector",
        "TALLY_COLLECTOR",
        "--token-file",
        "TALLY_TOKEN_FILE",
        "TALLY_TOKEN",
        "--ca",
        "--insecure-plaintext",
        "--final-heartbeat-timeout",
        "--state-dir",
        "TALLY_STATE_DIR",
        "/var/lib/tally-agent",
    ] {
        assert!(help.contains(flag), "run --help lacks {flag}:\n{help}");
    }
    let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("reboot journal") && words.contains("before any other heartbeat"),
        "help says what the state directory keeps:\n{help}"
    );
    assert!(
        !help.contains("TALLY_BOOT_ID_FILE"),
        "the test-only boot id file stays out of the help"
    );
}

/// Writes a CA, another CA, and a certificate for 127.0.0.1 and localhost
/// that the first one signed; returns both CA files and the server identity.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, Identity) {
    let pki = certs::Pki::new(&["127.0.0.1", "localhost"]).expect("certificates");
    let ca_path = dir.join("ca.pem");
    fs::write(&ca_path, &pki.ca_pem).expect("write CA");
    let other_path = dir.join("other-ca.pem");
    let other = certs::other_authority_pem("other-ca").expect("other CA");
    fs::write(&other_path, other).expect("write CA");
    (
        ca_path,
        other_path,
        Identity::from_pem(pki.cert_pem, pki.key_pem),
    )
}

#[test]
fn heartbeats_travel_over_tls_verified_with_the_given_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, other_ca, identity) = certificates(dir.path());
    let token = token_file(dir.path()).display().to_string();
    let collector = Collector::start(0, Log::default(), Some(identity));
    let url = format!("https://127.0.0.1:{}", collector.port);

    // A CA that did not sign the collector's certificate: refused.
    let stranger_token = dir.path().join("stranger-token");
    fs::write(&stranger_token, "tly_stranger").expect("token");
    let stranger = ProcfsAgent::start(&[
        "--collector",
        &url,
        "--ca",
        &other_ca.display().to_string(),
        "--token-file",
        &stranger_token.display().to_string(),
        "--interval",
        "1s",
    ]);
    let trusted = ProcfsAgent::start(&[
        "--collector",
        &url,
        "--ca",
        &ca.display().to_string(),
        "--token-file",
        &token,
        "--interval",
        "1s",
    ]);
    let received = collector.wait_for(2, Duration::from_secs(10), || trusted.log());
    assert_eq!(
        received[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stranger.log().contains("heartbeat not delivered") {
        assert!(Instant::now() < deadline, "{}", stranger.log());
        thread::sleep(Duration::from_millis(50));
    }
    let log = stranger.log();
    assert!(
        log.contains("UnknownIssuer"),
        "the TLS failure is named: {log}"
    );
    assert!(log.contains("ERROR"), "and logged as an error: {log}");
    assert!(log.contains("--ca"), "with a hint: {log}");
    assert!(
        !log.contains("the collector receives our heartbeats"),
        "{log}"
    );
    // Nothing ever came through from the agent with the wrong CA.
    thread::sleep(Duration::from_millis(1_200));
    let all = collector.received();
    assert!(
        all.iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "{all:#?}"
    );
    drop(trusted);
    drop(stranger);
}

#[test]
fn a_collector_that_requires_a_client_certificate_gets_the_one_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = certs::Pki::new(&["127.0.0.1", "localhost"]).expect("certificates");
    let clients = certs::Pki::new(&["node-7"]).expect("client certificates");
    let strangers = certs::Pki::new(&["node-x"]).expect("other client certificates");
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, &server.ca_pem).expect("write CA");
    let ca = ca.display().to_string();
    let files = |name: &str, pki: &certs::Pki| {
        let sub = dir.path().join(name);
        fs::create_dir(&sub).expect("mkdir");
        let (cert, key) = pki.write_server(&sub).expect("write");
        (cert.display().to_string(), key.display().to_string())
    };
    let (cert, key) = files("ours", &clients);
    let (stranger_cert, stranger_key) = files("stranger", &strangers);
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server.cert_pem, &server.key_pem))
        .client_ca_root(Certificate::from_pem(&clients.ca_pem))
        .client_auth_optional(false);
    let collector = Collector::start_tls(Log::default(), tls);
    let url = format!("https://127.0.0.1:{}", collector.port);
    let token = token_file(dir.path()).display().to_string();
    let other_token = |name: &str| {
        let path = dir.path().join(format!("token-{name}"));
        fs::write(&path, format!("tly_{name}\n")).expect("token");
        set_mode(&path, 0o600);
        path.display().to_string()
    };
    let (without_token, stranger_token) = (other_token("without"), other_token("stranger"));
    let base = |token: &str| {
        [
            "--collector",
            &url,
            "--ca",
            &ca,
            "--token-file",
            token,
            "--interval",
            "1s",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let start = |args: Vec<String>| {
        ProcfsAgent::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let ours = start(
        [
            base(&token),
            ["--client-cert", &cert, "--client-key", &key]
                .map(str::to_owned)
                .to_vec(),
        ]
        .concat(),
    );
    let without = start(base(&without_token));
    let stranger = start(
        [
            base(&stranger_token),
            [
                "--client-cert",
                &stranger_cert,
                "--client-key",
                &stranger_key,
            ]
            .map(str::to_owned)
            .to_vec(),
        ]
        .concat(),
    );

    let received = collector.wait_for(2, Duration::from_secs(10), || ours.log());
    assert!(
        received
            .iter()
            .all(|r| r.authorization.as_deref() == Some(format!("Bearer {TOKEN}").as_str())),
        "{received:#?}"
    );
    // Each is refused, logged as an error with what to do. An attempt may
    // see only the connection closed (the agent wrote before it read the
    // collector's TLS alert), so this waits for one that saw the alert:
    // with the backoff, the fifth attempt or so comes after 15 s.
    for (what, agent, alert, hint) in [
        (
            "without a client certificate",
            &without,
            "received fatal alert: CertificateRequired",
            "the collector requires a TLS client certificate",
        ),
        (
            "with another authority's",
            &stranger,
            // The test authorities share their name: the signature fails.
            "received fatal alert: DecryptError",
            "the collector refused this node's TLS client certificate",
        ),
    ] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent.log().contains(hint) {
            assert!(Instant::now() < deadline, "{what}: {}", agent.log());
            thread::sleep(Duration::from_millis(50));
        }
        let log = agent.log();
        let line = log
            .lines()
            .find(|line| line.contains(hint))
            .expect("the line");
        assert!(line.contains("ERROR"), "{what}: logged as an error: {line}");
        assert!(line.contains(alert), "{what}: the alert is named: {line}");
        assert!(line.contains("--client-cert"), "{what}: {line}");
        assert!(
            !log.contains("the collector receives our heartbeats"),
            "{what}: {log}"
        );
    }
    // Nothing ever came through from the two others.
    thread::sleep(Duration::from_millis(1_200));
    let all = collector.received();
    assert!(
        all.iter()
            .all(|r| r.authorization.as_deref() == Some(format!("Bearer {TOKEN}").as_str())),
        "{all:#?}"
    );
    assert!(all.len() > received.len(), "ours goes on");
}

/// Another token of the length of [`TOKEN`].
const TOKEN_B: &str = "tly_test.node-7_rotatd";
/// A third token.
const TOKEN_C: &str = "tly_test.node-7_third-token";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Waits until a heartbeat carries `token`: everything received then, and
/// where the first one with it is.
fn wait_for_token(
    collector: &Collector,
    token: &str,
    within: Duration,
    log: impl Fn() -> String,
) -> (Vec<Received>, usize) {
    let wanted = bearer(token);
    let deadline = Instant::now() + within;
    loop {
        let received = collector.received();
        if let Some(first) = received
            .iter()
            .position(|r| r.authorization.as_deref() == Some(wanted.as_str()))
        {
            return (received, first);
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat with the new token within {within:?}; agent log:\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether every one of `received` carries `token`.
fn all_carry(received: &[Received], token: &str) -> bool {
    let wanted = bearer(token);
    received
        .iter()
        .all(|r| r.authorization.as_deref() == Some(wanted.as_str()))
}

/// Writes `token` over the token file at `path` in place, and sets its
/// modification time back: its inode, size (`token` is as long as the one
/// it replaces), mode and times look unchanged, so that only SIGHUP can
/// tell.
fn rewrite_unseen(path: &Path, token: &str) {
    use std::io::Write as _;
    let before = fs::metadata(path).expect("stat");
    let mut file = fs::OpenOptions::new().write(true).open(path).expect("open");
    file.write_all(format!("{token}\n").as_bytes())
        .expect("write");
    file.set_modified(before.modified().expect("mtime"))
        .expect("set the mtime back");
    drop(file);
    let after = fs::metadata(path).expect("stat");
    assert_eq!(
        (after.len(), after.modified().expect("mtime")),
        (before.len(), before.modified().expect("mtime"))
    );
}

/// Replaces the token file at `path` with `text` (a new file, mode 0600,
/// renamed over it).
fn replace_file(path: &Path, text: &str) {
    let next = path.with_extension("new");
    fs::write(&next, text).expect("write");
    set_mode(&next, 0o600);
    fs::rename(&next, path).expect("rename");
}

#[test]
fn a_new_token_in_the_token_file_is_used_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let collector = Collector::start(0, Log::default(), None);
    let mut agent = ProcfsAgent::start(&[
        "--collector",
        &format!("http://127.0.0.1:{}", collector.port),
        "--insecure-plaintext",
        "--token-file",
        &token.display().to_string(),
        "--interval",
        "1s",
    ]);
    let first = collector.wait_for(2, Duration::from_secs(10), || agent.log());
    assert!(all_carry(&first, TOKEN), "{first:#?}");
    let pid = agent.pid();

    // B, where only SIGHUP can tell: the agent looks at the file (every
    // 2 s) and sees nothing, so the heartbeats still carry A.
    rewrite_unseen(&token, TOKEN_B);
    let before = collector.received().len();
    thread::sleep(Duration::from_millis(3_000));
    let unseen = collector.received();
    assert!(unseen.len() >= before + 2, "heartbeats go on");
    assert!(all_carry(&unseen, TOKEN), "not seen without SIGHUP");

    agent.hangup();
    let (_, first_b) = wait_for_token(&collector, TOKEN_B, Duration::from_secs(5), || agent.log());
    thread::sleep(Duration::from_millis(1_500));
    let received = collector.received();
    assert!(all_carry(&received[..first_b], TOKEN), "{received:#?}");
    assert!(all_carry(&received[first_b..], TOKEN_B), "{received:#?}");
    assert!(received.len() >= first_b + 2, "B goes on");
    assert!(received.iter().all(|r| r.streamed), "on streams");
    assert_eq!(agent.pid(), pid, "no restart");
    let log = agent.log();
    assert!(log.contains("node token read again"), "{log}");
    assert!(log.contains(r#"reason="SIGHUP""#), "{log}");
    assert!(
        log.contains("ending the heartbeat stream opened with the old one"),
        "{log}"
    );

    // C, renamed over it, without a signal: the agent sees the file change.
    replace_file(&token, &format!("{TOKEN_C}\n"));
    let (_, first_c) = wait_for_token(&collector, TOKEN_C, Duration::from_secs(6), || agent.log());
    let log = agent.log();
    assert!(log.contains(r#"reason="file changed""#), "{log}");

    // An empty file: C is kept, with one warning saying why.
    replace_file(&token, "\n");
    thread::sleep(Duration::from_millis(4_500));
    let received = collector.received();
    assert!(all_carry(&received[first_c..], TOKEN_C), "{received:#?}");
    assert!(received.len() >= first_c + 4, "C goes on");
    let log = agent.log();
    assert_eq!(
        log.matches("the node token file cannot be used").count(),
        1,
        "one warning: {log}"
    );
    assert!(log.contains("is empty"), "{log}");

    // One agent, one counter set, throughout.
    assert_eq!(agent.pid(), pid, "no restart");
    assert_eq!(log.matches("tally-agent starting").count(), 1, "{log}");
    assert_increasing(&received);
    assert!(
        received
            .iter()
            .all(|r| r.request.epoch == received[0].request.epoch),
        "one epoch"
    );
    for secret in [TOKEN, TOKEN_B, TOKEN_C] {
        assert!(!log.contains(secret), "the token is never logged: {log}");
    }
}

#[test]
fn sighup_leaves_a_token_from_the_environment_and_the_agent_running() {
    let collector = Collector::start(0, Log::default(), None);
    let mut agent = ProcfsAgent::start_with_env(
        &[
            "--collector",
            &format!("http://127.0.0.1:{}", collector.port),
            "--insecure-plaintext",
            "--interval",
            "1s",
        ],
        &[("TALLY_TOKEN", TOKEN)],
    );
    collector.wait_for(1, Duration::from_secs(10), || agent.log());
    let pid = agent.pid();
    agent.hangup();
    let before = collector.received().len();
    let received = collector.wait_for(before + 2, Duration::from_secs(10), || agent.log());
    assert!(all_carry(&received, TOKEN));
    assert_eq!(agent.pid(), pid, "SIGHUP ends no agent");
    let log = agent.log();
    assert!(
        log.contains("the node token came from TALLY_TOKEN, which is read at start only"),
        "{log}"
    );
}

#[test]
fn ebpf_heartbeats_carry_the_exact_counters_and_grow_across_a_restart() {
    if !privileged("ebpf_heartbeats_carry_the_exact_counters_and_grow_across_a_restart") {
        return;
    }
    let link = Link::new();
    // The peer listens on lo inside the agent's namespace (lo is not counted,
    // so the heartbeats themselves do not show in the counters).
    let listener = link
        .a
        .run(|| StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind in the namespace"))
        .expect("run in the namespace");
    let collector = Collector::start_on(listener, Log::default(), None);
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path()).display().to_string();
    let url = format!("http://127.0.0.1:{}", collector.port);
    let mut agent = Agent::start(
        &link.a,
        &[
            "--collector",
            &url,
            "--insecure-plaintext",
            "--token-file",
            &token,
            "--interval",
            "1s",
        ],
    );
    agent.wait_for(&link.if_a);
    udp_burst(&link.b, link.ip_b, &link.a, link.ip_a, 1_000, 100).expect("UDP b to a");
    link.a.settle(&link.if_a).expect("stats");
    let ours = agent.counters(&link.if_a);
    assert!(ours.rx_packets >= 1_000, "{ours:?}");

    // A heartbeat read after the traffic carries exactly what status shows.
    let entry = |r: &Received| {
        r.request
            .interfaces
            .iter()
            .find(|i| i.name == link.if_a)
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (heartbeat, iface) = loop {
        let found = collector.received().into_iter().find_map(|r| {
            let iface = entry(&r)?;
            (iface.rx_packets == ours.rx_packets).then_some((r, iface))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat with the traffic; log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        (
            iface.rx_bytes,
            iface.tx_bytes,
            iface.rx_packets,
            iface.tx_packets
        ),
        (
            ours.rx_bytes,
            ours.tx_bytes,
            ours.rx_packets,
            ours.tx_packets
        )
    );
    assert_eq!(iface.state(), InterfaceState::Attached);
    assert!(iface.ifindex > 0);
    let r = &heartbeat.request;
    assert_eq!(r.source, "ebpf");
    assert!(r.counters_start_at_zero);
    assert_eq!(r.epoch, agent.epoch());
    assert!(r.interfaces.iter().all(|i| !i.name.starts_with("lo")));

    // Stopped (a last heartbeat) and started again: the same epoch, and the
    // sequence goes on growing across the restart.
    agent.stop();
    let before = collector.received();
    assert!(
        agent.log().contains("last heartbeat delivered"),
        "{}",
        agent.log()
    );
    agent.restart();
    let after = collector.wait_for(before.len() + 2, Duration::from_secs(20), || agent.log());
    assert_increasing(&after);
    assert!(
        after
            .iter()
            .all(|r| r.request.epoch == heartbeat.request.epoch)
    );
}
