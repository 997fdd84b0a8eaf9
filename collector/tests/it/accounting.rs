//! The accounting rules as a property, against a real PostgreSQL: random
//! heartbeat histories (several epochs and boots, counters that start at
//! zero or only give a baseline) delivered with replays, reordering, late
//! heartbeats of earlier epochs, in random batches, with period resets in
//! between. Each epoch's node clock is off at random (equal, two days
//! behind, ten minutes ahead, at 1970), and its agent keeps a generation
//! (known, unknown as from an older agent, or lost with its state
//! directory, when the simulated agent raises it as the contract allows).
//! With generations known, some counter sets never reach the collector on
//! time and only one late heartbeat of theirs arrives. The stored totals
//! must equal the ground truth exactly, never decrease, and the period
//! counters must hold exactly what was counted since the last reset.

use crate::common;

use std::sync::OnceLock;

use chrono::Utc;
use proptest::prelude::*;
use sqlx::{PgPool, Row as _};
use tally_collector::{
    accounting::{CounterSet, Reading, StaleReason},
    auth::{self, Credentials},
    db,
    ingest::{Applied, BatchTime, Job, store},
    nodes,
    period::{self, Target},
    validate::{Heartbeat, Interface},
};
use tally_proto::v1::Outcome;
use tally_testkit::devdb::TempCluster;

/// One counter set: where it starts and its successive readings.
#[derive(Debug, Clone)]
struct EpochPlan {
    new_boot: bool,
    starts_at_zero: bool,
    /// For a baseline source: the raw values before the first reading.
    baseline: (i64, i64),
    /// Increments of (rx, tx) from one reading to the next.
    steps: Vec<(i64, i64)>,
    /// How far the node's clock is off while this set exists.
    clock: Clock,
    /// Its boot clock advances by this much before each reading (ns).
    gap_ns: i64,
    /// Never delivered on time (generations known only): one late
    /// heartbeat of it arrives during a later set.
    lost: bool,
}

/// A node's wall clock.
#[derive(Debug, Clone, Copy)]
enum Clock {
    Right,
    DaysBehind,
    MinutesAhead,
    At1970,
}

/// What the agent knows of generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generations {
    /// Kept in the state directory: every new set gets a higher one.
    Known,
    /// An agent that does not send one (0).
    Unknown,
    /// Kept, but the state directory is lost before the sets flagged
    /// `new_boot` (the count starts again at 1); the agent raises a set's
    /// generation when the collector answers OLDER_GENERATION for it.
    LostAtBoots,
}

/// What the network does with one epoch's heartbeats.
#[derive(Debug, Clone)]
struct Delivery {
    /// Which readings are sent again later (a retry), by index.
    replays: Vec<usize>,
    /// Adjacent swaps applied to the delivery order.
    swaps: Vec<usize>,
    /// A late heartbeat of an earlier epoch delivered in this one.
    late: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Send {
        epoch: usize,
        reading: usize,
        /// A heartbeat of an earlier set (or a lost one), not the agent's
        /// current one.
        late: bool,
    },
    Reset,
}

const DAY_NS: i64 = 86_400_000_000_000;
/// The true time at the history's start (2026-11-14).
const T0_NS: i64 = 1_763_000_000_000_000_000;

fn clock() -> impl Strategy<Value = Clock> {
    prop_oneof![
        Just(Clock::Right),
        Just(Clock::DaysBehind),
        Just(Clock::MinutesAhead),
        Just(Clock::At1970),
    ]
}

fn epoch_plan() -> impl Strategy<Value = EpochPlan> {
    (
        any::<bool>(),
        prop::bool::weighted(0.8),
        (0i64..1 << 40, 0i64..1 << 40),
        prop::collection::vec((0i64..1_000_000, 0i64..1_000_000), 1..8),
        clock(),
        1i64..10_000_000_000,
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(new_boot, starts_at_zero, baseline, steps, clock, gap_ns, lost)| EpochPlan {
                new_boot,
                starts_at_zero,
                baseline,
                steps,
                clock,
                gap_ns,
                lost,
            },
        )
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (
        prop::collection::vec(0usize..8, 0..4),
        prop::collection::vec(0usize..12, 0..6),
        prop::option::of(0usize..8),
    )
        .prop_map(|(replays, swaps, late)| Delivery {
            replays,
            swaps,
            late,
        })
}

fn generations() -> impl Strategy<Value = Generations> {
    prop_oneof![
        Just(Generations::Known),
        Just(Generations::Unknown),
        Just(Generations::LostAtBoots),
    ]
}

type History = (
    Vec<(EpochPlan, Delivery)>,
    Generations,
    Vec<usize>,
    Vec<usize>,
);

fn history() -> impl Strategy<Value = History> {
    (
        prop::collection::vec((epoch_plan(), delivery()), 1..5),
        generations(),
        // Batch sizes, used in turn.
        prop::collection::vec(1usize..6, 1..6),
        // Positions (mod the op count) where a period reset happens.
        prop::collection::vec(0usize..64, 0..3),
    )
        .prop_map(|(mut epochs, generations, batches, resets)| {
            // A set is lost only where generations prove it old.
            for (plan, _) in &mut epochs {
                plan.lost &= generations == Generations::Known;
            }
            (epochs, generations, batches, resets)
        })
}

/// The raw (rx, tx) of reading `i` of `plan`.
fn raw(plan: &EpochPlan, i: usize) -> (i64, i64) {
    let start = if plan.starts_at_zero {
        (0, 0)
    } else {
        plan.baseline
    };
    plan.steps[..=i]
        .iter()
        .fold(start, |(rx, tx), (drx, dtx)| (rx + drx, tx + dtx))
}

/// The delivery order of the whole history, and the ground truth: for each
/// epoch, what the collector must count of it.
fn schedule(epochs: &[(EpochPlan, Delivery)]) -> (Vec<Op>, (i64, i64)) {
    let mut ops = Vec::new();
    let mut truth = (0i64, 0i64);
    let mut lost: Vec<usize> = Vec::new();
    for (e, (plan, delivery)) in epochs.iter().enumerate() {
        let n = plan.steps.len();
        if plan.lost {
            // One heartbeat of it comes during a later set, if any.
            lost.push(e);
            continue;
        }
        let mut order: Vec<usize> = (0..n).collect();
        for r in &delivery.replays {
            order.push(r % n);
        }
        for s in &delivery.swaps {
            if order.len() > 1 {
                let i = s % (order.len() - 1);
                order.swap(i, i + 1);
            }
        }
        // The agent keeps sending its newest reading until it is
        // acknowledged, so an epoch's last reading always arrives before
        // the next epoch's first.
        order.push(n - 1);
        let first = order[0];
        let mut sends: Vec<Op> = order
            .into_iter()
            .map(|reading| Op::Send {
                epoch: e,
                reading,
                late: false,
            })
            .collect();
        let delivered: Vec<usize> = (0..e).filter(|i| !epochs[*i].0.lost).collect();
        if let (Some(late), false) = (delivery.late, delivered.is_empty()) {
            let earlier = delivered[late % delivered.len()];
            let reading = late % epochs[earlier].0.steps.len();
            sends.insert(
                1.min(sends.len()),
                Op::Send {
                    epoch: earlier,
                    reading,
                    late: true,
                },
            );
        }
        for l in lost.drain(..) {
            let reading = delivery.late.unwrap_or(0) % epochs[l].0.steps.len();
            sends.insert(
                1.min(sends.len()),
                Op::Send {
                    epoch: l,
                    reading,
                    late: true,
                },
            );
        }
        ops.extend(sends);
        // Counted of this epoch: the last value, from zero or from the
        // first reading the collector saw (the baseline).
        let (last_rx, last_tx) = raw(plan, n - 1);
        let (base_rx, base_tx) = if plan.starts_at_zero {
            (0, 0)
        } else {
            raw(plan, first)
        };
        truth.0 += last_rx - base_rx;
        truth.1 += last_tx - base_tx;
    }
    (ops, truth)
}

/// The simulated agent: the generations it gave its sets, what it knows.
struct Agent {
    mode: Generations,
    /// Per epoch, once the set was created.
    generation: Vec<Option<i64>>,
    /// The highest generation it used or saw the collector follow.
    highest: i64,
    /// The set it reports now (the newest it created).
    current: Option<usize>,
}

impl Agent {
    fn new(mode: Generations, epochs: usize) -> Self {
        Self {
            mode,
            generation: vec![None; epochs],
            highest: 0,
            current: None,
        }
    }

    /// The generation of `epoch`, creating the set (in creation order).
    fn generation(&mut self, epochs: &[(EpochPlan, Delivery)], epoch: usize) -> i64 {
        if let Some(g) = self.generation[epoch] {
            return g;
        }
        let g = match self.mode {
            Generations::Unknown => 0,
            Generations::Known => epoch as i64 + 1,
            Generations::LostAtBoots => {
                if epochs[epoch].0.new_boot {
                    self.highest = 0;
                }
                self.highest += 1;
                self.highest
            }
        };
        self.generation[epoch] = Some(g);
        self.current = Some(self.current.map_or(epoch, |c| c.max(epoch)));
        g
    }

    /// Learns from a reply; returns whether the heartbeat must be sent
    /// again (its own current set, answered OLDER_GENERATION: raised).
    fn answered(&mut self, epoch: usize, late: bool, applied: &Applied) -> bool {
        self.highest = self.highest.max(applied.current_generation);
        let raise = self.mode == Generations::LostAtBoots
            && !late
            && self.current == Some(epoch)
            && applied.outcome == Outcome::Stale
            && applied.stale_reason == StaleReason::OlderGeneration;
        if raise {
            self.highest = self.highest.max(applied.current_generation) + 1;
            self.generation[epoch] = Some(self.highest);
        }
        raise
    }
}

fn boot_of(epochs: &[(EpochPlan, Delivery)], epoch: usize) -> usize {
    epochs[..=epoch].iter().filter(|(p, _)| p.new_boot).count()
}

/// The boot clock at reading `reading` of `epoch`: it starts again with
/// every boot and runs on across the epochs of one boot.
fn boot_clock(epochs: &[(EpochPlan, Delivery)], epoch: usize, reading: usize) -> i64 {
    let boot = boot_of(epochs, epoch);
    let mut clock = 1_000_000_000;
    for (e, (plan, _)) in epochs.iter().enumerate().take(epoch + 1) {
        if boot_of(epochs, e) != boot {
            continue;
        }
        let readings = if e == epoch {
            reading + 1
        } else {
            plan.steps.len()
        };
        clock += plan.gap_ns * readings as i64;
    }
    clock
}

/// The node's wall clock for a true time.
fn wall_clock(clock: Clock, true_ns: i64) -> i64 {
    match clock {
        Clock::Right => true_ns,
        Clock::DaysBehind => true_ns - 2 * DAY_NS,
        Clock::MinutesAhead => true_ns + 600_000_000_000,
        Clock::At1970 => true_ns - T0_NS + 3_000_000_000,
    }
}

fn heartbeat(
    epochs: &[(EpochPlan, Delivery)],
    epoch: usize,
    reading: usize,
    generation: i64,
) -> Heartbeat {
    let boot = boot_of(epochs, epoch);
    let plan = &epochs[epoch].0;
    let (rx, tx) = raw(plan, reading);
    let sequence = boot_clock(epochs, epoch, reading);
    // Each epoch lives an hour of true time after the one before.
    let began = T0_NS + epoch as i64 * 3_600_000_000_000;
    let taken = began + sequence % 3_600_000_000_000;
    // Two interfaces whose sums are (rx, tx).
    let interfaces = vec![
        interface("eth0", rx / 3, tx / 2),
        interface("eth1", rx - rx / 3, tx - tx / 2),
    ];
    Heartbeat {
        reading: Reading {
            set: CounterSet {
                boot_id: format!("boot-{boot}"),
                epoch: format!("epoch-{epoch}"),
            },
            generation,
            starts_at_zero: plan.starts_at_zero,
            sequence,
            rx,
            tx,
        },
        load: [0.5, 0.25, 0.125],
        hostname: "host".into(),
        kernel: "6.1".into(),
        agent_version: "test".into(),
        source: "ebpf".into(),
        interfaces,
        agent_time_unix_ns: wall_clock(plan.clock, taken),
        epoch_created_unix_ns: wall_clock(plan.clock, began),
        clock_offset_ms: (wall_clock(plan.clock, taken) - taken) / 1_000_000,
        last_of_boot: false,
    }
}

fn interface(name: &str, rx: i64, tx: i64) -> Interface {
    Interface {
        name: name.into(),
        ifindex: 2,
        state: "attached",
        rx_bytes: rx,
        rx_packets: 0,
        tx_bytes: tx,
        tx_packets: 0,
        kind: "physical",
        default_route: false,
        ipv4: None,
        ipv6: None,
        master: 0,
        link: 0,
    }
}

struct Db {
    runtime: tokio::runtime::Runtime,
    pool: PgPool,
    _cluster: TempCluster,
}

fn db() -> Option<&'static Db> {
    static DB: OnceLock<Option<Db>> = OnceLock::new();
    DB.get_or_init(|| {
        let cluster = common::cluster("accounting_property")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let pool = runtime.block_on(async {
            let url = cluster.create_database("tally").await.expect("database");
            let pool = db::connect(&url, 4).await.expect("connect");
            db::migrate(&pool).await.expect("migrate");
            pool
        });
        Some(Db {
            runtime,
            pool,
            _cluster: cluster,
        })
    })
    .as_ref()
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Stored {
    total: (i64, i64),
    period: (i64, i64),
}

async fn stored(pool: &PgPool, node: &str) -> Stored {
    let row = sqlx::query(
        r#"SELECT "totalDownload", "totalUpload", "periodDownload", "periodUpload"
           FROM "traffic_stats" WHERE "nodeId" = $1"#,
    )
    .bind(node)
    .fetch_one(pool)
    .await
    .expect("traffic_stats row");
    let get = |c: &str| row.try_get::<i64, _>(c).expect("column");
    Stored {
        total: (get("totalDownload"), get("totalUpload")),
        period: (get("periodDownload"), get("periodUpload")),
    }
}

async fn check_history(
    pool: &PgPool,
    epochs: &[(EpochPlan, Delivery)],
    generations: Generations,
    batch_sizes: &[usize],
    resets: &[usize],
) -> Result<(), TestCaseError> {
    let added = nodes::add(pool, &format!("n-{}", cuid::cuid1()))
        .await
        .expect("node add");
    let credentials: Credentials =
        auth::from_bearer(Some(&format!("Bearer {}", added.token))).expect("token");
    let (ops, truth) = schedule(epochs);
    let mut queue: std::collections::VecDeque<Op> = std::collections::VecDeque::new();
    for (i, op) in ops.into_iter().enumerate() {
        if resets.contains(&i) {
            queue.push_back(Op::Reset);
        }
        queue.push_back(op);
    }
    let mut agent = Agent::new(generations, epochs.len());
    let mut last = stored(pool, &added.id).await;
    let mut total_at_reset = (0i64, 0i64);
    let mut sizes = batch_sizes.iter().cycle();
    let mut raised = 0usize;
    while !queue.is_empty() {
        let size = *sizes.next().unwrap_or(&1);
        let mut batch: Vec<Op> = Vec::new();
        while batch.len() < size {
            let Some(Op::Send { epoch, late, .. }) = queue.front().copied() else {
                break;
            };
            // The agent sends a new set's first heartbeat only after the
            // one before was answered (what it raises is sent again first).
            let starts_a_set = !late && agent.current.is_none_or(|c| epoch > c);
            if starts_a_set && !batch.is_empty() && generations == Generations::LostAtBoots {
                break;
            }
            agent.generation(epochs, epoch);
            batch.extend(queue.pop_front());
        }
        if !batch.is_empty() {
            let jobs: Vec<Job> = batch
                .iter()
                .filter_map(|op| match *op {
                    Op::Send { epoch, reading, .. } => Some(Job {
                        credentials: credentials.clone(),
                        heartbeat: heartbeat(
                            epochs,
                            epoch,
                            reading,
                            agent.generation(epochs, epoch),
                        ),
                    }),
                    Op::Reset => None,
                })
                .collect();
            let mut conn = pool.acquire().await.expect("connection");
            let time = BatchTime::new(Utc::now().naive_utc(), None);
            let results = store::apply(&mut conn, &jobs, time)
                .await
                .expect("batch commits");
            let mut again = Vec::new();
            for (op, result) in batch.iter().zip(&results) {
                let applied = result.as_ref().expect("no heartbeat is refused");
                prop_assert!(matches!(
                    applied.outcome,
                    Outcome::Applied | Outcome::Duplicate | Outcome::Stale
                ));
                if let Op::Send { epoch, late, .. } = *op
                    && agent.answered(epoch, late, applied)
                {
                    again.push(*op);
                }
            }
            raised += again.len();
            prop_assert!(raised < 1000, "raising never ends");
            for op in again.into_iter().rev() {
                queue.push_front(op);
            }
            let now = stored(pool, &added.id).await;
            prop_assert!(now.total.0 >= last.total.0 && now.total.1 >= last.total.1);
            last = now;
        }
        if matches!(queue.front(), Some(Op::Reset)) {
            queue.pop_front();
            period::reset_now(pool, &Target::Node(added.id.clone()))
                .await
                .expect("reset");
            let now = stored(pool, &added.id).await;
            prop_assert_eq!(now.period, (0, 0));
            prop_assert_eq!(now.total, last.total);
            total_at_reset = now.total;
        }
    }
    let end = stored(pool, &added.id).await;
    prop_assert_eq!(end.total, truth, "totals must equal the ground truth");
    prop_assert_eq!(
        end.period,
        (
            end.total.0 - total_at_reset.0,
            end.total.1 - total_at_reset.1
        ),
        "the period holds what was counted since the last reset"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn stored_totals_equal_the_ground_truth(
        (epochs, generations, batches, resets) in history()
    ) {
        let Some(db) = db() else { return Ok(()) };
        db.runtime.block_on(check_history(&db.pool, &epochs, generations, &batches, &resets))?;
    }
}

/// The property's ground truth itself: a history whose answer is known.
#[test]
fn schedule_truth_for_a_known_history() {
    let plan = |starts_at_zero, steps: Vec<(i64, i64)>| EpochPlan {
        new_boot: false,
        starts_at_zero,
        baseline: (1000, 2000),
        steps,
        clock: Clock::Right,
        gap_ns: 1,
        lost: false,
    };
    let none = Delivery {
        replays: vec![],
        swaps: vec![],
        late: None,
    };
    let epochs = vec![
        (plan(true, vec![(5, 1), (5, 1)]), none.clone()),
        (plan(false, vec![(7, 7), (3, 3)]), none),
    ];
    let (_, truth) = schedule(&epochs);
    // Epoch 0 counts its last value (10, 2); epoch 1 its growth after the
    // baseline reading (3, 3).
    assert_eq!(truth, (13, 5));

    // A set lost between them counts nothing; one heartbeat of it arrives
    // late, during the next set.
    let mut lost = plan(true, vec![(100, 100)]);
    lost.lost = true;
    let mut with_lost = epochs.clone();
    with_lost.insert(1, (lost, with_lost[1].1.clone()));
    let (ops, truth) = schedule(&with_lost);
    assert_eq!(truth, (13, 5));
    assert!(ops.iter().any(|op| matches!(
        op,
        Op::Send {
            epoch: 1,
            late: true,
            ..
        }
    )));
    // The boot clock runs on across the sets of a boot.
    assert!(boot_clock(&with_lost, 2, 0) > boot_clock(&with_lost, 1, 0));
    assert!(boot_clock(&with_lost, 1, 0) > boot_clock(&with_lost, 0, 1));
}
