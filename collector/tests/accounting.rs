//! The accounting rules as a property, against a real PostgreSQL: random
//! heartbeat histories (several epochs and boots, counters that start at
//! zero or only give a baseline) delivered with replays, reordering, late
//! heartbeats of earlier epochs, in random batches, with period resets in
//! between. The stored totals must equal the ground truth exactly, never
//! decrease, and the period counters must hold exactly what was counted
//! since the last reset.

mod common;

use std::sync::OnceLock;

use chrono::Utc;
use proptest::prelude::*;
use sqlx::{PgPool, Row as _};
use tally_collector::{
    accounting::{Origin, Reading},
    auth::{self, Credentials},
    db,
    devdb::TempCluster,
    ingest::{BatchTime, Job, store},
    nodes,
    period::{self, Target},
    validate::{Heartbeat, Interface},
};
use tally_proto::v1::Outcome;

/// One counter set: where it starts and its successive readings.
#[derive(Debug, Clone)]
struct EpochPlan {
    new_boot: bool,
    starts_at_zero: bool,
    /// For a baseline source: the raw values before the first reading.
    baseline: (i64, i64),
    /// Increments of (rx, tx) from one reading to the next.
    steps: Vec<(i64, i64)>,
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

#[derive(Debug, Clone)]
enum Op {
    Send { epoch: usize, reading: usize },
    Reset,
}

fn epoch_plan() -> impl Strategy<Value = EpochPlan> {
    (
        any::<bool>(),
        prop::bool::weighted(0.8),
        (0i64..1 << 40, 0i64..1 << 40),
        prop::collection::vec((0i64..1_000_000, 0i64..1_000_000), 1..8),
    )
        .prop_map(|(new_boot, starts_at_zero, baseline, steps)| EpochPlan {
            new_boot,
            starts_at_zero,
            baseline,
            steps,
        })
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

fn history() -> impl Strategy<Value = (Vec<(EpochPlan, Delivery)>, Vec<usize>, Vec<usize>)> {
    (
        prop::collection::vec((epoch_plan(), delivery()), 1..5),
        // Batch sizes, used in turn.
        prop::collection::vec(1usize..6, 1..6),
        // Positions (mod the op count) where a period reset happens.
        prop::collection::vec(0usize..64, 0..3),
    )
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
    for (e, (plan, delivery)) in epochs.iter().enumerate() {
        let n = plan.steps.len();
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
            .map(|reading| Op::Send { epoch: e, reading })
            .collect();
        if let (Some(late), true) = (delivery.late, e > 0) {
            let earlier = late % e;
            let reading = late % epochs[earlier].0.steps.len();
            sends.insert(
                1.min(sends.len()),
                Op::Send {
                    epoch: earlier,
                    reading,
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

fn heartbeat(epochs: &[(EpochPlan, Delivery)], epoch: usize, reading: usize) -> Heartbeat {
    let boot = epochs[..=epoch].iter().filter(|(p, _)| p.new_boot).count();
    let plan = &epochs[epoch].0;
    let (rx, tx) = raw(plan, reading);
    // Two interfaces whose sums are (rx, tx).
    let interfaces = vec![
        interface("eth0", rx / 3, tx / 2),
        interface("eth1", rx - rx / 3, tx - tx / 2),
    ];
    Heartbeat {
        reading: Reading {
            origin: Origin {
                boot_id: format!("boot-{boot}"),
                epoch: format!("epoch-{epoch}"),
                created_unix_ns: 1_000 + epoch as i64,
            },
            starts_at_zero: plan.starts_at_zero,
            sequence: 10 + reading as i64,
            rx,
            tx,
        },
        load: [0.5, 0.25, 0.125],
        hostname: "host".into(),
        kernel: "6.1".into(),
        agent_version: "test".into(),
        source: "ebpf".into(),
        interfaces,
        agent_time_unix_ns: 2_000,
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
    batch_sizes: &[usize],
    resets: &[usize],
) -> Result<(), TestCaseError> {
    let added = nodes::add(pool, &format!("n-{}", cuid::cuid1()))
        .await
        .expect("node add");
    let credentials: Credentials =
        auth::from_bearer(Some(&format!("Bearer {}", added.token))).expect("token");
    let (ops, truth) = schedule(epochs);
    let mut ops_with_resets: Vec<Op> = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        if resets.contains(&i) {
            ops_with_resets.push(Op::Reset);
        }
        ops_with_resets.push(op);
    }
    let mut last = stored(pool, &added.id).await;
    let mut total_at_reset = (0i64, 0i64);
    let mut sizes = batch_sizes.iter().cycle();
    let mut pending: Vec<Job> = Vec::new();
    let mut ops = ops_with_resets.into_iter().peekable();
    while ops.peek().is_some() {
        let size = *sizes.next().unwrap_or(&1);
        while pending.len() < size {
            match ops.peek() {
                Some(Op::Send { epoch, reading }) => {
                    pending.push(Job {
                        credentials: credentials.clone(),
                        heartbeat: heartbeat(epochs, *epoch, *reading),
                    });
                    ops.next();
                }
                Some(Op::Reset) => break,
                None => break,
            }
        }
        if !pending.is_empty() {
            let mut conn = pool.acquire().await.expect("connection");
            let time = BatchTime::new(Utc::now().naive_utc(), None);
            let results = store::apply(&mut conn, &pending, time)
                .await
                .expect("batch commits");
            for result in &results {
                let applied = result.as_ref().expect("no heartbeat is refused");
                prop_assert!(matches!(
                    applied.outcome,
                    Outcome::Applied | Outcome::Duplicate | Outcome::Stale
                ));
            }
            pending.clear();
            let now = stored(pool, &added.id).await;
            prop_assert!(now.total.0 >= last.total.0 && now.total.1 >= last.total.1);
            last = now;
        }
        if matches!(ops.peek(), Some(Op::Reset)) {
            ops.next();
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
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn stored_totals_equal_the_ground_truth((epochs, batches, resets) in history()) {
        let Some(db) = db() else { return Ok(()) };
        db.runtime.block_on(check_history(&db.pool, &epochs, &batches, &resets))?;
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
}
