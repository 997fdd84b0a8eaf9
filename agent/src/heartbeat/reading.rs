//! A reading: a snapshot of the counters stamped, the moment it was taken,
//! with its sequence number and the wall clock.
//!
//! The sequence is CLOCK_BOOTTIME in nanoseconds. That clock starts at boot
//! and never goes back within it (not even across suspend), so it grows
//! across agent restarts too; both kinds of epoch (the pinned eBPF counters,
//! the procfs counters of one boot) live within one boot. Within the process
//! it is made strictly increasing, so sequence order is reading order.

use crate::{
    clock::{boottime_ns, unix_ns},
    source::Snapshot,
};

/// The highest sequence the contract allows (2^63 - 1).
pub const MAX_SEQUENCE: u64 = i64::MAX as u64;

/// One snapshot with the sequence and time of its reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub snapshot: Snapshot,
    pub sequence: u64,
    /// The wall clock at the reading, nanoseconds since the Unix epoch.
    pub taken_unix_ns: u64,
}

/// Hands out strictly increasing sequence numbers.
#[derive(Debug, Default)]
pub struct Sequencer {
    last: Option<u64>,
}

impl Sequencer {
    /// Stamps a snapshot that was just read.
    pub fn stamp(&mut self, snapshot: Snapshot) -> Reading {
        let sequence = self.next(boottime_ns());
        Reading {
            snapshot,
            sequence,
            taken_unix_ns: unix_ns(),
        }
    }

    /// `max(last + 1, now)`, at least 1 and at most [`MAX_SEQUENCE`].
    pub fn next(&mut self, now_ns: u64) -> u64 {
        let floor = self.last.map_or(1, |last| last.saturating_add(1));
        let sequence = now_ns.max(floor).min(MAX_SEQUENCE);
        self.last = Some(sequence);
        sequence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_follow_the_clock_and_never_repeat() {
        let mut seq = Sequencer::default();
        assert_eq!(seq.next(1_000), 1_000);
        assert_eq!(seq.next(5_000), 5_000);
        // The same or an earlier clock value still moves on.
        assert_eq!(seq.next(5_000), 5_001);
        assert_eq!(seq.next(10), 5_002);
        assert_eq!(seq.next(9_000), 9_000);
        // Zero means "none" to the collector; a sequence is never zero.
        assert_eq!(Sequencer::default().next(0), 1);
    }

    #[test]
    fn sequences_stop_at_the_contract_maximum() {
        let mut seq = Sequencer::default();
        assert_eq!(seq.next(u64::MAX), MAX_SEQUENCE);
        assert_eq!(seq.next(u64::MAX), MAX_SEQUENCE);
    }

    #[test]
    fn the_boot_clock_grows_and_readings_are_ordered() {
        let a = boottime_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = boottime_ns();
        assert!(a > 0 && b > a, "{a} {b}");

        let mut source = crate::source::ProcfsSource::new(crate::filter::IfaceFilter::default());
        let mut seq = Sequencer::default();
        use crate::source::CounterSource as _;
        let first = seq.stamp(source.snapshot().expect("procfs"));
        let second = seq.stamp(source.snapshot().expect("procfs"));
        assert!(second.sequence > first.sequence);
        assert!(first.taken_unix_ns > 1_600_000_000_000_000_000);
        // The sequence is time since boot, far below the Unix time.
        assert!(first.sequence < first.taken_unix_ns);
    }
}
