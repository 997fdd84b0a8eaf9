//! Properties of [`plan`] over random runs of heartbeats: totals never go
//! down and no byte is lost or made up between the totals, the current
//! period and the periods closed; a batch planned again after it was
//! applied changes nothing; the same input always plans the same.

use chrono::{DateTime, NaiveDateTime, TimeDelta};
use proptest::prelude::*;

use super::*;
use crate::{
    accounting::Reading, auth::Credentials, billing::period::calendar::Anchor, validate::Interface,
};

const NODE: &str = "node-1";
const TOKEN_HASH: &str = "hash-of-the-secret";

/// One heartbeat of a generated run: which of three counter sets it is of,
/// and how far its sequence, counters and the collector's clock moved.
#[derive(Debug, Clone)]
struct Step {
    set: usize,
    /// Added to the set's sequence (≤ 0: a repeat or an earlier reading).
    sequence: i64,
    /// Added to the set's counters (< 0: a counter going backwards).
    rx: i64,
    tx: i64,
    /// Minutes the collector's clock moves before the heartbeat.
    minutes: i64,
    /// Starts a new batch before this heartbeat.
    new_batch: bool,
    wrong_token: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..3usize,
        prop_oneof![4 => 1..60_000_000_000i64, 1 => -2..1i64],
        prop_oneof![8 => 0..5_000_000i64, 1 => 0..2_000_000_000_000i64, 1 => -10..0i64],
        0..5_000_000i64,
        prop_oneof![3 => 0..3i64, 1 => 0..90_000i64],
        any::<bool>(),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(set, sequence, rx, tx, minutes, new_batch, wrong_token)| Step {
                set,
                sequence,
                rx,
                tx,
                minutes,
                new_batch,
                wrong_token,
            },
        )
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop::option::of((
            1..=31u32,
            prop::sample::select(vec!["UTC", "Europe/Berlin"]),
        )),
        prop::option::of(1..50_000_000i64),
        prop::sample::select(vec![Mode::Sum, Mode::Max, Mode::Upload, Mode::Download]),
    )
        .prop_map(|(anchor, quota, mode)| Settings {
            anchor: anchor.and_then(|(day, zone)| Anchor::new(day, zone).ok()),
            quota,
            mode,
            ..Settings::default()
        })
}

fn start() -> NaiveDateTime {
    DateTime::from_timestamp(1_790_000_000, 0)
        .unwrap_or_default()
        .naive_utc()
}

fn fresh_node<'a>(settings: Settings) -> NodeState<'a> {
    NodeState {
        keys: crate::auth::NodeKeys {
            current: TOKEN_HASH.to_owned(),
            previous: None,
        },
        settings,
        unusable_settings: None,
        position: Position::default(),
        followed: Followed::default(),
        signals: Signals::default(),
        interfaces: None,
        last_seen: None,
        total_upload: 0,
        total_download: 0,
        period_upload: 0,
        period_download: 0,
        period_start: start(),
        interfaces_at: None,
        update: None,
    }
}

fn job(set: usize, sequence: i64, rx: i64, tx: i64, wrong_token: bool) -> Job {
    let reading = Reading {
        set: CounterSet {
            boot_id: "boot-1".to_owned(),
            epoch: format!("epoch-{set}"),
        },
        generation: 0,
        starts_at_zero: true,
        sequence,
        rx,
        tx,
    };
    Job {
        credentials: Credentials {
            node_id: NODE.to_owned(),
            secret_hash: if wrong_token { "wrong" } else { TOKEN_HASH }.to_owned(),
        },
        heartbeat: Heartbeat {
            reading,
            load: [0.5, 0.25, 0.125],
            hostname: "host".to_owned(),
            kernel: "6.6".to_owned(),
            agent_version: "test".to_owned(),
            source: "ebpf".to_owned(),
            interfaces: vec![Interface {
                name: "eth0".to_owned(),
                ifindex: 2,
                state: "attached",
                rx_bytes: rx,
                rx_packets: 0,
                tx_bytes: tx,
                tx_packets: 0,
                kind: "physical",
                default_route: true,
                ipv4: None,
                ipv6: None,
                master: 0,
                link: 0,
            }],
            agent_time_unix_ns: sequence,
            epoch_created_unix_ns: 0,
            clock_offset_ms: 0,
            last_of_boot: false,
        },
    }
}

/// The run's batches: (collector's clock, jobs).
fn batches(steps: &[Step]) -> Vec<(NaiveDateTime, Vec<Job>)> {
    let mut sets = [(0i64, 0i64, 0i64); 3];
    let mut now = start();
    let mut batches: Vec<(NaiveDateTime, Vec<Job>)> = Vec::new();
    for step in steps {
        now += TimeDelta::minutes(step.minutes);
        let set = &mut sets[step.set];
        set.0 = set.0.saturating_add(step.sequence).max(1);
        set.1 = set.1.saturating_add(step.rx).max(0);
        set.2 = set.2.saturating_add(step.tx);
        let job = job(step.set, set.0, set.1, set.2.max(0), step.wrong_token);
        match batches.last_mut() {
            Some((_, jobs)) if !step.new_batch => jobs.push(job),
            _ => batches.push((now, vec![job])),
        }
    }
    batches
}

/// What is stored of a node after its batch, as the next batch loads it.
fn stored(mut node: NodeState<'_>) -> NodeState<'_> {
    node.update = None;
    node.signals.changed = false;
    node
}

fn one_node<'a>(node: NodeState<'a>) -> HashMap<String, NodeState<'a>> {
    HashMap::from([(NODE.to_owned(), node)])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn totals_never_go_down_and_every_byte_is_kept_once(
        settings in settings(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let batches = batches(&steps);
        let mut node = fresh_node(settings);
        for (now, jobs) in &batches {
            let before = node.clone();
            let mut nodes = one_node(stored(node));
            let (results, _) = plan(&mut nodes, jobs, &BatchTime::new(*now, None));
            prop_assert_eq!(results.len(), jobs.len());
            node = nodes.remove(NODE).expect("the node");
            prop_assert!(node.total_upload >= before.total_upload);
            prop_assert!(node.total_download >= before.total_download);
            let Some(update) = &node.update else {
                prop_assert_eq!(node.traffic(), before.traffic());
                continue;
            };
            // What was counted went into the totals, and into the current
            // period or the periods closed, once.
            prop_assert_eq!(node.total_upload - before.total_upload, update.upload);
            prop_assert_eq!(node.total_download - before.total_download, update.download);
            let closed_up: i64 = update.closed.iter().map(|p| p.upload).sum();
            let closed_down: i64 = update.closed.iter().map(|p| p.download).sum();
            prop_assert_eq!(node.period_upload + closed_up, before.period_upload + update.upload);
            prop_assert_eq!(
                node.period_download + closed_down,
                before.period_download + update.download
            );
            prop_assert!(node.period_upload >= 0 && node.period_download >= 0);
            prop_assert!(node.period_start >= before.period_start);
        }
    }

    #[test]
    fn a_batch_planned_again_after_it_was_applied_changes_nothing(
        settings in settings(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let mut node = fresh_node(settings);
        for (now, jobs) in &batches(&steps) {
            let time = BatchTime::new(*now, None);
            let mut nodes = one_node(stored(node));
            let _ = plan(&mut nodes, jobs, &time);
            let applied = stored(nodes.remove(NODE).expect("the node"));
            let mut again = one_node(applied.clone());
            let (results, _) = plan(&mut again, jobs, &time);
            for result in &results {
                prop_assert!(
                    !matches!(result, Ok(a) if a.outcome == Outcome::Applied),
                    "replayed and applied again: {:?}",
                    result
                );
            }
            let replayed = again.remove(NODE).expect("the node");
            prop_assert!(replayed.update.is_none());
            prop_assert_eq!(replayed.traffic(), applied.traffic());
            prop_assert_eq!(&replayed.position, &applied.position);
            node = applied;
        }
    }

    #[test]
    fn the_same_input_plans_the_same(
        settings in settings(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let mut node = fresh_node(settings);
        for (now, jobs) in &batches(&steps) {
            let time = BatchTime::new(*now, None);
            let (mut first, mut second) = (one_node(stored(node.clone())), one_node(stored(node)));
            let (results, outbox) = plan(&mut first, jobs, &time);
            let (results_again, outbox_again) = plan(&mut second, jobs, &time);
            prop_assert_eq!(format!("{results:?}"), format!("{results_again:?}"));
            prop_assert_eq!(outbox.payloads(), outbox_again.payloads());
            let (a, b) = (&first[NODE], &second[NODE]);
            prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
            node = first.remove(NODE).expect("the node");
        }
    }
}

#[test]
fn a_wrong_token_or_an_unknown_node_is_refused_and_changes_nothing() {
    let jobs = [job(0, 5, 100, 40, true)];
    let mut nodes = one_node(fresh_node(Settings::default()));
    let (results, outbox) = plan(&mut nodes, &jobs, &BatchTime::new(start(), None));
    assert!(matches!(results[..], [Err(Error::Unauthenticated(_))]));
    assert!(outbox.is_empty());
    assert!(nodes[NODE].update.is_none());
    let (results, _) = plan(
        &mut HashMap::new(),
        &[job(0, 5, 100, 40, false)],
        &BatchTime::new(start(), None),
    );
    assert!(matches!(results[..], [Err(Error::Unauthenticated(_))]));
}
