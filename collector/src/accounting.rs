//! The counting rules (README.md, "The counting rules, in the collector"),
//! as a pure function: given what the collector stored for a node and one
//! heartbeat's summed raw counters, what happens. No I/O here;
//! `ingest::plan` builds on the result
//! inside the node's row lock.
//!
//! Which counter set is current is decided without the node's wall clock
//! (`tally.v1`, the rule at the top of `heartbeat.proto`): by the sets and
//! boots the collector followed before ([`Followed`]), by the generation the
//! agent keeps in its state directory, by the boot clock (`sequence`) within
//! one boot, and otherwise a boot never followed is a new one.

pub use tally_proto::v1::StaleReason;

/// Where a node's raw counters stand, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// The counter set followed; `None` until the node's first heartbeat is
    /// applied.
    pub set: Option<CounterSet>,
    /// The generation the followed set was first applied with (0: unknown).
    pub generation: i64,
    /// The last sequence applied within `set`.
    pub sequence: i64,
    /// The last raw sums applied within `set` (download = rx, upload = tx).
    pub rx: i64,
    pub tx: i64,
}

/// What names a counter set: the boot it counts in and its epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterSet {
    pub boot_id: String,
    pub epoch: String,
}

/// One heartbeat, reduced to what the rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub set: CounterSet,
    /// The agent's generation for the counter set (0: not given).
    pub generation: i64,
    /// `true`: the counters started at zero with the epoch, so a first
    /// reading counts in full; `false`: a first reading is a baseline.
    pub starts_at_zero: bool,
    pub sequence: i64,
    pub rx: i64,
    pub tx: i64,
}

/// The counter sets the collector followed for a node (the followed one
/// among them), as far as they are kept (`counter_sets`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Followed {
    sets: Vec<CounterSet>,
}

impl Followed {
    pub fn new(sets: Vec<CounterSet>) -> Self {
        Self { sets }
    }

    /// Whether `set` was followed.
    pub fn contains(&self, set: &CounterSet) -> bool {
        self.sets.contains(set)
    }

    /// Whether a set of the boot `boot_id` was followed.
    pub fn has_boot(&self, boot_id: &str) -> bool {
        self.sets.iter().any(|o| o.boot_id == boot_id)
    }

    /// Records that `set` is followed from now on.
    pub fn add(&mut self, set: CounterSet) {
        if !self.contains(&set) {
            self.sets.push(set);
        }
    }
}

/// What to do with a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Add the deltas and move the position to the reading.
    Apply {
        download: i64,
        upload: i64,
        /// The reading starts a new epoch (or is the node's first).
        new_set: bool,
    },
    /// The same sequence was applied before.
    Duplicate,
    /// Older than what was applied; the reason says which rule decided.
    Stale(StaleReason),
    /// A raw value went backwards within one epoch: refused.
    Backwards {
        what: &'static str,
        last: i64,
        now: i64,
    },
}

/// Decides what `reading` does to a node at `position` that followed the
/// sets in `followed` before.
pub fn decide(position: &Position, followed: &Followed, reading: &Reading) -> Decision {
    let Some(current) = &position.set else {
        return first_of_set(reading);
    };
    if *current != reading.set {
        return match order(position, current, followed, reading) {
            Ok(()) => first_of_set(reading),
            Err(reason) => Decision::Stale(reason),
        };
    }
    if reading.sequence == position.sequence {
        return Decision::Duplicate;
    }
    if reading.sequence < position.sequence {
        return Decision::Stale(StaleReason::EarlierReading);
    }
    if reading.rx < position.rx {
        return Decision::Backwards {
            what: "rx bytes",
            last: position.rx,
            now: reading.rx,
        };
    }
    if reading.tx < position.tx {
        return Decision::Backwards {
            what: "tx bytes",
            last: position.tx,
            now: reading.tx,
        };
    }
    Decision::Apply {
        download: reading.rx - position.rx,
        upload: reading.tx - position.tx,
        new_set: false,
    }
}

/// Whether the reading's counter set, another than the followed `current`,
/// came after it (`Ok`), or why it did not. The rules of `tally.v1`, in
/// their order; none looks at a wall clock.
fn order(
    position: &Position,
    current: &CounterSet,
    followed: &Followed,
    reading: &Reading,
) -> Result<(), StaleReason> {
    let set = &reading.set;
    let same_boot = set.boot_id == current.boot_id;
    // 1. A set is followed once; a boot that was left is over.
    if followed.contains(set) || (!same_boot && followed.has_boot(&set.boot_id)) {
        return Err(StaleReason::Superseded);
    }
    // 2. Generations, when both sides have one and they differ.
    if reading.generation > 0
        && position.generation > 0
        && reading.generation != position.generation
    {
        return if reading.generation > position.generation {
            Ok(())
        } else {
            Err(StaleReason::OlderGeneration)
        };
    }
    // 3. Within a boot, the boot clock orders the readings of all its sets.
    if same_boot {
        return if reading.sequence > position.sequence {
            Ok(())
        } else {
            Err(StaleReason::EarlierInBoot)
        };
    }
    // 4. A boot never followed is a new boot.
    Ok(())
}

fn first_of_set(reading: &Reading) -> Decision {
    let (download, upload) = if reading.starts_at_zero {
        (reading.rx, reading.tx)
    } else {
        (0, 0)
    };
    Decision::Apply {
        download,
        upload,
        new_set: true,
    }
}

impl Position {
    /// The position after `reading` was applied (a new set takes the
    /// reading's generation; the followed one keeps its own).
    pub fn advance(&mut self, reading: &Reading) {
        if self.set.as_ref() != Some(&reading.set) {
            self.set = Some(reading.set.clone());
            self.generation = reading.generation;
        }
        self.sequence = reading.sequence;
        self.rx = reading.rx;
        self.tx = reading.tx;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(boot: &str, epoch: &str) -> CounterSet {
        CounterSet {
            boot_id: boot.into(),
            epoch: epoch.into(),
        }
    }

    fn set_in_boot_1(epoch: &str) -> CounterSet {
        set_of("boot-1", epoch)
    }

    fn reading(epoch: &str, sequence: i64, rx: i64, tx: i64) -> Reading {
        Reading {
            set: set_in_boot_1(epoch),
            generation: 0,
            starts_at_zero: true,
            sequence,
            rx,
            tx,
        }
    }

    fn at(epoch: &str, sequence: i64, rx: i64, tx: i64) -> Position {
        Position {
            set: Some(set_in_boot_1(epoch)),
            generation: 0,
            sequence,
            rx,
            tx,
        }
    }

    /// `decide` for a node that followed only its current set.
    fn decide_now(position: &Position, reading: &Reading) -> Decision {
        let followed = Followed::new(position.set.iter().cloned().collect());
        decide(position, &followed, reading)
    }

    fn applied(download: i64, upload: i64, new_set: bool) -> Decision {
        Decision::Apply {
            download,
            upload,
            new_set,
        }
    }

    #[test]
    fn first_heartbeat_counts_in_full() {
        let d = decide_now(&Position::default(), &reading("e", 5, 100, 40));
        assert_eq!(d, applied(100, 40, true));
    }

    #[test]
    fn first_reading_of_a_baseline_source_counts_nothing() {
        let mut r = reading("procfs-b", 5, 100, 40);
        r.starts_at_zero = false;
        assert_eq!(decide_now(&Position::default(), &r), applied(0, 0, true));
        // A new boot with a baseline source: again only a baseline.
        r.set.boot_id = "boot-2".into();
        assert_eq!(decide_now(&at("e", 9, 1, 1), &r), applied(0, 0, true));
    }

    #[test]
    fn same_epoch_higher_sequence_adds_the_delta() {
        let d = decide_now(&at("e", 5, 100, 40), &reading("e", 6, 150, 41));
        assert_eq!(d, applied(50, 1, false));
    }

    #[test]
    fn same_or_lower_sequence_adds_nothing() {
        let p = at("e", 5, 100, 40);
        assert_eq!(
            decide_now(&p, &reading("e", 5, 100, 40)),
            Decision::Duplicate
        );
        // Even with other values: a sequence is applied once.
        assert_eq!(
            decide_now(&p, &reading("e", 5, 999, 999)),
            Decision::Duplicate
        );
        assert_eq!(
            decide_now(&p, &reading("e", 4, 90, 30)),
            Decision::Stale(StaleReason::EarlierReading)
        );
    }

    #[test]
    fn backwards_within_an_epoch_is_refused() {
        let p = at("e", 5, 100, 40);
        assert!(matches!(
            decide_now(&p, &reading("e", 6, 99, 40)),
            Decision::Backwards {
                what: "rx bytes",
                ..
            }
        ));
        assert!(matches!(
            decide_now(&p, &reading("e", 6, 100, 39)),
            Decision::Backwards {
                what: "tx bytes",
                ..
            }
        ));
    }

    #[test]
    fn within_a_boot_the_boot_clock_orders_the_epochs() {
        let p = at("e2", 500, 100, 40);
        // Read after the followed set's last reading, smaller raw values:
        // a later set, counted from zero in full.
        assert_eq!(
            decide_now(&p, &reading("e3", 501, 7, 3)),
            applied(7, 3, true)
        );
        // Read before it: an earlier set, however large.
        assert_eq!(
            decide_now(&p, &reading("e1", 499, 1000, 1000)),
            Decision::Stale(StaleReason::EarlierInBoot)
        );
        assert_eq!(
            decide_now(&p, &reading("e1", 500, 1000, 1000)),
            Decision::Stale(StaleReason::EarlierInBoot)
        );
    }

    #[test]
    fn a_boot_never_followed_is_a_new_boot() {
        let p = at("e", 5_000, 100, 40);
        // The new boot's clock starts again: a small sequence.
        let mut r = reading("f", 3, 5, 5);
        r.set.boot_id = "boot-2".into();
        assert_eq!(decide_now(&p, &r), applied(5, 5, true));
    }

    #[test]
    fn a_set_or_boot_followed_before_never_counts_again() {
        let mut followed = Followed::new(vec![set_in_boot_1("e1"), set_of("boot-0", "z")]);
        followed.add(set_in_boot_1("e2"));
        let p = at("e2", 500, 100, 40);
        // An earlier set of this boot, even with a later reading and a
        // higher generation.
        let mut r = reading("e1", 900, 1, 1);
        r.generation = 99;
        assert_eq!(
            decide(&p, &followed, &r),
            Decision::Stale(StaleReason::Superseded)
        );
        // Any set of a boot that was left, even one never followed itself.
        let mut r = reading("y", 1, 1, 1);
        r.set.boot_id = "boot-0".into();
        r.generation = 99;
        assert_eq!(
            decide(&p, &followed, &r),
            Decision::Stale(StaleReason::Superseded)
        );
    }

    #[test]
    fn generations_order_sets_when_both_sides_have_one() {
        let mut p = at("e", 500, 100, 40);
        p.generation = 7;
        let mut r = reading("f", 3, 5, 5);
        r.set.boot_id = "boot-2".into();
        // A new boot with a lower or equal generation: older, or an agent
        // that lost its state.
        for generation in [1, 6] {
            r.generation = generation;
            assert_eq!(
                decide_now(&p, &r),
                Decision::Stale(StaleReason::OlderGeneration),
                "{generation}"
            );
        }
        // Equal: no evidence either way, a boot never followed is new.
        r.generation = 7;
        assert_eq!(decide_now(&p, &r), applied(5, 5, true));
        r.generation = 8;
        assert_eq!(decide_now(&p, &r), applied(5, 5, true));
        // Within a boot too, before the boot clock: a set started after the
        // state directory was lost proves itself by a raised generation.
        let mut same_boot = reading("g", 900, 5, 5);
        same_boot.generation = 1;
        assert_eq!(
            decide_now(&p, &same_boot),
            Decision::Stale(StaleReason::OlderGeneration)
        );
        same_boot.generation = 8;
        assert_eq!(decide_now(&p, &same_boot), applied(5, 5, true));
        // No generation on either side: the other rules decide.
        p.generation = 0;
        r.generation = 3;
        assert_eq!(decide_now(&p, &r), applied(5, 5, true));
    }

    #[test]
    fn advance_moves_everything_and_keeps_the_followed_generation() {
        let mut p = Position::default();
        let mut r = reading("e", 5, 100, 40);
        r.generation = 3;
        p.advance(&r);
        assert_eq!(
            p,
            Position {
                generation: 3,
                ..at("e", 5, 100, 40)
            }
        );
        // A later reading of the same set with another generation (its
        // agent lost its state): the set keeps the one it was followed with.
        r.generation = 1;
        r.sequence = 6;
        p.advance(&r);
        assert_eq!(p.generation, 3);
        assert_eq!(p.sequence, 6);
    }
}
