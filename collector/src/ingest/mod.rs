//! Ingestion: heartbeats from any number of connections are queued, and a
//! few writer tasks take them off the queue in batches (whatever has queued
//! up while the previous batch was being written, up to `max_batch`), each
//! batch in one transaction ([`store::apply`]). Under light load a batch is
//! one heartbeat; under heavy load one commit carries hundreds, which is what
//! lets one collector keep up with thousands of nodes. Each batch's size,
//! transaction time and outcomes are counted in [`Metrics`].

pub(crate) mod batch;
pub(crate) mod entries;
mod plan;
pub(crate) mod signals;
pub mod store;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use sqlx::PgPool;
use tally_proto::v1::Outcome;
use tokio::sync::{mpsc, oneshot};

pub use self::batch::{Applied, BatchTime, DEFAULT_MAX_INTERFACE_NAMES, Job};
use crate::{
    billing::period::Schedule,
    error::{DbFailure, Error},
    metrics::Metrics,
    quota,
};

/// Most heartbeats in one transaction, unless set (`--max-batch`).
pub const DEFAULT_MAX_BATCH: u32 = 512;
/// Writer tasks, unless set (`--writers`).
pub const DEFAULT_WRITERS: u32 = 4;

/// How ingestion runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most heartbeats in one transaction.
    pub max_batch: usize,
    /// Writer tasks (each holds one database connection while writing).
    pub writers: usize,
    /// Heartbeats waiting beyond this are refused as "unavailable".
    pub queue: usize,
    /// The period-reset schedule: the anchor day of nodes whose billing
    /// settings have none.
    pub schedule: Option<Schedule>,
    /// What recording quota events does besides storing them.
    pub quota: quota::Config,
    /// A node's clock further off than this is warned about.
    pub max_clock_skew: Duration,
    /// Longest a batch may take in the database; past it, it is rolled
    /// back and its heartbeats answered `UNAVAILABLE`.
    pub batch_deadline: Duration,
    /// Interface names with a history row per node and minute; more names
    /// in one minute (a node that makes up names) have none (their traffic
    /// is still in the node's totals).
    pub max_interface_names: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH as usize,
            writers: DEFAULT_WRITERS as usize,
            queue: 65_536,
            schedule: None,
            quota: quota::Config::default(),
            max_clock_skew: Duration::from_millis(batch::DEFAULT_MAX_CLOCK_SKEW_MS as u64),
            batch_deadline: Duration::from_secs(10),
            max_interface_names: i64::from(batch::DEFAULT_MAX_INTERFACE_NAMES),
        }
    }
}

struct Queued {
    job: Job,
    received: Instant,
    reply: oneshot::Sender<Result<Applied, Error>>,
}

/// The handle heartbeat handlers submit to.
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Queued>,
}

impl Ingest {
    /// Starts the writer tasks on the current runtime.
    pub fn start(pool: PgPool, config: Config, metrics: Arc<Metrics>) -> Self {
        let (queue, receiver) = mpsc::channel(config.queue.max(1));
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for writer in 0..config.writers.max(1) {
            tokio::spawn(write_loop(
                writer,
                pool.clone(),
                receiver.clone(),
                config.clone(),
                metrics.clone(),
            ));
        }
        Self { queue }
    }

    /// Queues `job` and waits until its batch is committed (or failed).
    pub async fn submit(&self, job: Job, received: Instant) -> Result<Applied, Error> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Queued {
                job,
                received,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    Error::Unavailable("too many heartbeats queued")
                }
                mpsc::error::TrySendError::Closed(_) => Error::Unavailable("shutting down"),
            })?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the writer stopped"))?
    }
}

async fn write_loop(
    writer: usize,
    pool: PgPool,
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>,
    config: Config,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(config.max_batch);
    loop {
        {
            let mut receiver = receiver.lock().await;
            if receiver.recv_many(&mut batch, config.max_batch).await == 0 {
                return;
            }
        }
        write_batch(writer, &pool, &mut batch, &config, &metrics).await;
    }
}

async fn write_batch(
    writer: usize,
    pool: &PgPool,
    batch: &mut Vec<Queued>,
    config: &Config,
    metrics: &Metrics,
) {
    let now = Utc::now().naive_utc();
    let max_clock_skew_ms = i64::try_from(config.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
    let time = BatchTime::new(now, config.schedule.map(|s| s.day()))
        .with_quota(config.quota)
        .with_max_clock_skew_ms(max_clock_skew_ms)
        .with_max_interface_names(config.max_interface_names);
    let (jobs, waiting): (Vec<Job>, Vec<_>) = batch
        .drain(..)
        .map(|q| (q.job, (q.received, q.reply)))
        .unzip();
    let started = Instant::now();
    let result = match pool.acquire().await {
        Ok(mut conn) => {
            let began = Instant::now();
            match tokio::time::timeout(
                config.batch_deadline,
                apply_isolating(&mut conn, &jobs, time),
            )
            .await
            {
                Ok(applied) => applied.map(|results| (results, began.elapsed())),
                // The transaction is rolled back with the connection.
                Err(_) => {
                    conn.close_on_drop();
                    Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the batch took longer than {} (--statement-timeout)",
                            humantime::format_duration(config.batch_deadline)
                        ),
                    )))
                }
            }
        }
        Err(error) => Err(error),
    };
    match result {
        Ok((results, in_database)) => {
            tracing::debug!(
                writer,
                heartbeats = jobs.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "batch committed"
            );
            metrics.batch(jobs.len(), in_database.as_secs_f64());
            count_outcomes(metrics, &results);
            for ((received, reply), result) in waiting.into_iter().zip(results) {
                // Each heartbeat's time from receipt to its answer (what the
                // ingest benchmark measures, from this event).
                tracing::trace!(
                    latency_us = u64::try_from(received.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "heartbeat answered"
                );
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            tracing::warn!(writer, heartbeats = jobs.len(), %error, "batch failed; nothing of it was stored");
            metrics.batch_failed();
            let message = error.to_string();
            for (_, reply) in waiting {
                let _ = reply.send(Err(Error::BatchFailed(message.clone())));
            }
        }
    }
}

/// Applies `jobs` in one transaction; when a statement fails on what one
/// heartbeat carries (a data or constraint error the checks before did not
/// catch), the halves are applied apart, down to the heartbeat at fault,
/// which alone is refused: one node's bad input never fails another's. Any
/// other failure (connection, timeout) fails the whole batch.
pub async fn apply_isolating(
    conn: &mut sqlx::PgConnection,
    jobs: &[Job],
    time: BatchTime,
) -> Result<Vec<Result<Applied, Error>>, sqlx::Error> {
    match store::apply(conn, jobs, time).await {
        Ok(results) => Ok(results),
        Err(error) if caused_by_data(&error) && jobs.len() > 1 => {
            tracing::warn!(heartbeats = jobs.len(), %error, "a batch failed on a heartbeat's data; applying its halves apart");
            let (left, right) = jobs.split_at(jobs.len() / 2);
            let mut results = Box::pin(apply_isolating(conn, left, time)).await?;
            results.extend(Box::pin(apply_isolating(conn, right, time)).await?);
            Ok(results)
        }
        Err(error) if caused_by_data(&error) => {
            let node = jobs.first().map(|j| j.credentials.node_id.as_str());
            tracing::warn!(node, %error, "the database refused a heartbeat's data; it is refused");
            Ok(vec![Err(Error::Invalid(
                "the database refused what the heartbeat carries".to_owned(),
            ))])
        }
        Err(error) => Err(error),
    }
}

/// Whether a failed statement failed on the values it was given (SQLSTATE
/// classes 22, data exception, and 23, integrity constraint violation).
fn caused_by_data(error: &sqlx::Error) -> bool {
    DbFailure::of(error).caused_by_values()
}

/// Counts a committed batch's outcomes (refusals for the heartbeat's own
/// fault as rejected).
fn count_outcomes(metrics: &Metrics, results: &[Result<Applied, Error>]) {
    let (mut applied, mut duplicate, mut stale, mut rejected) = (0, 0, 0, 0);
    for result in results {
        match result {
            Ok(a) => match a.outcome {
                Outcome::Applied => applied += 1,
                Outcome::Duplicate => duplicate += 1,
                Outcome::Stale => stale += 1,
                Outcome::Unspecified => {}
            },
            Err(error) if !error.is_transient() => rejected += 1,
            Err(_) => {}
        }
    }
    metrics.heartbeats(Outcome::Applied, applied);
    metrics.heartbeats(Outcome::Duplicate, duplicate);
    metrics.heartbeats(Outcome::Stale, stale);
    metrics.rejected(rejected);
}
