//! The middle step of applying a batch (load → **plan** → write): given
//! the batch's nodes as locked and loaded ([`NodeState`]) and its
//! heartbeats, what each heartbeat is answered and what the batch writes.
//! No I/O and no async: the token check, the counting decision
//! ([`accounting::decide`]), the per-interface rule and the anomaly guard
//! ([`entries`]), the period boundary ([`boundary`]), the quota crossings
//! and the live events. [`super::store`] loads the nodes before and writes
//! what is planned after, in one transaction.

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use chrono::NaiveDateTime;
use tally_proto::v1::{Outcome, StaleReason};

use super::{
    batch::{Applied, BatchTime, INTERFACE_REFRESH, Job},
    entries::{self, Counted, Guard, Held, InterfacePositions, Previous},
    signals::Signals,
};
use crate::{
    accounting::{self, CounterSet, Decision, Followed, Position, Reading},
    auth,
    billing::{self, Mode, Settings, period::boundary},
    error::Error,
    events::{self, Notice, Outbox},
    quota::Crossing,
    validate::Heartbeat,
};

/// A node as locked and loaded for the batch, and what the batch does to
/// it: planning moves these values on, heartbeat by heartbeat.
#[derive(Debug, Clone)]
pub struct NodeState<'a> {
    /// The node's tokens' hashes, checked again against the locked row.
    pub keys: auth::NodeKeys,
    pub settings: Settings,
    /// Why the node's stored billing settings cannot be used (then
    /// `settings` is a placeholder no heartbeat is counted under).
    pub unusable_settings: Option<String>,
    pub position: Position,
    /// The counter sets followed before (loaded only for nodes with a
    /// heartbeat of another set than the followed one).
    pub followed: Followed,
    pub signals: Signals,
    /// Each interface's raw values at `position`, when stored and readable.
    pub interfaces: Option<InterfacePositions>,
    pub last_seen: Option<NaiveDateTime>,
    pub total_upload: i64,
    pub total_download: i64,
    pub period_upload: i64,
    pub period_download: i64,
    pub period_start: NaiveDateTime,
    pub interfaces_at: Option<NaiveDateTime>,
    /// What the batch writes for the node; `None` while no heartbeat of
    /// the batch was applied to it.
    pub update: Option<NodeUpdate<'a>>,
}

/// A period that ended, to archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedPeriod {
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
    pub upload: i64,
    pub download: i64,
    pub mode: Mode,
}

/// A delta held as an anomaly, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldDelta {
    pub held: Held,
    pub elapsed_ms: i64,
    pub period_start: NaiveDateTime,
}

/// A counter set first applied in the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted<'a> {
    pub set: &'a CounterSet,
    pub generation: i64,
    /// When the epoch began by the node's clock (informational).
    pub created_unix_ns: i64,
}

/// What the batch writes for one node besides its [`NodeState`] values:
/// the applied heartbeats' additions, accumulated.
#[derive(Debug, Clone)]
pub struct NodeUpdate<'a> {
    /// Counted bytes (history).
    pub upload: i64,
    pub download: i64,
    /// Counted bytes by address family: (upload, download).
    pub ipv4: (i64, i64),
    pub ipv6: (i64, i64),
    pub heartbeats: i32,
    /// Rewrite the node's per-interface rows.
    pub refresh_interfaces: bool,
    /// A heartbeat of the batch started a new epoch: the per-interface rows
    /// hold the previous epoch's counters.
    pub new_epoch: bool,
    pub closed: Vec<ClosedPeriod>,
    pub held: Vec<HeldDelta>,
    pub crossings: Vec<Crossing>,
    /// Counter sets first applied, in order.
    pub adopted: Vec<Adopted<'a>>,
    /// The last heartbeat applied.
    pub last: &'a Heartbeat,
}

/// Plans `jobs` against `nodes` (keyed by node id), in the jobs' order:
/// returns each job's answer and the live events of the batch, and leaves
/// in each node its values after the batch and its [`NodeUpdate`].
/// Refusals change nothing.
pub fn plan<'a>(
    nodes: &mut HashMap<String, NodeState<'a>>,
    jobs: &'a [Job],
    time: &BatchTime,
) -> (Vec<Result<Applied, Error>>, Outbox) {
    let mut outbox = Outbox::new();
    let results = jobs
        .iter()
        .map(|job| plan_one(nodes, job, time, &mut outbox))
        .collect();
    (results, outbox)
}

fn plan_one<'a>(
    nodes: &mut HashMap<String, NodeState<'a>>,
    job: &'a Job,
    time: &BatchTime,
    outbox: &mut Outbox,
) -> Result<Applied, Error> {
    let node = authenticated(nodes, job, time.now)?;
    let heartbeat = &job.heartbeat;
    let reading = &heartbeat.reading;
    let node_id = job.credentials.node_id.as_str();
    let (download, upload, new_set) =
        match accounting::decide(&node.position, &node.followed, reading) {
            Decision::Apply {
                download,
                upload,
                new_set,
            } => (download, upload, new_set),
            Decision::Duplicate => {
                node.signals.clock(node_id, heartbeat, time);
                node.signals.followed();
                let sequence = node.position.sequence;
                return Ok(node.answer(Outcome::Duplicate, sequence, StaleReason::Unspecified));
            }
            Decision::Stale(reason) => {
                node.signals.clock(node_id, heartbeat, time);
                if node.signals.stale(reason, time.now) {
                    stale_run(node_id, node, reading, outbox);
                }
                let same_set = node.position.set.as_ref() == Some(&reading.set);
                let sequence = if same_set { node.position.sequence } else { 0 };
                return Ok(node.answer(Outcome::Stale, sequence, reason));
            }
            Decision::Backwards { what, last, now } => {
                return Err(Error::Backwards {
                    what,
                    epoch: reading.set.epoch.clone(),
                    last,
                    now,
                });
            }
        };
    let (counted, elapsed_ns) = count_interfaces(node, heartbeat, (download, upload), new_set);
    let sums = add_up(node, &counted, time)?;
    // Nothing below refuses the heartbeat: the node changes from here on.
    node.signals.clock(node_id, heartbeat, time);
    node.signals.followed();
    if let Some(start) = sums.new_period_start {
        node.period_upload = 0;
        node.period_download = 0;
        node.period_start = start;
        outbox.push(&Notice::PeriodReset {
            node_id,
            traffic: node.traffic(),
        });
    }
    node.total_upload = sums.total_upload;
    node.total_download = sums.total_download;
    node.period_upload = sums.period_upload;
    node.period_download = sums.period_download;
    node.position.advance(reading);
    if new_set {
        node.followed.add(reading.set.clone());
    }
    node.interfaces = Some(InterfacePositions {
        sequence: reading.sequence,
        ..InterfacePositions::of(&heartbeat.interfaces)
    });
    node.last_seen = Some(time.now);
    let crossings = crossings(node, node_id, sums.usage_before, time.now);
    announce(node, node_id, heartbeat, &counted.held, time, outbox);
    let refresh = new_set
        || node
            .interfaces_at
            .is_none_or(|at| (time.now - at).to_std().unwrap_or_default() >= INTERFACE_REFRESH);
    let period_start = node.period_start;
    let update = node
        .update
        .get_or_insert_with(|| NodeUpdate::new(heartbeat));
    if new_set {
        update.adopted.push(Adopted {
            set: &reading.set,
            generation: reading.generation,
            created_unix_ns: heartbeat.epoch_created_unix_ns,
        });
    }
    update.upload += counted.upload;
    update.download += counted.download;
    update.ipv4 = add_pair(update.ipv4, counted.ipv4);
    update.ipv6 = add_pair(update.ipv6, counted.ipv6);
    update.heartbeats += 1;
    update.refresh_interfaces |= refresh;
    update.new_epoch |= new_set;
    update.closed.extend(sums.closed);
    update.crossings.extend(crossings);
    update
        .held
        .extend(counted.held.into_iter().map(|held| HeldDelta {
            held,
            elapsed_ms: elapsed_ns.max(0) / 1_000_000,
            period_start,
        }));
    update.last = heartbeat;
    Ok(node.answer(Outcome::Applied, reading.sequence, StaleReason::Unspecified))
}

/// The job's node, if the job's token is that node's (the same refusal for
/// an unknown node and a wrong secret).
fn authenticated<'n, 'a>(
    nodes: &'n mut HashMap<String, NodeState<'a>>,
    job: &Job,
    now: chrono::NaiveDateTime,
) -> Result<&'n mut NodeState<'a>, Error> {
    let refused = || Error::Unauthenticated("unknown node or wrong token");
    let node = nodes
        .get_mut(&job.credentials.node_id)
        .ok_or_else(refused)?;
    if node.keys.admits(&job.credentials, now).is_none() {
        return Err(refused());
    }
    // Counted under another rule than its own, a heartbeat could not be
    // undone; refused, it is sent again (its counters are cumulative).
    if node.unusable_settings.is_some() {
        return Err(Error::Unavailable(
            "the node's billing settings cannot be used (see the collector's log)",
        ));
    }
    Ok(node)
}

/// What the heartbeat adds by the node's rule ([`entries::count`]), and
/// the time it covers (nanoseconds, node clock).
fn count_interfaces(
    node: &NodeState<'_>,
    heartbeat: &Heartbeat,
    summed: (i64, i64),
    new_set: bool,
) -> (Counted, i64) {
    let reading = &heartbeat.reading;
    let (previous, elapsed_ns) = if new_set {
        let previous = if reading.starts_at_zero {
            Previous::Zero
        } else {
            Previous::Baseline
        };
        (previous, since_epoch_began(heartbeat))
    } else {
        let previous = node
            .interfaces
            .as_ref()
            .filter(|p| p.sequence == node.position.sequence)
            .map_or(Previous::Unknown, Previous::Stored);
        (previous, reading.sequence - node.position.sequence)
    };
    let counted = entries::count(
        &heartbeat.interfaces,
        previous,
        node.settings.count_rule,
        summed,
        Guard {
            max_rate: node.settings.max_rate,
            elapsed_ns,
        },
    );
    (counted, elapsed_ns)
}

/// A node's counters after a heartbeat, before they are set.
struct Sums {
    total_upload: i64,
    total_download: i64,
    period_upload: i64,
    period_download: i64,
    /// The start of the current period, when periods ended.
    new_period_start: Option<NaiveDateTime>,
    /// The periods that ended, with their share of the heartbeat's bytes.
    closed: Vec<ClosedPeriod>,
    /// The current period's usage before the heartbeat's part of it.
    usage_before: i64,
}

/// Adds `counted` to the node's totals and periods: periods that ended
/// since the node's period began get their share of the bytes by the time
/// the heartbeat covers ([`boundary::share`]); the rest is the current
/// period's. Refuses a total past 2^63 - 1.
fn add_up(node: &NodeState<'_>, counted: &Counted, time: &BatchTime) -> Result<Sums, Error> {
    let sum = |a: i64, b: i64, what| a.checked_add(b).ok_or(Error::TotalOverflow(what));
    let total_upload = sum(node.total_upload, counted.upload, "upload")?;
    let total_download = sum(node.total_download, counted.download, "download")?;
    let ended = node
        .settings
        .anchor
        .as_ref()
        .and_then(|anchor| boundary::ended(anchor, node.period_start, time.now));
    let mut closed = Vec::new();
    let (mut period_upload, mut period_download) = (node.period_upload, node.period_download);
    let mut rest = (counted.upload, counted.download);
    let mut new_period_start = None;
    if let Some((ended, current)) = &ended {
        let (shares, current_part) = boundary::share(rest, node.last_seen, time.now, ended);
        for (i, (period, share)) in ended.iter().zip(shares).enumerate() {
            let (before_up, before_down) = if i == 0 {
                (period_upload, period_download)
            } else {
                (0, 0)
            };
            closed.push(ClosedPeriod {
                start: period.start,
                end: period.end,
                upload: sum(before_up, share.0, "period upload")?,
                download: sum(before_down, share.1, "period download")?,
                mode: node.settings.mode,
            });
        }
        (period_upload, period_download) = (0, 0);
        new_period_start = Some(*current);
        rest = current_part;
    }
    let usage_before = billing::usage(node.settings.mode, period_upload, period_download, 0);
    Ok(Sums {
        total_upload,
        total_download,
        period_upload: sum(period_upload, rest.0, "period upload")?,
        period_download: sum(period_download, rest.1, "period download")?,
        new_period_start,
        closed,
        usage_before,
    })
}

/// The live events of an applied heartbeat: the deltas it held, then the
/// node's traffic after it.
fn announce(
    node: &NodeState<'_>,
    node_id: &str,
    heartbeat: &Heartbeat,
    held: &[Held],
    time: &BatchTime,
    outbox: &mut Outbox,
) {
    for held in held {
        outbox.push(&Notice::AnomalyHeld {
            node_id,
            interface: &held.name,
            upload: held.upload,
            download: held.download,
        });
    }
    let [one, five, fifteen] = heartbeat.load;
    outbox.push(&Notice::Heartbeat {
        node_id,
        last_seen: time.now,
        load: events::Load { one, five, fifteen },
        traffic: node.traffic(),
    });
}

/// How long an epoch's counters had been counting at its first reading, at
/// most: the boot clock (the sequence; no counter set is older than its
/// boot), or the node's wall clock since the epoch began when that is more
/// (agents whose sequence is no boot clock). A wall clock stepped back
/// since the epoch began cannot make it too short.
fn since_epoch_began(heartbeat: &Heartbeat) -> i64 {
    let by_wall_clock = heartbeat
        .agent_time_unix_ns
        .saturating_sub(heartbeat.epoch_created_unix_ns);
    heartbeat.reading.sequence.max(by_wall_clock)
}

/// A node's heartbeats were answered STALE
/// [`super::signals::STALE_RUN_FLAGGED`] times in a row: say so in the log
/// and as a live event.
fn stale_run(node_id: &str, node: &NodeState<'_>, reading: &Reading, outbox: &mut Outbox) {
    let reason = node
        .signals
        .last_stale_reason
        .as_deref()
        .unwrap_or_default();
    tracing::warn!(
        node = %node_id,
        boot_id = %reading.set.boot_id,
        epoch = %reading.set.epoch,
        generation = reading.generation,
        sequence = reading.sequence,
        reason,
        stale_heartbeats = node.signals.stale_heartbeats,
        "the node's heartbeats are answered STALE again and again: nothing they carry is \
         counted (see the agent's log; two agents with one token?)"
    );
    outbox.push(&Notice::Stale {
        node_id,
        reason,
        run: node.signals.stale_run,
        stale_heartbeats: node.signals.stale_heartbeats,
    });
}

fn add_pair(a: (i64, i64), b: (i64, i64)) -> (i64, i64) {
    (a.0.saturating_add(b.0), a.1.saturating_add(b.1))
}

/// The quota thresholds the node's usage crossed with this heartbeat (byte
/// modes; the 95th percentile is checked by the upkeep).
fn crossings(
    node: &NodeState<'_>,
    node_id: &str,
    before: i64,
    now: NaiveDateTime,
) -> Vec<Crossing> {
    let settings = &node.settings;
    let Some(quota) = settings.quota.filter(|_| settings.mode != Mode::P95) else {
        return Vec::new();
    };
    let after = billing::usage(settings.mode, node.period_upload, node.period_download, 0);
    billing::crossed(&settings.thresholds, quota, before, after)
        .into_iter()
        .map(|threshold| Crossing {
            node_id: node_id.to_owned(),
            node_name: None,
            period_start: node.period_start,
            threshold,
            usage: after,
            quota,
            mode: settings.mode,
            at: now,
        })
        .collect()
}

impl NodeState<'_> {
    /// The traffic as the batch leaves it so far.
    pub fn traffic(&self) -> events::TrafficCounters {
        events::TrafficCounters {
            total_upload: self.total_upload,
            total_download: self.total_download,
            period_upload: self.period_upload,
            period_download: self.period_download,
            period_start: self.period_start,
        }
    }

    fn answer(&self, outcome: Outcome, sequence: i64, stale_reason: StaleReason) -> Applied {
        Applied {
            outcome,
            sequence,
            stale_reason,
            current_generation: self.position.generation,
        }
    }
}

impl<'a> NodeUpdate<'a> {
    fn new(first: &'a Heartbeat) -> Self {
        Self {
            upload: 0,
            download: 0,
            ipv4: (0, 0),
            ipv6: (0, 0),
            heartbeats: 0,
            refresh_interfaces: false,
            new_epoch: false,
            closed: Vec::new(),
            held: Vec::new(),
            crossings: Vec::new(),
            adopted: Vec::new(),
            last: first,
        }
    }
}
