//! Heartbeats to the collector, off the counting path.
//!
//! The report loop stamps every reading ([`Sequencer`]) and publishes it with
//! [`Heartbeats::publish`], which never waits: the reading lands in a watch
//! channel that holds only the newest one. The counters are cumulative, so a
//! reading that was not sent yet is simply superseded by the next. A sender
//! task sends the newest unsent reading, as one message on a long-lived
//! `Stream` call (one `Send` call each where the collector has no stream);
//! while the collector is away it backs off (exponential, with jitter) and
//! retries with whatever is newest then, on a new stream. A refusal in a
//! stream's reply is handled as the same status from `Send` would be. On
//! SIGTERM [`Heartbeats::finish`] stops the task, writes one last reading to
//! the reboot journal and sends it (as a `Send` call) within a bounded time.
//! At start the sender delivers what the journal holds (the last heartbeat
//! of an earlier run or boot) before any regular heartbeat; see [`last`].
//!
//! Every heartbeat carries its counter set's generation ([`Generations`],
//! kept in the state directory), so that the collector orders the sets of
//! different boots without the node's wall clock. Every reply tells the
//! generation the collector follows; the next set starts above it. When
//! the collector answers STALE with OLDER_GENERATION for the current set
//! (the state directory was lost), the sender raises the set's generation
//! above the followed one and sends at once again: the collector never
//! followed that set, so it counts it in full, once. Any other run of STALE
//! answers for the current set means nothing of it is counted: that is
//! logged as an error saying what to do.
//!
//! The collector may ask for another interval in its reply; the report loop
//! follows [`Heartbeats::interval_changed`] (never below 1 s, at most 1 h;
//! `0` means the agent's own `--interval`).
//!
//! Procfs readings can be left behind by the collector's position for their
//! epoch: refused as going backwards (FAILED_PRECONDITION, after an agent
//! restart lost the in-memory `(retired)` counts), or stale because the
//! collector follows a later epoch (one an earlier agent started). Retrying
//! them would never succeed, so the sender asks the procfs source, through
//! the [`Rebase`] it was given, for a new epoch (once per refused epoch),
//! drops the refused reading and waits for the next one. For eBPF readings
//! (no `Rebase`) a backwards refusal is a bug: it is logged as an error and
//! retried like any other failure.
//!
//! A token from `--token-file` is read again on SIGHUP and when the file
//! changes ([`token`]); a new one is sent from the next heartbeat on, on a
//! new stream, without a restart and without a new counter set.

mod backoff;
mod client;
mod config;
mod last;
mod reading;
mod request;
mod token;
mod token_file;

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tally_proto::{
    limits,
    v1::{HeartbeatReply, Outcome, StaleReason},
};
use tokio::{signal::unix::Signal, sync::watch, task::JoinHandle};

use crate::{
    generation::Generations,
    journal::Journal,
    source::{Rebase, SourceKind},
    state::StateDir,
};

use self::{
    backoff::Backoff,
    client::{Client, SendError, Severity},
    last::Pending,
    request::NodeInfo,
};
pub use self::{
    config::CollectorConfig,
    reading::{Reading, Sequencer},
    token_file::TOKEN_ENV,
};

/// The first delay after a failed heartbeat.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest delay between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// The longest interval a collector can ask for.
const MAX_ASKED_INTERVAL: Duration = Duration::from_secs(3600);
/// A repeated, unchanged failure is logged at warn/error at most this often
/// (and at debug in between).
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);
/// STALE answers in a row for the current counter set before it is logged
/// as an error.
const STALE_RUN_LOGGED: u32 = 3;
/// Raises of one reading's generation (each after an OLDER_GENERATION
/// answer) before it is taken as stale: one is enough unless the collector
/// follows other sets meanwhile.
const MAX_RAISES: u32 = 3;

/// The generations, shared by the sender task and the last heartbeat.
type SharedGenerations = Arc<Mutex<Generations>>;

/// The generation of the counter set `reading` is of.
fn generation_of(generations: &SharedGenerations, reading: &Reading) -> u64 {
    generations
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .of(&reading.snapshot.boot_id, &reading.snapshot.epoch)
}

/// The running heartbeat sender.
pub struct Heartbeats {
    latest: watch::Sender<Option<Arc<Reading>>>,
    interval: watch::Receiver<Duration>,
    task: JoinHandle<()>,
    /// Reads the token file again (on SIGHUP, and when it changes).
    token_watch: Option<JoinHandle<()>>,
    /// Shares the sender task's connection; used for the last heartbeat.
    client: Client,
    final_timeout: Duration,
    /// Where the last heartbeat is kept until the collector answered it.
    journal: Journal,
    generations: SharedGenerations,
    /// The state directory the journal is in, locked until the last
    /// heartbeat was handled.
    _state: StateDir,
}

impl Heartbeats {
    /// Starts the sender task; `interval` is the agent's own (`--interval`).
    /// `rebase`: where to ask the procfs source for a new epoch when the
    /// collector cannot take its readings any more (`None` for eBPF). What
    /// the reboot journal in `state` holds is delivered first. `hangup`:
    /// SIGHUP, listened for since the start, which reads the token file again.
    pub fn start(
        config: CollectorConfig,
        interval: Duration,
        rebase: Option<Rebase>,
        state: StateDir,
        hangup: Option<Signal>,
    ) -> Self {
        let journal = state.journal();
        let generations = Arc::new(Mutex::new(state.generations()));
        tracing::info!(collector = %config.url, "sending heartbeats every {}", human(interval));
        let final_timeout = config.final_timeout;
        let token_watch = token::spawn_watch(
            config.credentials.clone(),
            config.token_source.clone(),
            hangup,
            token::POLL_EVERY,
        );
        let (latest, readings) = watch::channel(None);
        let (interval_tx, interval_rx) = watch::channel(interval);
        let client = Client::new(config);
        let sender = Sender {
            client: client.clone(),
            readings,
            interval: interval_tx,
            own_interval: interval,
            backoff: Backoff::new(BACKOFF_BASE, BACKOFF_CAP),
            failures: 0,
            delivered_once: false,
            failure_log: FailureLog::default(),
            rebase,
            rebased_from: None,
            last_applied: None,
            generations: Arc::clone(&generations),
            stale_run: StaleRun::default(),
        };
        Self {
            latest,
            interval: interval_rx,
            task: tokio::spawn(sender.run(journal.clone())),
            token_watch,
            client,
            final_timeout,
            journal,
            generations,
            _state: state,
        }
    }

    /// Hands a reading to the sender, replacing any not sent yet. Never waits.
    pub fn publish(&self, reading: Reading) {
        self.latest.send_replace(Some(Arc::new(reading)));
    }

    /// Resolves when the collector asked for another report interval.
    pub async fn interval_changed(&mut self) -> Duration {
        if self.interval.changed().await.is_err() {
            // The sender task ended (it only does when stopped): no more news.
            std::future::pending::<()>().await;
        }
        *self.interval.borrow_and_update()
    }

    /// Stops the sender, writes `last` (or the newest reading published,
    /// when the last one could not be taken) to the reboot journal, and
    /// tries for at most the final timeout to deliver what the journal
    /// holds. Returns whether all of it was delivered.
    pub async fn finish(mut self, last: Option<Reading>) -> bool {
        // A call in flight is dropped; the last reading supersedes it. The
        // task changes the journal only between its awaits, so it is whole.
        self.task.abort();
        let _ = (&mut self.task).await;
        // The token in use now is the one the last heartbeat carries.
        if let Some(watch) = self.token_watch.take() {
            watch.abort();
        }
        let reading = last.map(Arc::new).or_else(|| self.latest.borrow().clone());
        let mut pending = Pending::load(self.journal.clone());
        if let Some(reading) = reading {
            let generation = generation_of(&self.generations, &reading);
            pending.record(last::final_request(&reading, generation));
        }
        last::deliver_on_stop(&mut self.client, &mut pending, self.final_timeout).await
    }
}

/// Adds `reading`, the last of a counter set the agent will not read again
/// (one of an older layout it took over), to the reboot journal in `state`,
/// so that the sender delivers it before any regular heartbeat.
pub fn journal_last_of_set(state: &StateDir, reading: &Reading) {
    let snapshot = &reading.snapshot;
    let generation = state.generations().of(&snapshot.boot_id, &snapshot.epoch);
    let mut pending = Pending::load(state.journal());
    pending.record(request::build(reading, &NodeInfo::current(), generation));
}

/// A duration for people, to the millisecond.
pub fn human(duration: Duration) -> humantime::FormattedDuration {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(millis))
}

/// The sender task's state.
struct Sender {
    client: Client,
    readings: watch::Receiver<Option<Arc<Reading>>>,
    interval: watch::Sender<Duration>,
    own_interval: Duration,
    backoff: Backoff,
    /// Failed attempts since the last delivery.
    failures: u32,
    delivered_once: bool,
    failure_log: FailureLog,
    /// Where to ask the procfs source for a new epoch (`None`: eBPF).
    rebase: Option<Rebase>,
    /// The epoch a new one was last asked for: readings of it still on their
    /// way are dropped without asking again.
    rebased_from: Option<String>,
    /// The last reading the collector applied, for the log when counts are
    /// lost.
    last_applied: Option<Arc<Reading>>,
    generations: SharedGenerations,
    /// STALE answers in a row for the current counter set.
    stale_run: StaleRun,
}

impl Sender {
    /// Delivers the journal, then every new reading until aborted (or the
    /// report side is gone).
    async fn run(mut self, journal: Journal) {
        self.deliver_journal(journal).await;
        while self.readings.changed().await.is_ok() {
            self.deliver_newest().await;
        }
    }

    /// Delivers what the reboot journal holds, oldest first, retrying with
    /// the usual backoff while the collector is away. Regular heartbeats
    /// wait meanwhile (the newest reading is kept; the counters are
    /// cumulative, so nothing is lost).
    async fn deliver_journal(&mut self, journal: Journal) {
        let mut pending = Pending::load(journal);
        if !pending.is_empty() {
            tracing::info!(
                path = %pending.path().display(),
                heartbeats = pending.len(),
                "found a reboot journal: delivering it before any other heartbeat"
            );
        }
        while let Some(request) = pending.first().cloned() {
            match self.client.send_request(request, None).await {
                Ok(reply) => {
                    self.reached();
                    self.follow_interval(&reply);
                    self.learn(&reply);
                    pending.answered(&reply);
                }
                Err(error) if error.is_permanent() => pending.rejected(&error),
                Err(error) => self.retry_after(&error).await,
            }
        }
    }

    /// Logs a failed attempt and waits for the next one: as long as the
    /// collector asked, or else by the backoff.
    async fn retry_after(&mut self, error: &SendError) {
        self.failures = self.failures.saturating_add(1);
        let delay = error
            .retry_hint()
            .unwrap_or_else(|| self.backoff.next_delay());
        self.failure_log
            .log(error, self.failures, delay, self.client.url());
        tokio::time::sleep(delay).await;
    }

    /// Sends the newest reading, backing off and retrying (each time with the
    /// newest reading) until one is delivered.
    async fn deliver_newest(&mut self) {
        let mut raises = 0;
        loop {
            let Some(reading) = self.readings.borrow_and_update().clone() else {
                return;
            };
            let generation = generation_of(&self.generations, &reading);
            let request = request::build(&reading, &NodeInfo::current(), generation);
            match self.client.send_request(request, None).await {
                Ok(reply) => {
                    self.delivered(&reading, &reply);
                    if reply.outcome() != Outcome::Stale {
                        return;
                    }
                    if reply.stale_reason() == StaleReason::OlderGeneration && raises < MAX_RAISES {
                        raises += 1;
                        self.raise(&reading, generation, &reply);
                        continue;
                    }
                    self.stale_run
                        .stale(&reading, generation, &reply, self.client.url());
                    if reply.applied_sequence == 0 {
                        self.behind(&reading);
                    }
                    return;
                }
                Err(error) if error.is_backwards() && self.can_rebase(&reading) => {
                    // Never accepted however often retried: a new epoch.
                    self.refused_backwards(&reading, &error);
                    return;
                }
                Err(error) => self.retry_after(&error).await,
            }
        }
    }

    fn delivered(&mut self, reading: &Arc<Reading>, reply: &HeartbeatReply) {
        self.reached();
        self.learn(reply);
        if reply.outcome() == Outcome::Applied {
            self.last_applied = Some(Arc::clone(reading));
        }
        if matches!(reply.outcome(), Outcome::Applied | Outcome::Duplicate) {
            self.stale_run.over(self.client.url());
        }
        match reply.outcome() {
            Outcome::Applied | Outcome::Duplicate | Outcome::Stale => tracing::debug!(
                sequence = reading.sequence,
                outcome = reply.outcome().as_str_name(),
                applied_sequence = reply.applied_sequence,
                "heartbeat delivered"
            ),
            Outcome::Unspecified => tracing::warn!(
                sequence = reading.sequence,
                "the collector's reply has no outcome (a newer or broken collector?)"
            ),
        }
        self.follow_interval(reply);
    }

    /// The collector answered: the outage (if any) is over.
    fn reached(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                collector = self.client.url(),
                "collector reachable again after {} failed attempts",
                self.failures
            );
        } else if !self.delivered_once {
            tracing::info!(
                collector = self.client.url(),
                "the collector receives our heartbeats"
            );
        }
        self.failures = 0;
        self.delivered_once = true;
        self.backoff.reset();
        self.failure_log = FailureLog::default();
    }

    /// Remembers the generation the collector follows: the next counter
    /// set starts above it.
    fn learn(&self, reply: &HeartbeatReply) {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .seen(reply.current_generation);
    }

    /// The collector never followed the reading's counter set and follows
    /// one of a generation not below ours: our state directory was lost
    /// (or is new). Raise the set above it; it then counts in full, once.
    fn raise(&self, reading: &Reading, generation: u64, reply: &HeartbeatReply) {
        let snapshot = &reading.snapshot;
        let raised = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .raise(&snapshot.boot_id, &snapshot.epoch, reply.current_generation);
        tracing::warn!(
            collector = self.client.url(),
            boot_id = %snapshot.boot_id,
            epoch = %snapshot.epoch,
            generation,
            collector_generation = reply.current_generation,
            raised_to = raised,
            "the collector follows a counter set of a higher generation than ours (was this \
             node's state directory lost or new?); this counter set was never counted, so its \
             generation is raised and it is sent again: it counts in full"
        );
    }

    /// Follows the report interval the reply asks for.
    fn follow_interval(&mut self, reply: &HeartbeatReply) {
        let wanted = asked_interval(reply.heartbeat_interval_ms, self.own_interval);
        if wanted != *self.interval.borrow() {
            tracing::info!(
                "report interval now {} ({})",
                human(wanted),
                if reply.heartbeat_interval_ms == 0 {
                    "our own"
                } else {
                    "asked by the collector"
                }
            );
            self.interval.send_replace(wanted);
        }
    }
}

impl Sender {
    /// Whether a new epoch can be asked for this reading's counters.
    fn can_rebase(&self, reading: &Reading) -> bool {
        self.rebase.is_some() && reading.snapshot.source == SourceKind::Procfs
    }

    /// Asks for a new epoch unless one was asked for this reading's epoch
    /// already; returns whether it asked.
    fn rebase_once(&mut self, reading: &Reading) -> bool {
        let Some(rebase) = &self.rebase else {
            return false;
        };
        if !self.can_rebase(reading)
            || self.rebased_from.as_deref() == Some(reading.snapshot.epoch.as_str())
        {
            return false;
        }
        rebase.request();
        self.rebased_from = Some(reading.snapshot.epoch.clone());
        true
    }

    /// The last reading applied in this process, as log fields (0: none).
    fn last_applied(&self) -> (u64, u64, u64) {
        self.last_applied.as_ref().map_or((0, 0, 0), |r| {
            let (rx, tx) = r.snapshot.totals();
            (r.sequence, rx, tx)
        })
    }

    /// The collector refused the procfs counters as going backwards.
    fn refused_backwards(&mut self, reading: &Reading, error: &SendError) {
        let (rx, tx) = reading.snapshot.totals();
        if !self.rebase_once(reading) {
            tracing::debug!(
                epoch = %reading.snapshot.epoch,
                sequence = reading.sequence,
                error = %error,
                "refused a reading of the epoch being replaced; waiting for the new epoch"
            );
            return;
        }
        let (last_sequence, last_rx, last_tx) = self.last_applied();
        tracing::warn!(
            collector = self.client.url(),
            epoch = %reading.snapshot.epoch,
            sequence = reading.sequence,
            rx_bytes = rx,
            tx_bytes = tx,
            last_applied_here_sequence = last_sequence,
            last_applied_here_rx_bytes = last_rx,
            last_applied_here_tx_bytes = last_tx,
            error = %error,
            "the collector refused the procfs counters as going backwards (interfaces gone or \
             reset while no agent was running?); starting a new procfs epoch. Its first \
             heartbeat is only a baseline: the bytes counted since the last heartbeat the \
             collector applied are lost"
        );
    }

    /// The collector answered stale without a position for the reading's
    /// epoch: it follows a later epoch. For procfs, that is one an earlier
    /// agent started by a rebase (or the eBPF counters'): catch up with a new
    /// one, or every heartbeat of this process would stay stale.
    fn behind(&mut self, reading: &Reading) {
        if !self.rebase_once(reading) {
            return;
        }
        let (rx, tx) = reading.snapshot.totals();
        tracing::warn!(
            collector = self.client.url(),
            epoch = %reading.snapshot.epoch,
            sequence = reading.sequence,
            rx_bytes = rx,
            tx_bytes = tx,
            "the collector follows a later counter epoch than this procfs reading's (one an \
             earlier agent started, or the eBPF counters'); starting a new procfs epoch. Its \
             first heartbeat is only a baseline: the bytes counted since the last heartbeat \
             the collector applied are lost"
        );
    }
}

/// STALE answers in a row for the agent's own current counter set: nothing
/// of it is counted. Logged as an error from the [`STALE_RUN_LOGGED`]th,
/// then at most every [`REPEAT_LOG_EVERY`].
#[derive(Debug, Default)]
struct StaleRun {
    answers: u32,
    logged: Option<Instant>,
}

impl StaleRun {
    fn stale(&mut self, reading: &Reading, generation: u64, reply: &HeartbeatReply, url: &str) {
        self.answers = self.answers.saturating_add(1);
        let reason = reply.stale_reason();
        let snapshot = &reading.snapshot;
        let quiet = self.answers < STALE_RUN_LOGGED
            || self
                .logged
                .is_some_and(|at| at.elapsed() < REPEAT_LOG_EVERY);
        if quiet {
            tracing::debug!(
                epoch = %snapshot.epoch,
                sequence = reading.sequence,
                reason = reason.as_str_name(),
                "heartbeat answered STALE"
            );
            return;
        }
        self.logged = Some(Instant::now());
        tracing::error!(
            collector = url,
            boot_id = %snapshot.boot_id,
            epoch = %snapshot.epoch,
            generation,
            collector_generation = reply.current_generation,
            sequence = reading.sequence,
            reason = reason.as_str_name(),
            stale_answers = self.answers,
            "the collector answers this node's heartbeats STALE: nothing this agent counts now \
             is stored. {}",
            stale_advice(reason)
        );
    }

    /// A heartbeat of the current set was applied again.
    fn over(&mut self, url: &str) {
        if self.answers >= STALE_RUN_LOGGED {
            tracing::info!(
                collector = url,
                stale_answers = self.answers,
                "the collector counts this node's heartbeats again"
            );
        }
        *self = Self::default();
    }
}

/// What to do about STALE answers for the current counter set, by reason.
fn stale_advice(reason: StaleReason) -> &'static str {
    match reason {
        StaleReason::Superseded => {
            "It follows a later counter set for this node, so this one never counts again. Is \
             another agent sending with this node's token (each node needs its own)? Once that \
             is fixed, start a new counter set here: `tally-agent detach`, then start the \
             agent again."
        }
        StaleReason::EarlierInBoot => {
            "It follows a counter set of this boot that was read later than this one: another \
             agent on this host sends with this node's token? Stop it, then start a new counter \
             set here: `tally-agent detach`, then start the agent again."
        }
        StaleReason::EarlierReading => {
            "It applied a later reading of this very counter set than the one sent: another \
             agent reads the same pinned counters with this node's token? Stop it."
        }
        StaleReason::OlderGeneration => {
            "It follows a counter set of a higher generation, and raising ours did not help: \
             another agent sends with this node's token? Stop it, then start a new counter set \
             here: `tally-agent detach`, then start the agent again."
        }
        StaleReason::Unspecified => {
            "The collector gives no reason (an older version, which orders counter sets by the \
             node's clock): if this node's clock was behind when its counters started, upgrade \
             the collector, or start a new counter set with the clock right: `tally-agent \
             detach`, then start the agent again."
        }
    }
}

/// The interval to report at after a reply asking for `asked_ms`: ours for 0,
/// else what was asked, at least 1 s and at most 1 h.
pub fn asked_interval(asked_ms: u32, own: Duration) -> Duration {
    if asked_ms == 0 {
        return own;
    }
    Duration::from_millis(u64::from(asked_ms.max(limits::MIN_INTERVAL_MS))).min(MAX_ASKED_INTERVAL)
}

/// Logs failures without flooding: a failure is logged at its level when its
/// description changed or a minute passed since; at debug otherwise.
#[derive(Debug, Default)]
struct FailureLog {
    last: Option<(String, Instant)>,
}

impl FailureLog {
    fn log(&mut self, error: &SendError, attempts: u32, retry_in: Duration, url: &str) {
        let text = error.to_string();
        let loud = self
            .last
            .as_ref()
            .is_none_or(|(last, at)| *last != text || at.elapsed() >= REPEAT_LOG_EVERY);
        let retry_in = human(retry_in).to_string();
        if !loud {
            tracing::debug!(collector = url, attempts, %retry_in, error = %text, "heartbeat failed");
            return;
        }
        self.last = Some((text.clone(), Instant::now()));
        match (error.severity(), error.hint()) {
            (Severity::Error, hint) => tracing::error!(
                collector = url,
                attempts,
                %retry_in,
                error = %text,
                "heartbeat not delivered: {}; retrying",
                hint.unwrap_or("see the error")
            ),
            (Severity::Warn, _) => tracing::warn!(
                collector = url,
                attempts,
                %retry_in,
                error = %text,
                "heartbeat not delivered; retrying (counting goes on, and the next heartbeat \
                 delivered carries it all)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_collector_may_change_the_interval_within_bounds() {
        let own = Duration::from_secs(5);
        assert_eq!(asked_interval(0, own), own);
        assert_eq!(asked_interval(10_000, own), Duration::from_secs(10));
        assert_eq!(asked_interval(1, own), Duration::from_secs(1));
        assert_eq!(asked_interval(999, own), Duration::from_secs(1));
        assert_eq!(asked_interval(u32::MAX, own), Duration::from_secs(3600));
    }
}
