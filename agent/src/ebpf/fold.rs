//! Folding the counters of interfaces long gone into the retired entry
//! (ifindex 0), so that the maps do not fill up on hosts where interfaces
//! come and go (containers), while every total stays exactly the same.
//!
//! A fold is four writes: record the intent (with the retired counters as
//! they were), add the gone interface's counters to the retired entry, delete
//! the interface's entries, clear the intent. A crash between any two is
//! repaired by [`recover`] at the next start: since only folds change the
//! retired entry, comparing it with the recorded "before" tells whether the
//! addition happened, so it happens exactly once.

use tally_common::{IfCounters, RETIRED_IFINDEX};

/// The few operations a fold needs (implemented by the pinned maps, and by an
/// in-memory store in the tests).
pub trait FoldStore {
    type Error;
    /// An entry's counters summed over the CPUs, if it exists.
    fn counters(&self, ifindex: u32) -> Result<Option<IfCounters>, Self::Error>;
    /// Overwrites the retired entry.
    fn set_retired(&mut self, total: &IfCounters) -> Result<(), Self::Error>;
    /// Deletes an interface's counters and record.
    fn forget(&mut self, ifindex: u32) -> Result<(), Self::Error>;
    /// The fold under way: `(ifindex or 0, retired counters before it)`.
    fn fold_state(&self) -> Result<(u32, IfCounters), Self::Error>;
    fn set_fold_state(&mut self, ifindex: u32, before: &IfCounters) -> Result<(), Self::Error>;
}

fn plus(a: &IfCounters, b: &IfCounters) -> IfCounters {
    let mut sum = *a;
    sum.accumulate(b);
    sum
}

/// Moves the counts of `ifindex` into the retired entry.
pub fn fold<S: FoldStore>(store: &mut S, ifindex: u32) -> Result<(), S::Error> {
    if ifindex == RETIRED_IFINDEX {
        return Ok(());
    }
    let Some(counts) = store.counters(ifindex)? else {
        return Ok(());
    };
    let before = store.counters(RETIRED_IFINDEX)?.unwrap_or_default();
    store.set_fold_state(ifindex, &before)?;
    store.set_retired(&plus(&before, &counts))?;
    store.forget(ifindex)?;
    store.set_fold_state(0, &IfCounters::default())
}

/// Finishes a fold a crash interrupted; returns the ifindex it finished.
pub fn recover<S: FoldStore>(store: &mut S) -> Result<Option<u32>, S::Error> {
    let (ifindex, before) = store.fold_state()?;
    if ifindex == 0 {
        return Ok(None);
    }
    if let Some(counts) = store.counters(ifindex)? {
        let retired = store.counters(RETIRED_IFINDEX)?.unwrap_or_default();
        if retired == before {
            store.set_retired(&plus(&before, &counts))?;
        }
        store.forget(ifindex)?;
    }
    store.set_fold_state(0, &IfCounters::default())?;
    Ok(Some(ifindex))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tally_common::FamilyCounters;

    use super::*;

    /// An in-memory store that "crashes" (refuses every write) after a given
    /// number of writes.
    #[derive(Clone, Default)]
    struct Store {
        counters: BTreeMap<u32, IfCounters>,
        state: (u32, IfCounters),
        writes_left: Option<usize>,
    }

    #[derive(Debug, PartialEq)]
    struct Crashed;

    impl Store {
        fn write(&mut self) -> Result<(), Crashed> {
            match &mut self.writes_left {
                Some(0) => Err(Crashed),
                Some(n) => {
                    *n -= 1;
                    Ok(())
                }
                None => Ok(()),
            }
        }

        fn total(&self) -> IfCounters {
            self.counters
                .values()
                .fold(IfCounters::default(), |a, c| plus(&a, c))
        }
    }

    impl FoldStore for Store {
        type Error = Crashed;
        fn counters(&self, ifindex: u32) -> Result<Option<IfCounters>, Crashed> {
            Ok(self.counters.get(&ifindex).copied())
        }
        fn set_retired(&mut self, total: &IfCounters) -> Result<(), Crashed> {
            self.write()?;
            self.counters.insert(RETIRED_IFINDEX, *total);
            Ok(())
        }
        fn forget(&mut self, ifindex: u32) -> Result<(), Crashed> {
            self.write()?;
            self.counters.remove(&ifindex);
            Ok(())
        }
        fn fold_state(&self) -> Result<(u32, IfCounters), Crashed> {
            Ok(self.state)
        }
        fn set_fold_state(&mut self, ifindex: u32, before: &IfCounters) -> Result<(), Crashed> {
            self.write()?;
            self.state = (ifindex, *before);
            Ok(())
        }
    }

    /// Counters whose IPv4 and IPv6 parts differ from each other and from
    /// the totals (which also hold some rest), so that a fold mixing them up
    /// shows.
    fn c(n: u64) -> IfCounters {
        IfCounters {
            rx_bytes: 10 * n,
            rx_packets: n / 10 + 5,
            tx_bytes: 20 * n,
            tx_packets: n / 5 + 5,
            ipv4: FamilyCounters {
                rx_bytes: 6 * n,
                rx_packets: n / 20 + 1,
                tx_bytes: 12 * n,
                tx_packets: n / 10 + 1,
            },
            ipv6: FamilyCounters {
                rx_bytes: 3 * n,
                rx_packets: n / 40 + 2,
                tx_bytes: 5 * n,
                tx_packets: n / 25 + 3,
            },
        }
    }

    fn store() -> Store {
        let mut s = Store::default();
        s.counters.insert(2, c(1000));
        s.counters.insert(7, c(555));
        s.counters.insert(9, c(0));
        s
    }

    #[test]
    fn a_fold_keeps_the_total_and_removes_the_entry() {
        let mut s = store();
        let total = s.total();
        fold(&mut s, 7).expect("fold");
        assert_eq!(s.total(), total);
        assert!(!s.counters.contains_key(&7));
        assert_eq!(s.counters[&RETIRED_IFINDEX], c(555));
        fold(&mut s, 9).expect("fold zero counters");
        fold(&mut s, 2).expect("fold");
        assert_eq!(s.total(), total);
        assert_eq!(s.counters.len(), 1);
        assert_eq!(s.state.0, 0);
    }

    #[test]
    fn a_fold_carries_each_family_into_the_retired_entry() {
        let mut s = store();
        s.counters.insert(RETIRED_IFINDEX, c(77));
        fold(&mut s, 7).expect("fold");
        fold(&mut s, 2).expect("fold");
        let retired = s.counters[&RETIRED_IFINDEX];
        for (what, got, want) in [
            ("ipv4", retired.ipv4, c(77).ipv4),
            ("ipv6", retired.ipv6, c(77).ipv6),
        ] {
            let mut expected = want;
            for n in [555, 1000] {
                let part = if what == "ipv4" { c(n).ipv4 } else { c(n).ipv6 };
                expected.accumulate(&part);
            }
            assert_eq!(got, expected, "{what} of the retired entry");
        }
        assert_eq!(retired.ipv4.rx_bytes, 6 * (77 + 555 + 1000));
        assert_eq!(
            retired.ipv6.tx_packets,
            (77 / 25 + 3) + (555 / 25 + 3) + (1000 / 25 + 3)
        );
        assert_eq!(retired.rx_bytes, 10 * (77 + 555 + 1000));
    }

    #[test]
    fn folding_the_retired_entry_or_an_unknown_one_does_nothing() {
        let mut s = store();
        fold(&mut s, 7).expect("fold");
        let before = s.counters.clone();
        fold(&mut s, RETIRED_IFINDEX).expect("noop");
        fold(&mut s, 1234).expect("noop");
        assert_eq!(s.counters, before);
    }

    #[test]
    fn a_crash_at_any_point_is_repaired_exactly_once() {
        for prior_fold in [false, true] {
            for crash_after in 0..4 {
                let mut s = store();
                if prior_fold {
                    fold(&mut s, 9).expect("earlier fold");
                    s.counters.insert(RETIRED_IFINDEX, c(77));
                }
                let total = s.total();
                s.writes_left = Some(crash_after);
                assert_eq!(
                    fold(&mut s, 7),
                    Err(Crashed),
                    "crash after {crash_after} writes"
                );
                // The restarted agent: writes work again.
                s.writes_left = None;
                let recovered = recover(&mut s).expect("recover");
                assert_eq!(
                    recovered.is_some(),
                    crash_after > 0,
                    "crash after {crash_after}"
                );
                assert_eq!(
                    s.total(),
                    total,
                    "crash after {crash_after} writes (prior fold: {prior_fold})"
                );
                assert!(!s.counters.contains_key(&7) || crash_after == 0);
                assert_eq!(s.state.0, 0);
                // A second recovery (a crash during recovery) changes nothing.
                assert_eq!(recover(&mut s).expect("again"), None);
                assert_eq!(s.total(), total);
            }
        }
    }

    #[test]
    fn a_crash_during_recovery_is_repaired_too() {
        for crash_after in 0..3 {
            let mut s = store();
            let total = s.total();
            s.writes_left = Some(2); // intent + retired written, entry not deleted
            assert_eq!(fold(&mut s, 7), Err(Crashed));
            s.writes_left = Some(crash_after);
            let _ = recover(&mut s);
            s.writes_left = None;
            recover(&mut s).expect("recover");
            assert_eq!(
                s.total(),
                total,
                "recovery crashed after {crash_after} writes"
            );
        }
    }
}
