//! What a batch learns of a node besides its traffic: how far its clock is
//! off (the node's clock minus ours at receipt), and whether its heartbeats
//! are being answered STALE, how many and how many in a row. Both are kept
//! on the node's row (`nodes."clockOffsetMs"`, `"staleHeartbeats"`,
//! `"staleRun"`, `"lastStaleAt"`, `"lastStaleReason"`), shown by the API,
//! `/metrics` and the dashboard.

use chrono::NaiveDateTime;
use tally_proto::v1::StaleReason;

use super::batch::BatchTime;
use crate::validate::Heartbeat;

/// A node whose last this many heartbeats in a row were answered STALE is
/// shown as losing its heartbeats (and announced once per run).
pub const STALE_RUN_FLAGGED: i32 = 3;

/// The stored name of a stale reason (`lastStaleReason`, the API, events).
pub fn reason_name(reason: StaleReason) -> &'static str {
    match reason {
        StaleReason::Unspecified => "unspecified",
        StaleReason::EarlierReading => "earlier_reading",
        StaleReason::Superseded => "superseded",
        StaleReason::OlderGeneration => "older_generation",
        StaleReason::EarlierInBoot => "earlier_in_boot",
    }
}

/// A node's clock offset and stale counts, as locked for the batch.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    pub clock_offset_ms: Option<i64>,
    pub stale_heartbeats: i64,
    pub stale_run: i32,
    pub last_stale_at: Option<NaiveDateTime>,
    pub last_stale_reason: Option<String>,
    /// Something above changed and must be written.
    pub changed: bool,
}

impl Signals {
    /// Takes the clock offset of `heartbeat` (not of a last reading, which
    /// may be delivered from the journal long after it was taken), warning
    /// when the node's clock goes further off than `--max-clock-skew`.
    pub fn clock(&mut self, node_id: &str, heartbeat: &Heartbeat, time: &BatchTime) {
        if heartbeat.last_of_boot {
            return;
        }
        let offset = heartbeat.clock_offset_ms;
        let skewed = |offset: i64| offset.unsigned_abs() > time.max_clock_skew_ms.unsigned_abs();
        if skewed(offset) && !self.clock_offset_ms.is_some_and(skewed) {
            tracing::warn!(
                node = %node_id,
                clock_offset_ms = offset,
                max_clock_skew_ms = time.max_clock_skew_ms,
                "the node's clock is {} {} the collector's (more than --max-clock-skew): its \
                 heartbeats still count, but check its time synchronisation (NTP)",
                humantime::format_duration(std::time::Duration::from_millis(
                    offset.unsigned_abs()
                )),
                if offset > 0 { "ahead of" } else { "behind" },
            );
        }
        if self.clock_offset_ms != Some(offset) {
            self.clock_offset_ms = Some(offset);
            self.changed = true;
        }
    }

    /// A heartbeat was answered STALE for `reason`; returns whether the run
    /// of stale answers just reached [`STALE_RUN_FLAGGED`].
    pub fn stale(&mut self, reason: StaleReason, now: NaiveDateTime) -> bool {
        self.stale_heartbeats = self.stale_heartbeats.saturating_add(1);
        self.stale_run = self.stale_run.saturating_add(1);
        self.last_stale_at = Some(now);
        self.last_stale_reason = Some(reason_name(reason).to_owned());
        self.changed = true;
        self.stale_run == STALE_RUN_FLAGGED
    }

    /// A heartbeat of the followed counter set was applied (or was a
    /// duplicate): the run of stale answers is over.
    pub fn followed(&mut self) {
        if self.stale_run != 0 {
            self.stale_run = 0;
            self.changed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_is_flagged_once_and_ends_with_a_followed_heartbeat() {
        let now = NaiveDateTime::default();
        let mut signals = Signals::default();
        assert!(!signals.stale(StaleReason::Superseded, now));
        assert!(!signals.stale(StaleReason::Superseded, now));
        assert!(signals.stale(StaleReason::Superseded, now), "the third");
        assert!(!signals.stale(StaleReason::Superseded, now), "only once");
        assert_eq!((signals.stale_heartbeats, signals.stale_run), (4, 4));
        assert_eq!(signals.last_stale_reason.as_deref(), Some("superseded"));
        signals.changed = false;
        signals.followed();
        assert!(signals.changed);
        assert_eq!((signals.stale_heartbeats, signals.stale_run), (4, 0));
        signals.changed = false;
        signals.followed();
        assert!(!signals.changed, "nothing to write");
    }
}
