//! Logging what hostile clients cause without letting them flood the log:
//! one line per source address at most every [`LOG_EVERY`], with the number
//! of events held back since the last. The memory is bounded: past
//! [`REMEMBERED`] addresses it is cleared (a line more, never unbounded
//! memory).

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// One address is logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Addresses remembered for the pacing.
pub const REMEMBERED: usize = 4096;

/// Per address: when it was last logged (if ever), and the events since.
#[derive(Debug)]
pub struct LogPace<A> {
    addresses: HashMap<A, (Option<Instant>, u64)>,
}

impl<A> Default for LogPace<A> {
    fn default() -> Self {
        Self {
            addresses: HashMap::new(),
        }
    }
}

impl<A: Hash + Eq> LogPace<A> {
    /// Counts one event of `address` at `now`; `Some(events)` (this one
    /// and those held back) when it is time to log them.
    pub fn event(&mut self, address: A, now: Instant) -> Option<u64> {
        if self.addresses.len() >= REMEMBERED && !self.addresses.contains_key(&address) {
            self.addresses.clear();
        }
        let entry = self.addresses.entry(address).or_insert((None, 0));
        entry.1 += 1;
        if entry
            .0
            .is_some_and(|logged| now.saturating_duration_since(logged) < LOG_EVERY)
        {
            return None;
        }
        entry.0 = Some(now);
        Some(std::mem::take(&mut entry.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_is_logged_at_a_pace_with_what_was_held_back() {
        let mut pace = LogPace::default();
        let start = Instant::now();
        assert_eq!(pace.event("a", start), Some(1));
        assert_eq!(pace.event("a", start), None);
        assert_eq!(pace.event("a", start + Duration::from_secs(1)), None);
        assert_eq!(pace.event("b", start + Duration::from_secs(1)), Some(1));
        assert_eq!(pace.event("a", start + Duration::from_secs(2)), None);
        assert_eq!(pace.event("a", start + LOG_EVERY), Some(4));
    }

    #[test]
    fn memory_is_bounded() {
        let mut pace = LogPace::default();
        let now = Instant::now();
        for i in 0..REMEMBERED * 2 {
            pace.event(i, now);
        }
        assert!(pace.addresses.len() <= REMEMBERED);
    }
}
