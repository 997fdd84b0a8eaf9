//! What a batch of heartbeats is made of and what it answers: the jobs
//! (a heartbeat with its credentials), the clock and settings the batch is
//! planned and written with ([`BatchTime`]), and each heartbeat's outcome
//! ([`Applied`]). Shared by the planning (`ingest::plan`) and the writing
//! ([`super::store`]).

use std::time::Duration;

use chrono::{NaiveDateTime, Timelike as _};
use tally_proto::v1::{Outcome, StaleReason};

use crate::{auth::Credentials, quota, validate::Heartbeat};

/// One heartbeat to apply, with the credentials it came with.
#[derive(Debug, Clone)]
pub struct Job {
    pub credentials: Credentials,
    pub heartbeat: Heartbeat,
}

/// What happened to one heartbeat of a committed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// The last sequence applied for the heartbeat's epoch (0 when none).
    pub sequence: i64,
    /// Why it was stale (`Unspecified` for other outcomes).
    pub stale_reason: StaleReason,
    /// The generation of the counter set followed after it (0: unknown).
    pub current_generation: i64,
}

/// The clock the batch is written with (truncated to the millisecond, the
/// precision of the seed's TIMESTAMP(3) columns), the collector's
/// `--period-reset monthly:DAY` (the anchor day, in UTC, of nodes whose
/// settings have none), and what recording quota events does.
#[derive(Debug, Clone, Copy)]
pub struct BatchTime {
    pub now: NaiveDateTime,
    pub fallback_day: Option<u32>,
    pub quota: quota::Config,
    /// How far off a node's clock may be before it is warned about
    /// (`--max-clock-skew`), in milliseconds.
    pub max_clock_skew_ms: i64,
    /// Interface names with a history row per node and minute
    /// (`--max-interface-names`).
    pub max_interface_names: i64,
}

impl BatchTime {
    pub fn new(now: NaiveDateTime, fallback_day: Option<u32>) -> Self {
        let now = now
            .with_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
            .unwrap_or(now);
        Self {
            now,
            fallback_day,
            quota: quota::Config::default(),
            max_clock_skew_ms: DEFAULT_MAX_CLOCK_SKEW_MS,
            max_interface_names: i64::from(DEFAULT_MAX_INTERFACE_NAMES),
        }
    }

    /// The same, queueing webhook deliveries as `quota` says.
    pub fn with_quota(self, quota: quota::Config) -> Self {
        Self { quota, ..self }
    }

    /// The same, warning about clocks further off than `max` (ms).
    pub fn with_max_clock_skew_ms(self, max: i64) -> Self {
        Self {
            max_clock_skew_ms: max,
            ..self
        }
    }

    /// The same, keeping history of at most `max` interface names per node
    /// and minute.
    pub fn with_max_interface_names(self, max: i64) -> Self {
        Self {
            max_interface_names: max,
            ..self
        }
    }

    pub(super) fn bucket(&self) -> NaiveDateTime {
        self.now
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(self.now)
    }
}

/// How often a node's per-interface rows are rewritten at most (sooner when
/// its counters start a new epoch). They are informational: the totals are
/// written with every heartbeat, and rewriting one row per interface per
/// heartbeat was a third of the database's work per batch.
pub const INTERFACE_REFRESH: Duration = Duration::from_secs(10);

/// `--max-clock-skew`'s default, in milliseconds (five minutes).
pub const DEFAULT_MAX_CLOCK_SKEW_MS: i64 = 300_000;
/// Interface names with a history row per node and minute, unless set.
pub const DEFAULT_MAX_INTERFACE_NAMES: u32 = 4096;
