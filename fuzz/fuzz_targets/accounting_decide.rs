//! The accounting decision (`tally_collector::accounting::decide`) on
//! arbitrary histories: up to 16 counter sets in up to 4 boots, with
//! arbitrary generations, boot clocks and baselines, whose readings arrive
//! in any order, replayed, late or never. Each set's own readings are what
//! a kernel gives (its counters never go down while its boot clock runs
//! on); everything else is up to the fuzzer.
//!
//! The store is simulated as `ingest::store` applies decisions (advance the
//! position, follow the set). Checked after every reading: nothing panics;
//! nothing counted is negative (totals never go backwards); a reading is
//! counted at most once and a counter set only while it is followed, never
//! again once left, so what a set counted is exactly its last applied
//! counters less its base (zero, or its first reading for a baseline
//! source); an honest history is never refused as going backwards.

#![no_main]

use std::collections::{HashMap, HashSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tally_collector::accounting::{CounterSet, Decision, Followed, Position, Reading, decide};

/// One counter set as the agent sees it.
#[derive(Debug, Arbitrary)]
struct SetPlan {
    boot: u8,
    generation: u8,
    starts_at_zero: bool,
    first_sequence: u64,
    baseline: (u64, u64),
    steps: Vec<Step>,
}

/// From one reading of a set to the next.
#[derive(Debug, Arbitrary)]
struct Step {
    sequence_gap: u32,
    rx: u32,
    tx: u32,
}

/// The sets, and which reading of which set arrives next.
#[derive(Debug, Arbitrary)]
struct History {
    sets: Vec<SetPlan>,
    deliveries: Vec<(u8, u8)>,
}

const MAX_SETS: usize = 16;
const MAX_READINGS: usize = 16;
const MAX_DELIVERIES: usize = 256;

/// A counter of the contract: 0 to 2^63 - 1.
fn counter(value: u64) -> i64 {
    i64::try_from(value >> 1).unwrap_or(i64::MAX)
}

/// The readings of each planned set, in the order they were taken.
fn readings(plans: &[SetPlan]) -> Vec<Vec<Reading>> {
    plans
        .iter()
        .take(MAX_SETS)
        .enumerate()
        .map(|(index, plan)| {
            let set = CounterSet {
                boot_id: format!("boot-{}", plan.boot % 4),
                epoch: format!("epoch-{index}"),
            };
            let (mut rx, mut tx) = if plan.starts_at_zero {
                (0, 0)
            } else {
                (counter(plan.baseline.0), counter(plan.baseline.1))
            };
            let mut sequence = counter(plan.first_sequence);
            let first = Step {
                sequence_gap: 0,
                rx: 0,
                tx: 0,
            };
            std::iter::once(&first)
                .chain(plan.steps.iter().take(MAX_READINGS - 1))
                .map(|step| {
                    sequence = sequence.saturating_add(i64::from(step.sequence_gap));
                    rx = rx.saturating_add(i64::from(step.rx));
                    tx = tx.saturating_add(i64::from(step.tx));
                    Reading {
                        set: set.clone(),
                        generation: i64::from(plan.generation % 5),
                        starts_at_zero: plan.starts_at_zero,
                        sequence,
                        rx,
                        tx,
                    }
                })
                .collect()
        })
        .collect()
}

fuzz_target!(|history: History| {
    let sets = readings(&history.sets);
    if sets.is_empty() {
        return;
    }
    let mut position = Position::default();
    // The collector keeps the newest 64 sets a node followed; a history
    // here has at most 16.
    let mut followed = Followed::default();
    let mut current: Option<usize> = None;
    let mut left: HashSet<usize> = HashSet::new();
    let mut applied: HashSet<(usize, usize)> = HashSet::new();
    let mut base: HashMap<usize, (i64, i64)> = HashMap::new();
    let mut counted: HashMap<usize, (i128, i128)> = HashMap::new();
    for &(s, r) in history.deliveries.iter().take(MAX_DELIVERIES) {
        let index = usize::from(s) % sets.len();
        let taken = usize::from(r) % sets[index].len();
        let reading = &sets[index][taken];
        let decision = decide(&position, &followed, reading);
        match decision {
            Decision::Apply {
                download,
                upload,
                new_set,
            } => {
                assert!(
                    download >= 0 && upload >= 0,
                    "a negative delta: {decision:?}"
                );
                assert!(
                    applied.insert((index, taken)),
                    "reading {taken} of set {index} counted twice"
                );
                assert!(
                    !left.contains(&index),
                    "set {index} counts again after it was left"
                );
                if new_set {
                    assert_ne!(position.set.as_ref(), Some(&reading.set));
                    assert!(!followed.contains(&reading.set));
                    assert!(!base.contains_key(&index), "set {index} started twice");
                    let from = if reading.starts_at_zero {
                        (0, 0)
                    } else {
                        (reading.rx, reading.tx)
                    };
                    assert_eq!(
                        (download, upload),
                        (reading.rx - from.0, reading.tx - from.1)
                    );
                    base.insert(index, from);
                    if let Some(previous) = current.replace(index) {
                        left.insert(previous);
                    }
                } else {
                    assert_eq!(current, Some(index));
                    assert!(reading.sequence > position.sequence);
                    assert_eq!(
                        (download, upload),
                        (reading.rx - position.rx, reading.tx - position.tx)
                    );
                }
                let sum = counted.entry(index).or_default();
                sum.0 += i128::from(download);
                sum.1 += i128::from(upload);
                let from = base[&index];
                assert_eq!(
                    *sum,
                    (
                        i128::from(reading.rx - from.0),
                        i128::from(reading.tx - from.1)
                    ),
                    "set {index} counted more or less than its counters hold"
                );
                position.advance(reading);
                followed.add(reading.set.clone());
            }
            Decision::Duplicate => {
                assert_eq!(current, Some(index));
                assert_eq!(reading.sequence, position.sequence);
            }
            Decision::Stale(_) => {
                if current == Some(index) {
                    assert!(reading.sequence < position.sequence);
                }
            }
            Decision::Backwards { .. } => {
                panic!(
                    "a set whose counters never go down refused as going backwards: {decision:?}"
                )
            }
        }
    }
});
