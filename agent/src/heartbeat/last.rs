//! The last heartbeat of a run, and the reboot journal that keeps it until
//! the collector answered it ([`crate::journal`]).
//!
//! On stop the final reading (`last_of_boot`) is added to the journal and
//! the journal is written (fsync'd) *before* anything is sent; then what the
//! journal holds is sent, oldest first, within the final timeout. At start,
//! the sender delivers what the journal holds before any regular heartbeat.
//! Each heartbeat leaves the journal once the collector answered it
//! (APPLIED, DUPLICATE or STALE: either way it never needs sending again),
//! or when the collector refused it for good (INVALID_ARGUMENT,
//! UNAUTHENTICATED, FAILED_PRECONDITION): then it is set aside in
//! `journal.rejected` with an error log.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use tally_proto::v1::{HeartbeatReply, HeartbeatRequest, Outcome};

use super::{
    backoff::Backoff,
    client::{Client, SendError},
    human,
    reading::Reading,
    request::{self, NodeInfo},
};
use crate::journal::{self, Journal};

/// The heartbeat for the final reading of a run (of a set of `generation`).
pub fn final_request(reading: &Reading, generation: u64) -> HeartbeatRequest {
    let mut request = request::build(reading, &NodeInfo::current(), generation);
    request.last_of_boot = true;
    request
}

/// The journal's heartbeats not answered yet, oldest first, as on disk.
#[derive(Debug)]
pub struct Pending {
    journal: Journal,
    entries: Vec<HeartbeatRequest>,
    /// Whether `entries` are on disk (a failed write leaves them in memory
    /// only).
    kept: bool,
}

impl Pending {
    /// What the journal holds now: nothing when there is none, or when it
    /// could not be read (logged; a corrupt one was moved aside).
    pub fn load(journal: Journal) -> Self {
        let entries = match journal.read() {
            Ok(entries) => entries.unwrap_or_default(),
            Err(error) => {
                tracing::error!(
                    path = %journal.path().display(),
                    %error,
                    "cannot read the reboot journal; going on without it"
                );
                Vec::new()
            }
        };
        Self {
            journal,
            entries,
            kept: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn path(&self) -> PathBuf {
        self.journal.path()
    }

    /// The oldest heartbeat not answered yet.
    pub fn first(&self) -> Option<&HeartbeatRequest> {
        self.entries.first()
    }

    /// Adds the final heartbeat of this run and writes the journal (with an
    /// fsync) before it is sent.
    pub fn record(&mut self, last: HeartbeatRequest) {
        let (entries, dropped) = journal::merge(std::mem::take(&mut self.entries), last);
        self.entries = entries;
        let path = self.journal.path();
        for lost in &dropped {
            tracing::error!(
                path = %path.display(),
                boot_id = %lost.boot_id,
                epoch = %lost.epoch,
                sequence = lost.sequence,
                "the reboot journal is full ({} runs never reached the collector); dropping \
                 its oldest heartbeat: the traffic of that run since its last delivered \
                 heartbeat is lost",
                journal::MAX_ENTRIES
            );
        }
        let Some(last) = self.entries.last() else {
            return;
        };
        match self.journal.write(&self.entries) {
            Ok(()) => {
                self.kept = true;
                tracing::info!(
                    path = %path.display(),
                    boot_id = %last.boot_id,
                    epoch = %last.epoch,
                    sequence = last.sequence,
                    heartbeats = self.entries.len(),
                    "journal written"
                );
            }
            Err(error) => {
                self.kept = false;
                tracing::error!(
                    path = %path.display(),
                    %error,
                    "cannot write the reboot journal: the last heartbeat is only sent, and \
                     lost if the collector cannot be reached now"
                );
            }
        }
    }

    /// The collector answered the oldest heartbeat: it leaves the journal.
    pub fn answered(&mut self, reply: &HeartbeatReply) {
        if self.entries.is_empty() {
            return;
        }
        let done = self.entries.remove(0);
        tracing::info!(
            path = %self.journal.path().display(),
            boot_id = %done.boot_id,
            epoch = %done.epoch,
            sequence = done.sequence,
            outcome = reply.outcome().as_str_name(),
            applied_sequence = reply.applied_sequence,
            "journal delivered"
        );
        if reply.outcome() == Outcome::Unspecified {
            tracing::warn!(
                sequence = done.sequence,
                "the collector's reply has no outcome (a newer or broken collector?)"
            );
        }
        self.save();
    }

    /// The collector refused the oldest heartbeat for good: it is set aside
    /// in `journal.rejected`.
    pub fn rejected(&mut self, error: &SendError) {
        if self.entries.is_empty() {
            return;
        }
        let refused = self.entries.remove(0);
        let moved_to = match self.journal.write_rejected(std::slice::from_ref(&refused)) {
            Ok(path) => path.display().to_string(),
            Err(error) => {
                tracing::error!(%error, "cannot keep the refused heartbeat aside");
                String::new()
            }
        };
        tracing::error!(
            path = %self.journal.path().display(),
            %moved_to,
            boot_id = %refused.boot_id,
            epoch = %refused.epoch,
            sequence = refused.sequence,
            error = %error,
            "the collector refused the reboot journal's heartbeat for good: {}; set it aside \
             and going on (the traffic it carried since its run's last delivered heartbeat is \
             not counted)",
            error.hint().unwrap_or("see the error")
        );
        self.save();
    }

    /// Writes what is left, or removes the journal when nothing is.
    fn save(&mut self) {
        if !self.kept && !self.entries.is_empty() {
            // Never written: nothing on disk to bring up to date.
            return;
        }
        match self.journal.write(&self.entries) {
            Ok(()) => self.kept = true,
            Err(error) => tracing::error!(
                path = %self.journal.path().display(),
                %error,
                "cannot update the reboot journal; the next start sends what it holds again \
                 (the collector takes it as a duplicate)"
            ),
        }
    }
}

/// Sends the journal's heartbeats on stop, oldest first (the final one
/// last), each retried quickly until `timeout` has passed. Returns whether
/// all were answered.
pub async fn deliver_on_stop(
    client: &mut Client,
    pending: &mut Pending,
    timeout: Duration,
) -> bool {
    if pending.is_empty() {
        tracing::warn!("no reading to send as the last heartbeat");
        return false;
    }
    if timeout.is_zero() {
        tracing::info!(
            path = %pending.path().display(),
            "--final-heartbeat-timeout is 0s: exiting without a last heartbeat; the reboot \
             journal keeps it for the next start"
        );
        return false;
    }
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let mut last_error = None;
    while let Some(request) = pending.first().cloned() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!(
                sequence = request.sequence,
                path = %pending.path().display(),
                error = %last_error.map_or_else(String::new, |e: SendError| e.to_string()),
                "last heartbeat not delivered within {}; nothing is lost: the kernel keeps \
                 counting, and the reboot journal keeps the last reading for the next start, \
                 which delivers it first",
                human(timeout)
            );
            return false;
        }
        let last = pending.len() == 1;
        match client.send_request_once(request.clone(), Some(left)).await {
            Ok(reply) => {
                if last {
                    tracing::info!(
                        sequence = request.sequence,
                        outcome = reply.outcome().as_str_name(),
                        "last heartbeat delivered"
                    );
                }
                pending.answered(&reply);
                backoff.reset();
                continue;
            }
            Err(error) if error.is_permanent() => {
                pending.rejected(&error);
                continue;
            }
            Err(error) => {
                tracing::debug!(error = %error, "last heartbeat failed");
                last_error = Some(error);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(backoff.next_delay().min(left)).await;
    }
    true
}
