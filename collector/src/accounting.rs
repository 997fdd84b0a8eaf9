//! The counting rules (DESIGN.md, "Counting rules"), as a pure function:
//! given what the collector stored for a node and one heartbeat's summed raw
//! counters, what happens. No I/O here; `ingest::store` applies the result
//! inside the node's row lock.

/// Where a node's raw counters stand, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// `None` until the node's first heartbeat is applied.
    pub origin: Option<Origin>,
    /// The last sequence applied within `origin`.
    pub sequence: i64,
    /// The last raw sums applied within `origin` (download = rx, upload = tx).
    pub rx: i64,
    pub tx: i64,
}

/// What identifies where a set of raw counters started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub boot_id: String,
    pub epoch: String,
    /// When the epoch began (node clock, Unix ns): orders epochs.
    pub created_unix_ns: i64,
}

/// One heartbeat, reduced to what the rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub origin: Origin,
    /// `true`: the counters started at zero with the epoch, so a first
    /// reading counts in full; `false`: a first reading is a baseline.
    pub starts_at_zero: bool,
    pub sequence: i64,
    pub rx: i64,
    pub tx: i64,
}

/// What to do with a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Add the deltas and move the position to the reading.
    Apply {
        download: i64,
        upload: i64,
        /// The reading starts a new epoch (or is the node's first).
        new_origin: bool,
    },
    /// The same sequence was applied before.
    Duplicate,
    /// Older than what was applied: a lower sequence, or an earlier epoch.
    Stale,
    /// A raw value went backwards within one epoch: refused.
    Backwards {
        what: &'static str,
        last: i64,
        now: i64,
    },
}

/// Decides what `reading` does to a node at `position`.
pub fn decide(position: &Position, reading: &Reading) -> Decision {
    let Some(current) = &position.origin else {
        return first_of_origin(reading);
    };
    if current.boot_id != reading.origin.boot_id || current.epoch != reading.origin.epoch {
        // A different counter set. Only a later one replaces the current
        // one; a late heartbeat of an earlier one adds nothing. Equal
        // creation times (two counter sets made in the same nanosecond)
        // are ordered by their ids, so that every collector decides alike.
        let later = (reading.origin.created_unix_ns, &reading.origin.epoch)
            > (current.created_unix_ns, &current.epoch);
        return if later {
            first_of_origin(reading)
        } else {
            Decision::Stale
        };
    }
    if reading.sequence == position.sequence {
        return Decision::Duplicate;
    }
    if reading.sequence < position.sequence {
        return Decision::Stale;
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
        new_origin: false,
    }
}

fn first_of_origin(reading: &Reading) -> Decision {
    let (download, upload) = if reading.starts_at_zero {
        (reading.rx, reading.tx)
    } else {
        (0, 0)
    };
    Decision::Apply {
        download,
        upload,
        new_origin: true,
    }
}

impl Position {
    /// The position after `reading` was applied.
    pub fn advance(&mut self, reading: &Reading) {
        self.origin = Some(reading.origin.clone());
        self.sequence = reading.sequence;
        self.rx = reading.rx;
        self.tx = reading.tx;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(epoch: &str, created: i64) -> Origin {
        Origin {
            boot_id: "boot-1".into(),
            epoch: epoch.into(),
            created_unix_ns: created,
        }
    }

    fn reading(epoch: &str, created: i64, sequence: i64, rx: i64, tx: i64) -> Reading {
        Reading {
            origin: origin(epoch, created),
            starts_at_zero: true,
            sequence,
            rx,
            tx,
        }
    }

    fn at(epoch: &str, created: i64, sequence: i64, rx: i64, tx: i64) -> Position {
        Position {
            origin: Some(origin(epoch, created)),
            sequence,
            rx,
            tx,
        }
    }

    #[test]
    fn first_heartbeat_counts_in_full() {
        let d = decide(&Position::default(), &reading("e", 10, 5, 100, 40));
        assert_eq!(
            d,
            Decision::Apply {
                download: 100,
                upload: 40,
                new_origin: true
            }
        );
    }

    #[test]
    fn first_reading_of_a_baseline_source_counts_nothing() {
        let mut r = reading("procfs-b", 10, 5, 100, 40);
        r.starts_at_zero = false;
        assert_eq!(
            decide(&Position::default(), &r),
            Decision::Apply {
                download: 0,
                upload: 0,
                new_origin: true
            }
        );
        // A new boot with a baseline source: again only a baseline.
        assert_eq!(
            decide(&at("e", 5, 9, 1, 1), &r),
            Decision::Apply {
                download: 0,
                upload: 0,
                new_origin: true
            }
        );
    }

    #[test]
    fn same_epoch_higher_sequence_adds_the_delta() {
        let d = decide(&at("e", 10, 5, 100, 40), &reading("e", 10, 6, 150, 41));
        assert_eq!(
            d,
            Decision::Apply {
                download: 50,
                upload: 1,
                new_origin: false
            }
        );
    }

    #[test]
    fn same_or_lower_sequence_adds_nothing() {
        let p = at("e", 10, 5, 100, 40);
        assert_eq!(
            decide(&p, &reading("e", 10, 5, 100, 40)),
            Decision::Duplicate
        );
        // Even with other values: a sequence is applied once.
        assert_eq!(
            decide(&p, &reading("e", 10, 5, 999, 999)),
            Decision::Duplicate
        );
        assert_eq!(decide(&p, &reading("e", 10, 4, 90, 30)), Decision::Stale);
    }

    #[test]
    fn backwards_within_an_epoch_is_refused() {
        let p = at("e", 10, 5, 100, 40);
        assert!(matches!(
            decide(&p, &reading("e", 10, 6, 99, 40)),
            Decision::Backwards {
                what: "rx bytes",
                ..
            }
        ));
        assert!(matches!(
            decide(&p, &reading("e", 10, 6, 100, 39)),
            Decision::Backwards {
                what: "tx bytes",
                ..
            }
        ));
    }

    #[test]
    fn a_later_epoch_counts_from_zero_and_an_earlier_one_is_stale() {
        let p = at("e2", 20, 5, 100, 40);
        // Later epoch, smaller raw values and sequence: counts in full.
        assert_eq!(
            decide(&p, &reading("e3", 30, 1, 7, 3)),
            Decision::Apply {
                download: 7,
                upload: 3,
                new_origin: true
            }
        );
        // A late heartbeat of an earlier epoch, however large.
        assert_eq!(
            decide(&p, &reading("e1", 10, 99, 1000, 1000)),
            Decision::Stale
        );
    }

    #[test]
    fn a_new_boot_is_a_new_origin() {
        let p = at("e", 20, 5, 100, 40);
        let mut r = reading("e", 30, 1, 5, 5);
        r.origin.boot_id = "boot-2".into();
        assert_eq!(
            decide(&p, &r),
            Decision::Apply {
                download: 5,
                upload: 5,
                new_origin: true
            }
        );
        // The same epoch id on an earlier boot is stale.
        r.origin.created_unix_ns = 10;
        assert_eq!(decide(&p, &r), Decision::Stale);
    }

    #[test]
    fn equal_creation_times_are_ordered_by_epoch_id() {
        let p = at("b", 20, 5, 100, 40);
        assert_eq!(decide(&p, &reading("a", 20, 9, 1, 1)), Decision::Stale);
        assert!(matches!(
            decide(&p, &reading("c", 20, 1, 1, 1)),
            Decision::Apply {
                new_origin: true,
                ..
            }
        ));
    }

    #[test]
    fn advance_moves_everything() {
        let mut p = Position::default();
        let r = reading("e", 10, 5, 100, 40);
        p.advance(&r);
        assert_eq!(p, at("e", 10, 5, 100, 40));
    }
}
