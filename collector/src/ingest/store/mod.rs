//! Applies a batch of heartbeats in one transaction: lock the nodes' rows
//! (in id order, so concurrent batches, here or in another collector, never
//! deadlock), check each heartbeat's token, decide with
//! [`accounting::decide`] against the locked raw values, count by the
//! node's rule ([`entries`]: which interfaces count, anomalies held), share
//! the bytes between periods that ended and the current one
//! ([`boundary`]), then write every change with one statement per table
//! ([`write`]). Each applied heartbeat (and each period that ends, and each
//! delta held) is announced as a live event with the node's traffic after
//! it, by one NOTIFY statement in the same transaction ([`events`]). A
//! heartbeat's reply is sent only after the commit; if anything fails,
//! nothing of the batch is stored or announced and every heartbeat in it
//! gets a retryable error.

mod counter_sets;
mod signals;
mod write;

pub use counter_sets::KEPT_PER_NODE;
pub use signals::{STALE_RUN_FLAGGED, reason_name};
pub use write::archive;

use std::{collections::HashMap, time::Duration};

use chrono::{NaiveDateTime, Timelike as _};
use sqlx::{PgConnection, Row as _};
use tally_proto::v1::{Outcome, StaleReason};

use self::{counter_sets::Adopted, signals::Signals};
use super::{
    boundary,
    entries::{self, Guard, Held, Positions, Previous},
};
use crate::{
    accounting::{self, CounterSet, Decision, Followed, Position},
    auth::{self, Credentials},
    billing::{self, Mode, Settings, Stored},
    error::Error,
    events::{self, Notice, Outbox},
    quota::{self, Crossing},
    validate::Heartbeat,
};

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
            max_interface_names: DEFAULT_MAX_INTERFACE_NAMES,
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

    fn bucket(&self) -> NaiveDateTime {
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
pub const DEFAULT_MAX_INTERFACE_NAMES: i64 = 4096;

/// A node as locked for the batch, and what the batch does to it.
struct Node<'a> {
    token_hash: String,
    settings: Settings,
    /// Why the node's stored billing settings cannot be used (then
    /// `settings` is a placeholder no heartbeat is counted under).
    unusable_settings: Option<String>,
    position: Position,
    /// The counter sets followed before (loaded only for nodes with a
    /// heartbeat of another set than the followed one).
    followed: Followed,
    signals: Signals,
    positions: Option<Positions>,
    last_seen: Option<NaiveDateTime>,
    total_upload: i64,
    total_download: i64,
    period_upload: i64,
    period_download: i64,
    period_start: NaiveDateTime,
    interfaces_at: Option<NaiveDateTime>,
    change: Option<Change<'a>>,
}

/// A period that ended, to archive.
struct Closed {
    start: NaiveDateTime,
    end: NaiveDateTime,
    upload: i64,
    download: i64,
    mode: Mode,
}

/// A held delta, to record.
struct Hold {
    held: Held,
    elapsed_ms: i64,
    period_start: NaiveDateTime,
}

/// The changes of applied heartbeats, accumulated per node.
struct Change<'a> {
    /// Counted bytes (history).
    upload: i64,
    download: i64,
    /// Counted bytes by address family: (upload, download).
    ipv4: (i64, i64),
    ipv6: (i64, i64),
    heartbeats: i32,
    /// Rewrite the node's per-interface rows.
    refresh_interfaces: bool,
    /// A heartbeat of the batch started a new epoch: the per-interface rows
    /// hold the previous epoch's counters.
    new_epoch: bool,
    closed: Vec<Closed>,
    held: Vec<Hold>,
    crossings: Vec<Crossing>,
    /// Counter sets first applied, in order.
    adopted: Vec<Adopted<'a>>,
    last: &'a Heartbeat,
}

/// Applies `jobs` in one transaction on `conn`. The outer `Err` means the
/// transaction failed and nothing was stored.
pub async fn apply(
    conn: &mut PgConnection,
    jobs: &[Job],
    time: BatchTime,
) -> Result<Vec<Result<Applied, Error>>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let mut nodes = lock_nodes(&mut tx, jobs, &time).await?;
    load_followed(&mut tx, jobs, &mut nodes).await?;
    let mut outbox = Outbox::new();
    let results = jobs
        .iter()
        .map(|job| decide(&mut nodes, job, &time, &mut outbox))
        .collect();
    let changed: Vec<(&String, &Node, &Change)> = {
        let mut changed: Vec<_> = nodes
            .iter()
            .filter_map(|(id, node)| node.change.as_ref().map(|c| (id, node, c)))
            .collect();
        changed.sort_by(|a, b| a.0.cmp(b.0));
        changed
    };
    let signalled: Vec<(&str, &Signals)> = nodes
        .iter()
        .filter(|(_, node)| node.change.is_none() && node.signals.changed)
        .map(|(id, node)| (id.as_str(), &node.signals))
        .collect();
    signals::write(&mut tx, &signalled).await?;
    if !changed.is_empty() {
        write::nodes(&mut tx, &changed, &time).await?;
        let adopted: Vec<(&str, &Adopted)> = changed
            .iter()
            .flat_map(|(id, _, change)| change.adopted.iter().map(|a| (id.as_str(), a)))
            .collect();
        counter_sets::record(&mut tx, &adopted, time.now).await?;
        write::traffic(&mut tx, &changed, &time).await?;
        write::history(&mut tx, &changed, &time).await?;
        write::interfaces(&mut tx, &changed, &time).await?;
        write::closed_periods(&mut tx, &changed, &time).await?;
        write::anomalies(&mut tx, &changed, &time).await?;
        write::quota_crossings(&mut tx, &changed, &time, &mut outbox).await?;
    }
    // Also the events of batches that changed no traffic (a stale run).
    outbox.send(&mut tx).await?;
    tx.commit().await?;
    Ok(results)
}

async fn lock_nodes<'a>(
    conn: &mut PgConnection,
    jobs: &[Job],
    time: &BatchTime,
) -> Result<HashMap<String, Node<'a>>, sqlx::Error> {
    let mut ids: Vec<&str> = jobs
        .iter()
        .map(|j| j.credentials.node_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    // Only constants are formatted in.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"SELECT n."id", n."tokenHash", n."bootId", n."epoch", n."generation",
                  n."lastSequence", n."lastSeen", n."positions"::text AS "positions",
                  n."clockOffsetMs", n."staleHeartbeats", n."staleRun", n."lastStaleAt",
                  n."lastStaleReason",
                  t."lastRxBytes", t."lastTxBytes",
                  t."totalUpload", t."totalDownload", t."periodUpload",
                  t."periodDownload", t."periodStart",
                  n."interfacesUpdatedAt", {settings}
           FROM "nodes" n JOIN "traffic_stats" t ON t."nodeId" = n."id"
           {join}
           WHERE n."id" = ANY($1)
           ORDER BY n."id"
           FOR UPDATE OF n, t"#,
        settings = billing::SETTINGS_COLUMNS,
        join = billing::SETTINGS_JOIN,
    )))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let set = match (
                row.try_get::<Option<String>, _>("bootId")?,
                row.try_get::<Option<String>, _>("epoch")?,
            ) {
                (Some(boot_id), Some(epoch)) => Some(CounterSet { boot_id, epoch }),
                _ => None,
            };
            let id: String = row.try_get("id")?;
            let (settings, unusable_settings) =
                match Stored::from_row(&row)?.resolve(time.fallback_day) {
                    Ok(settings) => (settings, None),
                    Err(error) => {
                        tracing::error!(node = %id, %error, "unusable billing settings; the node's heartbeats are refused (UNAVAILABLE) until they are fixed");
                        (Settings::default(), Some(error.to_string()))
                    }
                };
            let positions = row
                .try_get::<Option<String>, _>("positions")?
                .and_then(|text| serde_json::from_str(&text).ok());
            let node = Node {
                token_hash: row.try_get("tokenHash")?,
                settings,
                unusable_settings,
                position: Position {
                    set,
                    generation: row.try_get("generation")?,
                    sequence: row.try_get::<Option<i64>, _>("lastSequence")?.unwrap_or(0),
                    rx: row.try_get::<Option<i64>, _>("lastRxBytes")?.unwrap_or(0),
                    tx: row.try_get::<Option<i64>, _>("lastTxBytes")?.unwrap_or(0),
                },
                followed: Followed::default(),
                signals: Signals {
                    clock_offset_ms: row.try_get("clockOffsetMs")?,
                    stale_heartbeats: row.try_get("staleHeartbeats")?,
                    stale_run: row.try_get("staleRun")?,
                    last_stale_at: row.try_get("lastStaleAt")?,
                    last_stale_reason: row.try_get("lastStaleReason")?,
                    changed: false,
                },
                positions,
                last_seen: row.try_get("lastSeen")?,
                total_upload: row.try_get("totalUpload")?,
                total_download: row.try_get("totalDownload")?,
                period_upload: row.try_get("periodUpload")?,
                period_download: row.try_get("periodDownload")?,
                period_start: row.try_get("periodStart")?,
                interfaces_at: row.try_get("interfacesUpdatedAt")?,
                change: None,
            };
            Ok((id, node))
        })
        .collect()
}

/// Loads the counter sets followed before for the nodes that have a
/// heartbeat in `jobs` of another set than the one they follow.
async fn load_followed(
    conn: &mut PgConnection,
    jobs: &[Job],
    nodes: &mut HashMap<String, Node<'_>>,
) -> Result<(), sqlx::Error> {
    let mut ids: Vec<&str> = jobs
        .iter()
        .filter(|job| {
            nodes
                .get(&job.credentials.node_id)
                .is_some_and(|node| node.position.set.as_ref() != Some(&job.heartbeat.reading.set))
        })
        .map(|job| job.credentials.node_id.as_str())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    for (id, followed) in counter_sets::load(conn, &ids).await? {
        if let Some(node) = nodes.get_mut(&id) {
            node.followed = Followed::new(followed);
        }
    }
    Ok(())
}

/// Decides one job against its (locked, in-memory) node, records the
/// change and adds its events to `outbox`. Refusals change nothing.
fn decide<'a>(
    nodes: &mut HashMap<String, Node<'a>>,
    job: &'a Job,
    time: &BatchTime,
    outbox: &mut Outbox,
) -> Result<Applied, Error> {
    // The same answer for an unknown node and a wrong secret.
    let refused = || Error::Unauthenticated("unknown node or wrong token");
    let node = nodes
        .get_mut(&job.credentials.node_id)
        .ok_or_else(refused)?;
    if !auth::matches(&job.credentials, &node.token_hash) {
        return Err(refused());
    }
    // Counted under another rule than its own, a heartbeat could not be
    // undone; refused, it is sent again (its counters are cumulative).
    if let Some(why) = &node.unusable_settings {
        return Err(Error::Database(sqlx::Error::Decode(
            format!(
                "billing settings of node {}: {why}",
                job.credentials.node_id
            )
            .into(),
        )));
    }
    let heartbeat = &job.heartbeat;
    let reading = &heartbeat.reading;
    let node_id = job.credentials.node_id.as_str();
    let same_set = node.position.set.as_ref() == Some(&reading.set);
    let decision = accounting::decide(&node.position, &node.followed, reading);
    let answer = |node: &Node, outcome, sequence, stale_reason| Applied {
        outcome,
        sequence,
        stale_reason,
        current_generation: node.position.generation,
    };
    let (download, upload, new_set) = match decision {
        Decision::Apply {
            download,
            upload,
            new_set,
        } => (download, upload, new_set),
        Decision::Duplicate => {
            node.signals.clock(node_id, heartbeat, time);
            node.signals.followed();
            let sequence = node.position.sequence;
            return Ok(answer(
                node,
                Outcome::Duplicate,
                sequence,
                StaleReason::Unspecified,
            ));
        }
        Decision::Stale(reason) => {
            node.signals.clock(node_id, heartbeat, time);
            if node.signals.stale(reason, time.now) {
                stale_run(node_id, node, reading, outbox);
            }
            let sequence = if same_set { node.position.sequence } else { 0 };
            return Ok(answer(node, Outcome::Stale, sequence, reason));
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
    let (previous, elapsed_ns) = if new_set {
        let previous = if reading.starts_at_zero {
            Previous::Zero
        } else {
            Previous::Baseline
        };
        (previous, since_epoch_began(heartbeat))
    } else {
        let previous = node
            .positions
            .as_ref()
            .filter(|p| p.sequence == node.position.sequence)
            .map_or(Previous::Unknown, Previous::Stored);
        (previous, reading.sequence - node.position.sequence)
    };
    let counted = entries::count(
        &heartbeat.interfaces,
        previous,
        node.settings.count_rule,
        (download, upload),
        Guard {
            max_rate: node.settings.max_rate,
            elapsed_ns,
        },
    );
    let sum = |a: i64, b: i64, what| a.checked_add(b).ok_or(Error::TotalOverflow(what));
    let total_upload = sum(node.total_upload, counted.upload, "upload")?;
    let total_download = sum(node.total_download, counted.download, "download")?;
    // Periods that ended since the node's period began get their share of
    // the bytes by the time the heartbeat covers; the rest is the current
    // period's.
    let ended = node
        .settings
        .anchor
        .as_ref()
        .and_then(|anchor| boundary::ended(anchor, node.period_start, time.now));
    let mut closed = Vec::new();
    let (mut period_upload, mut period_download, mut period_start) =
        (node.period_upload, node.period_download, node.period_start);
    let mut rest = (counted.upload, counted.download);
    if let Some((ended, current)) = &ended {
        let (shares, current_part) = boundary::share(rest, node.last_seen, time.now, ended);
        for (i, (period, share)) in ended.iter().zip(shares).enumerate() {
            let (before_up, before_down) = if i == 0 {
                (period_upload, period_download)
            } else {
                (0, 0)
            };
            closed.push(Closed {
                start: period.start,
                end: period.end,
                upload: sum(before_up, share.0, "period upload")?,
                download: sum(before_down, share.1, "period download")?,
                mode: node.settings.mode,
            });
        }
        (period_upload, period_download, period_start) = (0, 0, *current);
        rest = current_part;
    }
    let usage_before = billing::usage(node.settings.mode, period_upload, period_download, 0);
    let period_upload = sum(period_upload, rest.0, "period upload")?;
    let period_download = sum(period_download, rest.1, "period download")?;
    // Nothing below refuses the heartbeat: the node changes from here on.
    node.signals.clock(node_id, heartbeat, time);
    node.signals.followed();
    if ended.is_some() {
        node.period_upload = 0;
        node.period_download = 0;
        node.period_start = period_start;
        outbox.push(&Notice::PeriodReset {
            node_id,
            traffic: node.traffic(),
        });
    }
    node.total_upload = total_upload;
    node.total_download = total_download;
    node.period_upload = period_upload;
    node.period_download = period_download;
    node.position.advance(reading);
    if new_set {
        node.followed.add(reading.set.clone());
    }
    node.positions = Some(Positions {
        sequence: reading.sequence,
        ..Positions::of(&heartbeat.interfaces)
    });
    node.last_seen = Some(time.now);
    let crossings = crossings(node, node_id, usage_before, time.now);
    for held in &counted.held {
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
    let refresh = new_set
        || node
            .interfaces_at
            .is_none_or(|at| (time.now - at).to_std().unwrap_or_default() >= INTERFACE_REFRESH);
    let period_now = node.period_start;
    let change = node.change.get_or_insert(Change {
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
        last: heartbeat,
    });
    if new_set {
        change.adopted.push(Adopted {
            set: &reading.set,
            generation: reading.generation,
            created_unix_ns: heartbeat.epoch_created_unix_ns,
        });
    }
    change.upload += counted.upload;
    change.download += counted.download;
    change.ipv4 = add_pair(change.ipv4, counted.ipv4);
    change.ipv6 = add_pair(change.ipv6, counted.ipv6);
    change.heartbeats += 1;
    change.refresh_interfaces |= refresh;
    change.new_epoch |= new_set;
    change.closed.extend(closed);
    change.crossings.extend(crossings);
    change
        .held
        .extend(counted.held.into_iter().map(|held| Hold {
            held,
            elapsed_ms: elapsed_ns.max(0) / 1_000_000,
            period_start: period_now,
        }));
    change.last = heartbeat;
    Ok(answer(
        node,
        Outcome::Applied,
        reading.sequence,
        StaleReason::Unspecified,
    ))
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

/// A node's heartbeats were answered STALE [`STALE_RUN_FLAGGED`] times in a
/// row: say so in the log and as a live event.
fn stale_run(node_id: &str, node: &Node, reading: &accounting::Reading, outbox: &mut Outbox) {
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
fn crossings(node: &Node, node_id: &str, before: i64, now: NaiveDateTime) -> Vec<Crossing> {
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

impl Node<'_> {
    /// The traffic as the batch leaves it so far.
    fn traffic(&self) -> events::Traffic {
        events::Traffic {
            total_upload: self.total_upload,
            total_download: self.total_download,
            period_upload: self.period_upload,
            period_download: self.period_download,
            period_start: self.period_start,
        }
    }
}

type Changed<'a> = [(&'a String, &'a Node<'a>, &'a Change<'a>)];
