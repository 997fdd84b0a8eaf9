//! The reboot journal end to end, in namespaces: the real agent (eBPF, in
//! host `a`) reports to the real collector (in host `b`), which stores into
//! a real PostgreSQL. Traffic flows; the collector is killed (SIGKILL); more
//! traffic flows; the agent is stopped (SIGTERM) and must leave its last
//! reading in the journal. Then a "reboot": a new boot id (read from the
//! file `TALLY_BOOT_ID_FILE` names, the agent's hook for tests) and no
//! pinned counters (a new epoch, counting from zero, as after a real
//! reboot). The collector and the agent start again (in either order), the
//! journal is delivered first and removed, the new boot's counters follow,
//! and the node's stored totals equal the kernel's rx/tx byte counts of the
//! counted interface over both "boots", exactly.
//!
//! Without the journal the bytes of the second transfer (sent while the
//! collector was dead, before the stop) are lost and the totals fall short.
//! The heartbeats travel over a second veth pair that is not counted.
//!
//! The state directory's other part, the generations of the counter sets:
//! a reboot that loses the state directory starts the count again at 1,
//! the collector answers OLDER_GENERATION, and the agent raises its set and
//! counts it in full. And when another agent takes over the node's token,
//! the agent's heartbeats are answered STALE again and again: the agent
//! logs the error with what to do, the collector's API and `/metrics` show
//! it, and doing what the log says (a new counter set) counts again.

use crate::common;

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent, Collector, Link, Store, control_link, privileged, reporting_args, send_as, tail,
};
use tally_proto::v1::{HeartbeatRequest, InterfaceCounters, InterfaceState, LoadAverage, Outcome};
use tally_testkit::{netns::IfStats, traffic::tcp_transfer};

const COLLECTOR_PORT: u16 = 50_051;
/// How long the stored totals may take to reach the kernel's.
const WITHIN: Duration = Duration::from_secs(60);
const BOOT_1: &str = "6a1c0c0e-0001-4000-8000-000000000001";
const BOOT_2: &str = "6a1c0c0e-0002-4000-8000-000000000002";

/// 4 MiB from b to a over the counted link (with its acknowledgements).
fn transfer(link: &Link) {
    tcp_transfer(
        &link.b,
        &link.a,
        link.ip_a,
        4 * 1024 * 1024,
        Duration::from_millis(2),
    )
    .expect("TCP b to a");
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The scenario; `collector_first`: after the "reboot" the collector is up
/// before the agent starts (else the agent starts first, and must hold its
/// regular heartbeats back until the journal went through).
fn journal_survives_a_reboot(test: &str, collector_first: bool) {
    if !privileged(test) {
        return;
    }
    let Some(store) = Store::start_or_skip(test) else {
        return;
    };
    let (node, token_file) = store.add_node("journal");
    let boot_id_file = store.dir.path().join("boot_id");
    fs::write(&boot_id_file, format!("{BOOT_1}\n")).expect("boot id file");

    let link = Link::new();
    let mut collector = store.collector(&link.b, control_link(&link, COLLECTOR_PORT));

    let kernel_start = link.a.settle(&link.if_a).expect("stats");
    let collector_url = collector.url();
    let mut args = reporting_args(&collector_url, &token_file);
    args.extend(["--final-heartbeat-timeout", "1s"]);
    let mut agent = Agent::start_with_env(
        &link.a,
        &args,
        &[(
            "TALLY_BOOT_ID_FILE",
            boot_id_file.to_str().expect("utf-8 path"),
        )],
    );
    let journal = agent.state_dir.join("journal");
    let context = |agent: &Agent, collector: &Collector| {
        format!(
            "agent log:\n{}\ncollector log (tail):\n{}",
            agent.log(),
            tail(&collector.log(), 60)
        )
    };
    agent.wait_for(&link.if_a);
    let first_epoch = agent.epoch();

    // Traffic flows and is stored.
    transfer(&link);
    let so_far = link
        .a
        .settle(&link.if_a)
        .expect("stats")
        .checked_since(&kernel_start)
        .expect("counters only grow");
    let stored = store.wait_for_totals(&node.id, (so_far.rx_bytes, so_far.tx_bytes), WITHIN);
    assert_eq!(
        stored,
        Some((so_far.rx_bytes, so_far.tx_bytes)),
        "the first transfer is stored\n{}",
        context(&agent, &collector)
    );

    // The collector dies; more traffic; the agent stops and cannot deliver
    // its last heartbeat: the journal keeps it.
    collector.kill9();
    transfer(&link);
    let kernel_stop = link.a.settle(&link.if_a).expect("stats");
    agent.stop();
    assert!(
        journal.exists(),
        "the stop left a journal in {}: {:?}\n{}",
        agent.state_dir.display(),
        files_in(&agent.state_dir),
        context(&agent, &collector)
    );
    let log = agent.log();
    assert!(log.contains("journal written"), "{log}");
    assert!(
        log.contains("last heartbeat not delivered within 1s"),
        "{log}"
    );
    assert!(
        log.contains(BOOT_1),
        "the boot id came from the file: {log}"
    );

    // "Reboot": a new boot id, and the pinned counters are gone.
    fs::write(&boot_id_file, format!("{BOOT_2}\n")).expect("boot id file");
    let detached = agent.detach();
    assert!(
        detached.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&detached.stderr)
    );
    assert!(!agent.pin_dir.exists(), "no pins left, as after a reboot");

    let log_before = agent.log().len();
    if collector_first {
        collector.restart();
        agent.restart();
    } else {
        agent.restart();
        // Readings of the new boot are taken while the journal cannot be
        // delivered; none may overtake it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agent.log()[log_before..].contains("heartbeat not delivered") {
            assert!(
                Instant::now() < deadline,
                "the agent did not try the dead collector\n{}",
                agent.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        thread::sleep(Duration::from_secs(2));
        collector.restart();
    }
    agent.wait_for(&link.if_a);
    let second_epoch = agent.epoch();
    assert_ne!(second_epoch, first_epoch, "a new epoch after the reboot");
    // Nothing crossed the link while no agent counted.
    let kernel_reboot = link.a.settle(&link.if_a).expect("stats");
    assert_eq!(
        kernel_reboot, kernel_stop,
        "the link was quiet between the two boots"
    );

    // The new boot counts from zero.
    transfer(&link);
    let kernel_end = link.a.settle(&link.if_a).expect("stats");
    let new_boot = kernel_end
        .checked_since(&kernel_reboot)
        .expect("counters only grow");
    assert_eq!(
        agent.counters(&link.if_a).traffic(),
        new_boot.traffic(),
        "the new boot's counters start at zero"
    );

    let kernel: IfStats = kernel_end
        .checked_since(&kernel_start)
        .expect("counters only grow");
    let expected = (kernel.rx_bytes, kernel.tx_bytes);
    let stored = store.wait_for_totals(&node.id, expected, WITHIN);
    assert_eq!(
        stored,
        Some(expected),
        "stored (download, upload) must equal the kernel's (rx, tx) of {} over both boots\n{}",
        link.if_a,
        context(&agent, &collector)
    );
    assert!(
        !journal.exists(),
        "the journal is removed once delivered: {:?}",
        files_in(&agent.state_dir)
    );
    assert_eq!(
        files_in(&agent.state_dir),
        ["generation"],
        "nothing corrupt or rejected was set aside"
    );

    // The journal went first: delivered (applied) before any heartbeat of
    // the new boot. (The agent logs a delivery when the reply is in, a
    // moment after the totals can be read: wait for the line.)
    let regular = "tally_agent::heartbeat: heartbeat delivered";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log()[log_before..].contains(regular) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let log = agent.log();
    let second_run = &log[log_before..];
    let journal_at = second_run
        .find("journal delivered")
        .unwrap_or_else(|| panic!("the journal was delivered\n{second_run}"));
    let regular_at = second_run
        .find(regular)
        .unwrap_or_else(|| panic!("regular heartbeats follow\n{second_run}"));
    assert!(
        journal_at < regular_at,
        "the journal before any regular heartbeat\n{second_run}"
    );
    let delivered_line = second_run[journal_at..].lines().next().unwrap_or_default();
    for field in ["APPLIED", BOOT_1, first_epoch.as_str(), "sequence="] {
        assert!(
            delivered_line.contains(field),
            "{field} in {delivered_line}"
        );
    }
    if !collector_first {
        assert!(
            second_run.contains("collector reachable again"),
            "the journal waited for the collector\n{second_run}"
        );
    }

    // A clean stop with the collector up: written, delivered, removed.
    agent.stop();
    let log = agent.log();
    let last_run = &log[log_before..];
    assert!(last_run.contains("journal written"), "{last_run}");
    assert!(last_run.contains("last heartbeat delivered"), "{last_run}");
    assert!(!journal.exists(), "{:?}", files_in(&agent.state_dir));
    assert_eq!(
        store.totals(&node.id),
        Some(expected),
        "nothing more after the stop"
    );
}

#[test]
fn journal_delivers_the_last_counters_after_a_reboot() {
    journal_survives_a_reboot("journal_delivers_the_last_counters_after_a_reboot", true);
}

#[test]
fn journal_goes_before_the_new_boot_when_the_collector_comes_back_later() {
    journal_survives_a_reboot(
        "journal_goes_before_the_new_boot_when_the_collector_comes_back_later",
        false,
    );
}

/// The agent's (download, upload) totals as the kernel counted them on
/// `link`'s counted interface between `from` and now.
fn kernel_since(link: &Link, from: &IfStats) -> (u64, u64) {
    let now = link
        .a
        .settle(&link.if_a)
        .expect("stats")
        .checked_since(from)
        .expect("counters only grow");
    (now.rx_bytes, now.tx_bytes)
}

fn add((a, b): (u64, u64), (c, d): (u64, u64)) -> (u64, u64) {
    (a + c, b + d)
}

/// The generation file the agent keeps, as JSON.
fn generation_file(agent: &Agent) -> serde_json::Value {
    let text = fs::read_to_string(agent.state_dir.join("generation")).expect("generation file");
    serde_json::from_str(&text).expect("JSON")
}

/// A node's agent (eBPF, in host a, its boot id read from a file) that
/// reports to a collector in host b (with its HTTP side when asked for),
/// counting since `start`. Fields drop in order: the agent first, the
/// database last.
struct Scene {
    agent: Agent,
    collector: Collector,
    link: Link,
    node: tally_collector::nodes::Added,
    token_file: std::path::PathBuf,
    start: IfStats,
    store: Store,
}

impl Scene {
    fn start(test: &str, name: &str, http: bool) -> Option<Scene> {
        if !privileged(test) {
            return None;
        }
        let store = Store::start_or_skip(test)?;
        let (node, token_file) = store.add_node(name);
        let boot_id_file = store.dir.path().join("boot_id");
        fs::write(&boot_id_file, format!("{BOOT_1}\n")).expect("boot id file");
        let link = Link::new();
        let listen = control_link(&link, COLLECTOR_PORT);
        let collector = if http {
            let http = std::net::SocketAddr::new(listen.ip(), COLLECTOR_PORT + 1);
            store.collector_serving(&link.b, listen, http)
        } else {
            store.collector(&link.b, listen)
        };
        let collector_url = collector.url();
        let args = reporting_args(&collector_url, &token_file);
        let env = [(
            "TALLY_BOOT_ID_FILE",
            boot_id_file.to_str().expect("utf-8 path"),
        )];
        let start = link.a.settle(&link.if_a).expect("stats");
        let mut agent = Agent::start_with_env(&link.a, &args, &env);
        agent.wait_for(&link.if_a);
        Some(Scene {
            agent,
            collector,
            link,
            node,
            token_file,
            start,
            store,
        })
    }

    /// A "reboot" to come: the next start reads `boot_id`.
    fn boot(&self, boot_id: &str) {
        let file = self.store.dir.path().join("boot_id");
        fs::write(file, format!("{boot_id}\n")).expect("boot id file");
    }

    fn context(&self) -> String {
        format!(
            "agent log:\n{}\ncollector log (tail):\n{}",
            self.agent.log(),
            tail(&self.collector.log(), 40)
        )
    }

    /// Waits until the node's stored totals are `expected`, else fails
    /// saying `what`.
    fn counts(&self, expected: (u64, u64), what: &str) {
        assert_eq!(
            self.store.wait_for_totals(&self.node.id, expected, WITHIN),
            Some(expected),
            "{what}\n{}",
            self.context()
        );
    }

    /// Stops the agent and starts it again with a new counter set.
    fn new_counter_set(&mut self) {
        self.agent.stop();
        assert!(self.agent.detach().status.success());
        self.agent.restart();
        self.agent.wait_for(&self.link.if_a);
    }
}

#[test]
fn a_reboot_that_lost_the_state_directory_still_counts_the_new_boot() {
    let Some(mut scene) = Scene::start(
        "a_reboot_that_lost_the_state_directory_still_counts_the_new_boot",
        "lost-state",
        false,
    ) else {
        return;
    };
    transfer(&scene.link);
    scene.counts(
        kernel_since(&scene.link, &scene.start),
        "the first set counts",
    );
    assert_eq!(generation_file(&scene.agent)["highest"], 1);

    // A second counter set in the same boot (detach, run): generation 2.
    scene.new_counter_set();
    transfer(&scene.link);
    scene.counts(
        kernel_since(&scene.link, &scene.start),
        "the second set counts",
    );
    assert_eq!(generation_file(&scene.agent)["highest"], 2);

    // A reboot that loses the state directory: the count starts at 1.
    scene.agent.stop();
    scene.boot(BOOT_2);
    assert!(scene.agent.detach().status.success());
    fs::remove_dir_all(&scene.agent.state_dir).expect("lose the state directory");
    let before_reboot = scene.store.totals(&scene.node.id).expect("totals");
    let log_before = scene.agent.log().len();
    let reboot = scene.link.a.settle(&scene.link.if_a).expect("stats");
    scene.agent.restart();
    scene.agent.wait_for(&scene.link.if_a);
    transfer(&scene.link);
    scene.counts(
        add(before_reboot, kernel_since(&scene.link, &reboot)),
        "the new boot counts in full after the raise",
    );
    let second_run = scene.agent.log()[log_before..].to_owned();
    assert!(
        second_run.contains("raised_to=3"),
        "raised above the followed generation 2\n{second_run}"
    );
    assert!(
        !second_run.contains("answers this node's heartbeats STALE"),
        "no stale run: raised at the first answer\n{second_run}"
    );
    assert_eq!(generation_file(&scene.agent)["highest"], 3);
    scene.agent.stop();
}

/// A heartbeat of counter set `epoch` of boot `boot` with `(rx, tx)` on
/// one interface, as another agent would send.
fn intruder(boot: &str, epoch: &str, generation: u64, rx: u64, tx: u64) -> HeartbeatRequest {
    HeartbeatRequest {
        boot_id: boot.into(),
        epoch: epoch.into(),
        epoch_created_unix_ns: 1_700_000_000_000_000_000,
        counters_start_at_zero: true,
        // Far later in the boot than anything the agent read.
        sequence: 1 << 62,
        agent_time_unix_ns: 1_700_000_000_000_000_000,
        interfaces: vec![InterfaceCounters {
            name: "eth9".into(),
            ifindex: 9,
            rx_bytes: rx,
            rx_packets: 1,
            tx_bytes: tx,
            tx_packets: 1,
            state: InterfaceState::Attached as i32,
            ..InterfaceCounters::default()
        }],
        load: Some(LoadAverage::default()),
        hostname: "intruder".into(),
        source: "ebpf".into(),
        generation,
        ..HeartbeatRequest::default()
    }
}

#[test]
fn an_agent_whose_heartbeats_are_stale_says_so_and_is_shown() {
    let Some(mut scene) = Scene::start(
        "an_agent_whose_heartbeats_are_stale_says_so_and_is_shown",
        "shared-token",
        true,
    ) else {
        return;
    };
    transfer(&scene.link);
    let counted = kernel_since(&scene.link, &scene.start);
    scene.counts(counted, "the agent's set counts");

    // Another agent with this node's token starts a later counter set.
    let token = fs::read_to_string(&scene.token_file).expect("token");
    let reply = send_as(
        &scene.link.a,
        &scene.collector.url(),
        token.trim(),
        intruder(BOOT_1, "intruder", 5, 1000, 10),
    )
    .expect("answered");
    assert_eq!(reply.outcome(), Outcome::Applied, "{reply:?}");
    let counted = add(counted, (1000, 10));

    // From now on this agent's heartbeats are thrown away; it says so.
    let error = "answers this node's heartbeats STALE";
    let deadline = Instant::now() + WITHIN;
    while !scene.agent.log().contains(error) {
        assert!(
            Instant::now() < deadline,
            "no error about the stale run\n{}",
            scene.context()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let log = scene.agent.log();
    let line = log.lines().find(|l| l.contains(error)).unwrap_or_default();
    for part in [
        "ERROR",
        "reason=\"STALE_REASON_SUPERSEDED\"",
        "another agent",
        "tally-agent detach",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    // The collector shows it: the API and /metrics.
    let node_path = format!("/api/v1/nodes/{}", scene.node.id);
    let (status, body) = scene.collector.get(&scene.link.b, &node_path);
    assert_eq!(status, 200, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(shown["stale"]["flagged"], true, "{body}");
    assert_eq!(shown["stale"]["lastReason"], "superseded", "{body}");
    assert!(
        shown["stale"]["run"].as_i64().is_some_and(|run| run >= 3),
        "{body}"
    );
    assert_eq!(shown["counterSet"]["epoch"], "intruder", "{body}");
    let (status, metrics) = scene.collector.get(&scene.link.b, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tally_node_stale{node=\"shared-token\"} 1"),
        "{metrics}"
    );
    // What it counted meanwhile is lost (another set is followed).
    transfer(&scene.link);
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        scene.store.totals(&scene.node.id),
        Some(counted),
        "nothing of it counted"
    );

    // What the log says to do: a new counter set. It counts again.
    let restart = scene.link.a.settle(&scene.link.if_a).expect("stats");
    scene.new_counter_set();
    transfer(&scene.link);
    scene.counts(
        add(counted, kernel_since(&scene.link, &restart)),
        "the new set (above the followed generation) counts",
    );
    let (_, body) = scene.collector.get(&scene.link.b, &node_path);
    let shown: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(shown["stale"]["flagged"], false, "{body}");
    assert_eq!(shown["counterSet"]["generation"], "6", "{body}");
    scene.agent.stop();
}
