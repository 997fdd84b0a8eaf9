//! The simulated agents: one task per node, each with the node's own token,
//! sending heartbeats in a closed loop (send, await the reply, send the next
//! with the sequence one higher and the counters grown by random amounts)
//! over a few shared HTTP/2 channels. Like the real agent, each task sends
//! its heartbeats as messages on one long-lived `Stream` call (opened again
//! after any failure), or, with `--unary`, each as its own `Send` call.
//!
//! Like a real agent, a task whose heartbeat got an error (no reply, or a
//! retryable status) sends the very same heartbeat again until it has an
//! answer, so that it always knows what the collector holds: the counters of
//! the last heartbeat answered APPLIED (or DUPLICATE: the same sequence was
//! applied by an earlier attempt).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use futures_channel::mpsc;
use tally_proto::v1::{
    HeartbeatReply, HeartbeatRequest, InterfaceCounters, InterfaceState, LoadAverage, Outcome,
    heartbeat_client::HeartbeatClient,
};
use tokio::task::JoinHandle;
use tonic::{
    Code, Request, Status, Streaming,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

/// Interfaces per simulated node.
pub(super) const INTERFACES: usize = 2;
/// Most bytes an interface counts between two heartbeats.
const MAX_GROWTH: u64 = 2_000_000;
/// How long a task keeps retrying one heartbeat before it gives up.
const GIVE_UP: Duration = Duration::from_secs(30);
/// Pause between two attempts of one heartbeat.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// An enrolled node.
pub(super) struct SimNode {
    pub(super) index: u32,
    pub(super) id: String,
    pub(super) token: String,
}

/// What one agent task knows at its end.
pub(super) struct Acked {
    pub(super) node_id: String,
    /// The last heartbeat acknowledged as applied (0 and zero counters when
    /// none was).
    pub(super) sequence: u64,
    pub(super) interfaces: [Counters; INTERFACES],
    /// Set when the task gave up on a heartbeat without an answer: then what
    /// the collector holds is not known.
    pub(super) unresolved: Option<String>,
}

impl Acked {
    pub(super) fn rx(&self) -> u64 {
        self.interfaces.iter().map(|c| c.rx_bytes).sum()
    }

    pub(super) fn tx(&self) -> u64 {
        self.interfaces.iter().map(|c| c.tx_bytes).sum()
    }
}

/// One interface's cumulative counters.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    pub(super) rx_bytes: u64,
    pub(super) rx_packets: u64,
    pub(super) tx_bytes: u64,
    pub(super) tx_packets: u64,
}

/// Replies and errors seen by all agents so far.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    pub(super) applied: u64,
    pub(super) duplicate: u64,
    pub(super) stale: u64,
    pub(super) errors: u64,
}

impl Counts {
    pub(super) fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            applied: self.applied - earlier.applied,
            duplicate: self.duplicate - earlier.duplicate,
            stale: self.stale - earlier.stale,
            errors: self.errors - earlier.errors,
        }
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    applied: AtomicU64,
    duplicate: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Whether round trips are being recorded, and those recorded (µs).
    recording: AtomicBool,
    round_trips: Mutex<Vec<u32>>,
}

impl Shared {
    fn counts(&self) -> Counts {
        Counts {
            applied: self.applied.load(Ordering::Relaxed),
            duplicate: self.duplicate.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// The running agent tasks.
pub(super) struct Agents {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<Acked>>,
}

impl Agents {
    /// Connects `channels` HTTP/2 channels to `address` and starts one task
    /// per node (each with a stream of its own, or `unary` calls).
    pub(super) async fn start(
        address: SocketAddr,
        nodes: &[SimNode],
        channels: usize,
        unary: bool,
    ) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .context("bad collector address")?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let mut connected = Vec::with_capacity(channels);
        for _ in 0..channels.max(1) {
            connected.push(
                endpoint
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to the collector at {address}"))?,
            );
        }
        let shared = Arc::new(Shared::default());
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let mut tasks = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let token: MetadataValue<Ascii> = format!("Bearer {}", node.token)
                .parse()
                .context("a token is not valid metadata")?;
            let agent = Agent {
                index: node.index,
                node_id: node.id.clone(),
                token,
                client: HeartbeatClient::new(connected[i % connected.len()].clone()),
                unary,
                stream: None,
                shared: shared.clone(),
                rng: Rng::new(
                    seed ^ (u64::from(node.index) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ),
            };
            tasks.push(tokio::spawn(agent.run()));
        }
        Ok(Self { shared, tasks })
    }

    /// The replies and errors so far.
    pub(super) fn counts(&self) -> Counts {
        self.shared.counts()
    }

    /// Starts or stops recording each heartbeat's round trip at the agent.
    pub(super) fn record_round_trips(&self, on: bool) {
        self.shared.recording.store(on, Ordering::Relaxed);
    }

    /// The round trips recorded so far (µs).
    pub(super) fn take_round_trips(&self) -> Vec<u32> {
        self.shared
            .round_trips
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Stops every task after its heartbeat in flight is answered.
    pub(super) async fn stop(self) -> anyhow::Result<Stopped> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            acked.push(task.await.context("an agent task failed")?);
        }
        let counts = self.shared.counts();
        let first_error = self
            .shared
            .first_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        Ok(Stopped {
            acked,
            counts,
            first_error,
        })
    }
}

/// What the agents know when they stopped.
pub(super) struct Stopped {
    pub(super) acked: Vec<Acked>,
    /// Every reply and error of the run (warm-up included).
    pub(super) counts: Counts,
    /// The first error any task saw (then retried, or given up on).
    pub(super) first_error: Option<String>,
}

/// One simulated node's agent.
struct Agent {
    index: u32,
    node_id: String,
    token: MetadataValue<Ascii>,
    client: HeartbeatClient<Channel>,
    /// Each heartbeat as its own `Send` call, not on the stream.
    unary: bool,
    /// The open `Stream` call (`None`: opened by the next heartbeat).
    stream: Option<Open>,
    shared: Arc<Shared>,
    rng: Rng,
}

/// An open `Stream` call.
struct Open {
    requests: mpsc::UnboundedSender<HeartbeatRequest>,
    replies: Streaming<HeartbeatReply>,
}

impl Agent {
    async fn run(mut self) -> Acked {
        let boot_id = self.rng.uuid();
        let epoch = format!("bench-{}-{:016x}", self.index, self.rng.next());
        let created = unix_now_ns();
        let mut counters = [Counters::default(); INTERFACES];
        let mut acked = Acked {
            node_id: self.node_id.clone(),
            sequence: 0,
            interfaces: counters,
            unresolved: None,
        };
        let mut sequence = 0u64;
        while !self.shared.stop.load(Ordering::Relaxed) {
            sequence += 1;
            for c in &mut counters {
                let rx = self.rng.below(MAX_GROWTH);
                let tx = self.rng.below(MAX_GROWTH);
                c.rx_bytes += rx;
                c.rx_packets += rx / 1_000 + 1;
                c.tx_bytes += tx;
                c.tx_packets += tx / 1_000 + 1;
            }
            let request = self.heartbeat(&boot_id, &epoch, created, sequence, &counters);
            match self.send(request).await {
                Ok(Outcome::Applied) => {
                    self.shared.applied.fetch_add(1, Ordering::Relaxed);
                    acked.sequence = sequence;
                    acked.interfaces = counters;
                }
                // An earlier attempt of this very heartbeat was applied.
                Ok(Outcome::Duplicate) => {
                    self.shared.duplicate.fetch_add(1, Ordering::Relaxed);
                    acked.sequence = sequence;
                    acked.interfaces = counters;
                }
                Ok(_) => {
                    self.shared.stale.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    acked.unresolved = Some(error);
                    break;
                }
            }
        }
        acked
    }

    fn heartbeat(
        &mut self,
        boot_id: &str,
        epoch: &str,
        created: u64,
        sequence: u64,
        counters: &[Counters; INTERFACES],
    ) -> HeartbeatRequest {
        let one = self.rng.below(400) as f64 / 100.0;
        HeartbeatRequest {
            boot_id: boot_id.to_owned(),
            epoch: epoch.to_owned(),
            epoch_created_unix_ns: created,
            counters_start_at_zero: true,
            sequence,
            agent_time_unix_ns: unix_now_ns(),
            interfaces: counters
                .iter()
                .enumerate()
                .map(|(i, c)| InterfaceCounters {
                    name: format!("eth{i}"),
                    ifindex: i as u32 + 2,
                    rx_bytes: c.rx_bytes,
                    rx_packets: c.rx_packets,
                    tx_bytes: c.tx_bytes,
                    tx_packets: c.tx_packets,
                    state: InterfaceState::Attached as i32,
                    ..InterfaceCounters::default()
                })
                .collect(),
            load: Some(LoadAverage {
                one,
                five: one / 2.0,
                fifteen: one / 4.0,
            }),
            hostname: format!("bench-node-{:05}", self.index),
            kernel_release: "6.1.0-bench".to_owned(),
            agent_version: "bench".to_owned(),
            source: "ebpf".to_owned(),
            ..HeartbeatRequest::default()
        }
    }

    /// Sends `request` until it is answered; the outcome, or why the task
    /// gave up.
    async fn send(&mut self, request: HeartbeatRequest) -> Result<Outcome, String> {
        let first_attempt = Instant::now();
        loop {
            let sent = Instant::now();
            match self.attempt(&request).await {
                Ok(reply) => {
                    if self.shared.recording.load(Ordering::Relaxed) {
                        let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                        if let Ok(mut log) = self.shared.round_trips.lock() {
                            log.push(micros);
                        }
                    }
                    return Ok(reply.outcome());
                }
                Err(status) => {
                    self.shared.errors.fetch_add(1, Ordering::Relaxed);
                    let message = format!("{:?}: {}", status.code(), status.message());
                    if let Ok(mut first) = self.shared.first_error.lock() {
                        first.get_or_insert_with(|| message.clone());
                    }
                    if first_attempt.elapsed() > GIVE_UP {
                        return Err(format!(
                            "node {}: no answer after {GIVE_UP:?} of retries (last: {message})",
                            self.node_id
                        ));
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}

impl Agent {
    /// One attempt at `request`: a refusal in a stream's reply is the status
    /// `Send` would have answered.
    async fn attempt(&mut self, request: &HeartbeatRequest) -> Result<HeartbeatReply, Status> {
        if self.unary {
            let mut call = Request::new(request.clone());
            call.metadata_mut()
                .insert("authorization", self.token.clone());
            return Ok(self.client.send(call).await?.into_inner());
        }
        let mut open = match self.stream.take() {
            Some(open) => open,
            None => self.open().await?,
        };
        if open.requests.unbounded_send(request.clone()).is_err() {
            return Err(Status::unavailable("the heartbeat stream is closed"));
        }
        let reply = open
            .replies
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("the collector ended the heartbeat stream"))?;
        self.stream = Some(open);
        match reply.refusal {
            Some(refusal) => Err(Status::new(
                Code::from(i32::try_from(refusal.code).unwrap_or(i32::MAX)),
                refusal.message,
            )),
            None => Ok(reply),
        }
    }

    async fn open(&mut self) -> Result<Open, Status> {
        let (requests, queued) = mpsc::unbounded();
        let mut call = Request::new(queued);
        call.metadata_mut()
            .insert("authorization", self.token.clone());
        let replies = self.client.stream(call).await?.into_inner();
        Ok(Open { requests, replies })
    }
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// splitmix64: plenty for random counter growth.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for a benchmark.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A random boot id in the kernel's format (a version-4 UUID).
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0x0fff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }
}
