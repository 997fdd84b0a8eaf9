//! The `tally.v1.Heartbeat` service, behind its token check
//! ([`authenticate`]).

pub mod authenticate;
pub mod pace;
mod stream;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tally_proto::v1::{HeartbeatReply, HeartbeatRequest, heartbeat_server::Heartbeat};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth::{self, Credentials},
    error::Error,
    ingest::{Ingest, Job},
    metrics::Metrics,
    validate,
};

use self::pace::Pace;

/// Answers heartbeats by queuing them for [`Ingest`].
pub struct HeartbeatService {
    apply: Apply,
    /// A `Stream` that sends nothing for this long is ended.
    stream_idle_timeout: Duration,
    /// Turns true when the collector begins to shut down: open streams end.
    stopping: watch::Receiver<bool>,
}

impl HeartbeatService {
    /// `stopping` turns true when the server begins to shut down, so that
    /// open `Stream` calls end (a graceful shutdown waits for every call).
    /// Heartbeats refused before they reach `ingest` are counted in
    /// `metrics`.
    pub fn new(
        ingest: Ingest,
        interval_ms: u32,
        min_heartbeat_interval: Duration,
        stream_idle_timeout: Duration,
        stopping: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            apply: Apply {
                ingest,
                interval_ms,
                pace: Arc::new(Pace::new(min_heartbeat_interval)),
                metrics,
            },
            stream_idle_timeout,
            stopping,
        }
    }
}

#[tonic::async_trait]
impl Heartbeat for HeartbeatService {
    async fn send(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let received = Instant::now();
        let credentials = credentials(&request).inspect_err(|_| self.apply.metrics.rejected(1))?;
        let reply = self
            .apply
            .heartbeat(credentials, request.into_inner(), received)
            .await?;
        Ok(Response::new(reply))
    }

    type StreamStream = stream::Replies;

    async fn stream(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let credentials = credentials(&request).inspect_err(|_| self.apply.metrics.rejected(1))?;
        Ok(Response::new(stream::replies(
            self.apply.clone(),
            credentials,
            request.into_inner(),
            self.stream_idle_timeout,
            self.stopping.clone(),
        )))
    }
}

/// The credentials [`authenticate`] admitted the call with, or (without
/// that interceptor in front) the ones in its `authorization` metadata.
fn credentials<T>(request: &Request<T>) -> Result<Credentials, Status> {
    if let Some(credentials) = request.extensions().get::<Credentials>() {
        return Ok(credentials.clone());
    }
    let value = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let credentials = auth::from_bearer(value)
        .inspect_err(|e| tracing::info!(error = %e, "heartbeat refused"))?;
    Ok(credentials)
}

/// What every heartbeat goes through, whichever call carried it.
#[derive(Clone)]
struct Apply {
    ingest: Ingest,
    /// The interval to ask agents for (0: let them choose).
    interval_ms: u32,
    /// How often each node's heartbeats are taken.
    pace: Arc<Pace>,
    /// Counts refusals before ingestion (ingestion counts the rest).
    metrics: Arc<Metrics>,
}

impl Apply {
    /// Checks `request` and applies it as `credentials`' node (logging a
    /// refusal).
    async fn heartbeat(
        &self,
        credentials: Credentials,
        request: HeartbeatRequest,
        received: Instant,
    ) -> Result<HeartbeatReply, Error> {
        let node = credentials.node_id.clone();
        if let Err(retry_after) = self.pace.admit(&node, received) {
            self.metrics.too_frequent();
            tracing::debug!(%node, ?retry_after, "heartbeat refused: too frequent");
            return Err(Error::TooFrequent {
                min_interval: self.pace.min_interval(),
                retry_after,
            });
        }
        let heartbeat = validate::heartbeat(request, unix_now_ns()).inspect_err(|e| {
            self.metrics.rejected(1);
            tracing::warn!(%node, error = %e, "heartbeat refused");
        })?;
        let applied = self
            .ingest
            .submit(
                Job {
                    credentials,
                    heartbeat,
                },
                received,
            )
            .await
            .inspect_err(|e| log_refusal(&node, e))?;
        tracing::trace!(%node, outcome = ?applied.outcome, "heartbeat");
        Ok(HeartbeatReply {
            outcome: applied.outcome.into(),
            heartbeat_interval_ms: self.interval_ms,
            applied_sequence: u64::try_from(applied.sequence).unwrap_or(0),
            refusal: None,
            stale_reason: applied.stale_reason.into(),
            current_generation: u64::try_from(applied.current_generation).unwrap_or(0),
        })
    }
}

fn log_refusal(node: &str, error: &Error) {
    match error {
        Error::Backwards { .. } | Error::TotalOverflow(_) => {
            tracing::error!(%node, %error, "heartbeat refused")
        }
        e if e.is_transient() => tracing::debug!(%node, error = %e, "heartbeat not stored"),
        e => tracing::info!(%node, error = %e, "heartbeat refused"),
    }
}

fn unix_now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
