//! Which counter set counts, when the nodes' clocks are wrong: real
//! `tally-collector` processes on a real PostgreSQL, sent to by a client
//! written from the .proto, as an agent behaves (the reboot journal first,
//! the boot clock as the sequence, a generation kept in its state
//! directory, or none as from an older agent).
//!
//! A node without a battery-backed clock reboots with its clock two days
//! behind, or at 1970; a clock is stepped back by an hour between two
//! counter sets of one boot; a clock ten minutes ahead is corrected. Every
//! set counts in full, the old boot's journal once, late heartbeats of an
//! earlier set (through another replica) and replays add nothing, and the
//! totals equal the sum of the sets' counters exactly. What is thrown away
//! is shown: stale heartbeats and clock offsets in the API and `/metrics`.

use crate::common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{
    fleet::{self, Fleet, Process},
    http::Client,
};
use tally_proto::v1::{HeartbeatReply, HeartbeatRequest, Outcome, StaleReason, heartbeat_client};
use tonic::transport::Channel;

const SECOND: u64 = 1_000_000_000;
const DAY: u64 = 86_400 * SECOND;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A node's wall clock: what it reads when the true time is `true_ns`.
#[derive(Debug, Clone, Copy)]
enum Clock {
    Right,
    Behind(u64),
    Ahead(u64),
    /// Started at 1970 at boot (no battery-backed clock, no NTP yet).
    At1970,
}

impl Clock {
    fn read(self, true_ns: u64) -> u64 {
        match self {
            Clock::Right => true_ns,
            Clock::Behind(by) => true_ns - by,
            Clock::Ahead(by) => true_ns + by,
            Clock::At1970 => 42 * SECOND,
        }
    }
}

/// One counter set as an agent reports it.
#[derive(Debug, Clone)]
struct Set {
    boot_id: String,
    epoch: String,
    /// 0: an agent that does not send one.
    generation: u64,
    /// The node's clock when the set began.
    created_unix_ns: u64,
    /// The node's clock from now on.
    clock: Clock,
}

impl Set {
    fn new(boot: &str, epoch: &str, generation: u64, clock: Clock) -> Set {
        Set {
            boot_id: boot.into(),
            epoch: epoch.into(),
            generation,
            created_unix_ns: clock.read(now_ns()),
            clock,
        }
    }

    /// A reading taken when the boot clock said `boot_s` seconds, with
    /// cumulative `(rx, tx)`.
    fn reading(&self, boot_s: u64, rx: u64, tx: u64) -> HeartbeatRequest {
        let mut heartbeat = fleet::heartbeat(&self.epoch, boot_s * SECOND, rx, tx);
        heartbeat.boot_id = self.boot_id.clone();
        heartbeat.generation = self.generation;
        heartbeat.epoch_created_unix_ns = self.created_unix_ns;
        heartbeat.agent_time_unix_ns = self.clock.read(now_ns());
        heartbeat
    }

    /// The last reading of the set, kept in the reboot journal.
    fn last_of_boot(&self, boot_s: u64, rx: u64, tx: u64) -> HeartbeatRequest {
        HeartbeatRequest {
            last_of_boot: true,
            ..self.reading(boot_s, rx, tx)
        }
    }
}

async fn send(
    client: &mut heartbeat_client::HeartbeatClient<Channel>,
    token: &str,
    heartbeat: HeartbeatRequest,
) -> HeartbeatReply {
    fleet::send(client, Some(token), heartbeat)
        .await
        .expect("answered")
}

fn stale(reply: &HeartbeatReply, reason: StaleReason) {
    assert_eq!(
        (reply.outcome(), reply.stale_reason()),
        (Outcome::Stale, reason),
        "{reply:?}"
    );
}

/// A node reports boot 1 with its clock right, stops without delivering
/// its last reading (the journal keeps it), reboots with `clock`, delivers
/// the journal first and goes on: both boots count exactly, in full.
async fn reboot_with(test: &str, clock: Clock, generations: bool) {
    let Some(fleet) = Fleet::start(test).await else {
        return;
    };
    let node = fleet.add_node("n").await;
    let collector = Process::start(&fleet.url);
    let mut client = fleet::client(collector.address).await;
    let token = node.token.as_str();
    let generation = |g: u64| if generations { g } else { 0 };

    let boot_1 = Set::new("boot-1", "set-1", generation(1), Clock::Right);
    for (s, rx, tx) in [(10, 1000, 100), (20, 4000, 400)] {
        let reply = send(&mut client, token, boot_1.reading(s, rx, tx)).await;
        assert_eq!(reply.outcome(), Outcome::Applied, "{reply:?}");
    }
    // The stop's reading never reached the collector: the journal has it.
    let journal = boot_1.last_of_boot(25, 5000, 500);

    // The reboot: the boot clock starts again, the wall clock is wrong.
    let boot_2 = Set::new("boot-2", "set-2", generation(2), clock);
    let reply = send(&mut client, token, journal.clone()).await;
    assert_eq!(reply.outcome(), Outcome::Applied, "the journal first");
    assert_eq!(fleet.totals(&node.id).await.0, 5000);
    let reply = send(&mut client, token, journal.clone()).await;
    assert_eq!(reply.outcome(), Outcome::Duplicate, "sent again: once");
    for (s, rx, tx) in [(3, 700, 70), (8, 2700, 270)] {
        let reply = send(&mut client, token, boot_2.reading(s, rx, tx)).await;
        assert_eq!(
            reply.outcome(),
            Outcome::Applied,
            "the new boot counts whatever its clock ({clock:?}): {reply:?}"
        );
        assert_eq!(reply.current_generation, generation(2));
    }
    // The old boot's journal again, late: it never counts twice.
    stale(
        &send(&mut client, token, journal).await,
        StaleReason::Superseded,
    );
    let (download, upload, _, _) = fleet.totals(&node.id).await;
    assert_eq!(
        (download, upload),
        (5000 + 2700, 500 + 270),
        "both boots, exactly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_with_the_clock_two_days_behind_counts_in_full() {
    reboot_with("sets_reboot_behind", Clock::Behind(2 * DAY), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_with_the_clock_at_1970_counts_in_full() {
    reboot_with("sets_reboot_1970", Clock::At1970, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_with_a_wrong_clock_counts_for_agents_without_generations() {
    reboot_with("sets_reboot_no_generation", Clock::Behind(2 * DAY), false).await;
}

/// Two counter sets of one boot (an agent upgrade to a new layout, or
/// `detach` and `run`), the clock stepped back by an hour between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_back_between_two_sets_of_one_boot() {
    let Some(fleet) = Fleet::start("sets_stepped_back").await else {
        return;
    };
    for generations in [true, false] {
        let node = fleet.add_node(&format!("n-{generations}")).await;
        let collector = Process::start(&fleet.url);
        let mut client = fleet::client(collector.address).await;
        let token = node.token.as_str();
        let generation = |g: u64| if generations { g } else { 0 };
        let first = Set::new("boot", "set-1", generation(1), Clock::Right);
        send(&mut client, token, first.reading(100, 1000, 10)).await;
        // The new set's agent reads the old set's last counts (its
        // journal, delivered first), with the clock an hour back.
        let second = Set::new("boot", "set-2", generation(2), Clock::Behind(3600 * SECOND));
        let takeover = first.reading(112, 1500, 15);
        assert_eq!(
            send(&mut client, token, takeover).await.outcome(),
            Outcome::Applied
        );
        for (s, rx, tx) in [(115, 30, 3), (125, 90, 9)] {
            let reply = send(&mut client, token, second.reading(s, rx, tx)).await;
            assert_eq!(reply.outcome(), Outcome::Applied, "{reply:?}");
        }
        // A late heartbeat of the first set, read before the second began.
        stale(
            &send(&mut client, token, first.reading(110, 1400, 14)).await,
            StaleReason::Superseded,
        );
        let (download, upload, _, _) = fleet.totals(&node.id).await;
        assert_eq!((download, upload), (1500 + 90, 15 + 9), "{generations}");
    }
}

/// A clock ten minutes ahead when a set began, corrected since: the sets
/// after it count, in the same boot and after a reboot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_after_a_clock_that_was_ahead_count() {
    let Some(fleet) = Fleet::start("sets_ahead").await else {
        return;
    };
    let node = fleet.add_node("n").await;
    let collector = Process::start(&fleet.url);
    let mut client = fleet::client(collector.address).await;
    let token = node.token.as_str();
    let ahead = Set::new("boot-1", "set-1", 1, Clock::Ahead(600 * SECOND));
    let reply = send(&mut client, token, ahead.reading(30, 100, 1)).await;
    assert_eq!(
        reply.outcome(),
        Outcome::Applied,
        "a clock ahead is no refusal"
    );
    // NTP steps the clock back; a new set of the same boot begins.
    let corrected = Set::new("boot-1", "set-2", 2, Clock::Right);
    assert!(corrected.created_unix_ns < ahead.created_unix_ns);
    send(&mut client, token, ahead.reading(40, 200, 2)).await;
    let reply = send(&mut client, token, corrected.reading(45, 50, 5)).await;
    assert_eq!(reply.outcome(), Outcome::Applied, "{reply:?}");
    // And after a reboot.
    let rebooted = Set::new("boot-2", "set-3", 3, Clock::Right);
    send(&mut client, token, corrected.last_of_boot(50, 60, 6)).await;
    let reply = send(&mut client, token, rebooted.reading(2, 7, 7)).await;
    assert_eq!(reply.outcome(), Outcome::Applied, "{reply:?}");
    let (download, upload, _, _) = fleet.totals(&node.id).await;
    assert_eq!((download, upload), (200 + 60 + 7, 2 + 6 + 7));
}

/// Late heartbeats of an earlier set, one of them delivered after the new
/// set's first heartbeat through a second replica, and replays to both:
/// nothing added, and the two replicas agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_heartbeats_of_an_earlier_set_through_another_replica_add_nothing() {
    let Some(fleet) = Fleet::start("sets_late").await else {
        return;
    };
    let node = fleet.add_node("n").await;
    let (a, b) = (Process::start(&fleet.url), Process::start(&fleet.url));
    let mut to_a = fleet::client(a.address).await;
    let mut to_b = fleet::client(b.address).await;
    let token = node.token.as_str();
    let old = Set::new("boot-1", "set-1", 1, Clock::Right);
    let new = Set::new("boot-2", "set-2", 2, Clock::Behind(2 * DAY));
    send(&mut to_a, token, old.reading(10, 1000, 10)).await;
    let reply = send(&mut to_a, token, new.reading(2, 500, 5)).await;
    assert_eq!(reply.outcome(), Outcome::Applied);
    // The old set's later reading (never applied: more bytes) comes late,
    // through the other replica, and concurrently with the new set's next.
    let late = old.reading(20, 3000, 30);
    let next = new.reading(4, 600, 6);
    let (late, next) = tokio::join!(send(&mut to_b, token, late), send(&mut to_a, token, next));
    stale(&late, StaleReason::Superseded);
    assert_eq!(next.outcome(), Outcome::Applied);
    // Replays, to either replica.
    assert_eq!(
        send(&mut to_b, token, new.reading(4, 600, 6))
            .await
            .outcome(),
        Outcome::Duplicate
    );
    stale(
        &send(&mut to_a, token, new.reading(2, 500, 5)).await,
        StaleReason::EarlierReading,
    );
    stale(
        &send(&mut to_b, token, old.reading(10, 1000, 10)).await,
        StaleReason::Superseded,
    );
    // A set never followed, of a boot never seen, with a lower generation:
    // older (its agent's state is gone, or it is a straggler).
    let lost = Set::new("boot-0", "set-0", 1, Clock::Right);
    stale(
        &send(&mut to_b, token, lost.reading(99, 7777, 77)).await,
        StaleReason::OlderGeneration,
    );
    let (download, upload, _, _) = fleet.totals(&node.id).await;
    assert_eq!((download, upload), (1000 + 600, 10 + 6));
}

/// An agent whose state directory was lost counts again from generation 1:
/// answered OLDER_GENERATION, it raises its set above the followed one, and
/// the set then counts in full, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_raised_above_the_followed_generation_counts_once() {
    let Some(fleet) = Fleet::start("sets_raised").await else {
        return;
    };
    let node = fleet.add_node("n").await;
    let collector = Process::start(&fleet.url);
    let mut client = fleet::client(collector.address).await;
    let token = node.token.as_str();
    let before = Set::new("boot-1", "set-7", 7, Clock::Right);
    send(&mut client, token, before.reading(10, 100, 1)).await;
    let mut fresh = Set::new("boot-2", "set-8", 1, Clock::Right);
    let reply = send(&mut client, token, fresh.reading(5, 40, 4)).await;
    stale(&reply, StaleReason::OlderGeneration);
    assert_eq!(reply.current_generation, 7);
    fresh.generation = reply.current_generation + 1;
    let reply = send(&mut client, token, fresh.reading(5, 40, 4)).await;
    assert_eq!(reply.outcome(), Outcome::Applied, "{reply:?}");
    assert_eq!(reply.current_generation, 8);
    // Raised again (a confused agent): the set is followed already, so it
    // only goes on from where it was.
    fresh.generation = 20;
    let reply = send(&mut client, token, fresh.reading(6, 50, 5)).await;
    assert_eq!(reply.outcome(), Outcome::Applied);
    assert_eq!(reply.current_generation, 8, "a set keeps its generation");
    let (download, upload, _, _) = fleet.totals(&node.id).await;
    assert_eq!((download, upload), (100 + 50, 1 + 5));
}

/// A node whose heartbeats are answered STALE again and again (another
/// agent took over its token) is shown as such, and so is a clock that is
/// days off; neither is a lockout of a node that reports right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_runs_and_clock_offsets_are_shown_in_the_api_and_metrics() {
    let Some(fleet) = Fleet::start("sets_shown").await else {
        return;
    };
    let node = fleet.add_node("locked").await;
    let behind = fleet.add_node("behind").await;
    let server = fleet.serve_here().await;
    let mut client = fleet::client(server.address).await;
    let http = Client::new(server.http_address);
    let token = node.token.as_str();
    let mine = Set::new("boot", "mine", 1, Clock::Right);
    send(&mut client, token, mine.reading(10, 100, 1)).await;
    // Another agent with the same token starts a later set.
    let other = Set::new("boot", "other", 2, Clock::Right);
    send(&mut client, token, other.reading(20, 5, 5)).await;
    for s in [30, 40] {
        stale(
            &send(&mut client, token, mine.reading(s, 200, 2)).await,
            StaleReason::Superseded,
        );
    }
    let shown = http.get(&format!("/api/v1/nodes/{}", node.id)).await;
    assert_eq!(shown.json["stale"]["run"], 2, "{}", shown.body);
    assert_eq!(shown.json["stale"]["flagged"], false, "two are no run yet");
    let reply = send(&mut client, token, mine.reading(50, 300, 3)).await;
    stale(&reply, StaleReason::Superseded);
    assert_eq!(reply.current_generation, 2);

    let shown = http.get(&format!("/api/v1/nodes/{}", node.id)).await;
    let stale_json = &shown.json["stale"];
    assert_eq!(stale_json["heartbeats"], "3", "{}", shown.body);
    assert_eq!(stale_json["run"], 3);
    assert_eq!(stale_json["flagged"], true);
    assert_eq!(stale_json["lastReason"], "superseded");
    assert!(stale_json["lastAt"].is_string());
    assert_eq!(shown.json["counterSet"]["epoch"], "other");
    assert_eq!(shown.json["counterSet"]["generation"], "2");
    let list = http.get("/api/v1/nodes").await;
    let listed = list.json["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == node.id.as_str()))
        .expect("listed");
    assert_eq!(listed["stale"]["flagged"], true);

    // A node whose clock is two days behind: counted, and shown.
    let late_clock = Set::new("boot-b", "set-b", 1, Clock::Behind(2 * DAY));
    let reply = send(&mut client, &behind.token, late_clock.reading(5, 64, 8)).await;
    assert_eq!(reply.outcome(), Outcome::Applied);
    let shown = http.get(&format!("/api/v1/nodes/{}", behind.id)).await;
    let offset = shown.json["clock"]["offsetMs"].as_i64().expect("an offset");
    assert!(
        (offset + 2 * 86_400_000).abs() < 60_000,
        "{offset} {}",
        shown.body
    );
    assert_eq!(shown.json["clock"]["skewed"], true);
    assert_eq!(shown.json["stale"]["flagged"], false);
    let locked = http.get(&format!("/api/v1/nodes/{}", node.id)).await;
    assert_eq!(locked.json["clock"]["skewed"], false, "{}", locked.body);

    let metrics = http.get("/metrics").await.body;
    for (line, wanted) in [
        ("tally_node_stale_heartbeats_total{node=\"locked\"} ", "3"),
        ("tally_node_stale{node=\"locked\"} ", "1"),
        ("tally_node_stale{node=\"behind\"} ", "0"),
    ] {
        let found = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("{line}in\n{metrics}"));
        assert_eq!(found, wanted, "{line}");
    }
    let offset: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tally_node_clock_offset_seconds{node=\"behind\"} "))
        .and_then(|v| v.parse().ok())
        .expect("behind's offset");
    assert!((offset + 172_800.0).abs() < 60.0, "{offset}");

    // The set now followed counts; the run is over.
    let reply = send(&mut client, token, other.reading(60, 9, 9)).await;
    assert_eq!(reply.outcome(), Outcome::Applied);
    let shown = http.get(&format!("/api/v1/nodes/{}", node.id)).await;
    assert_eq!(shown.json["stale"]["run"], 0, "{}", shown.body);
    assert_eq!(shown.json["stale"]["flagged"], false);
    assert_eq!(shown.json["stale"]["heartbeats"], "3", "kept in all");
}
