//! The `tally.v1.Heartbeat` service.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tally_proto::v1::{HeartbeatReply, HeartbeatRequest, heartbeat_server::Heartbeat};
use tonic::{Request, Response, Status};

use crate::{
    auth,
    error::Error,
    ingest::{Ingest, Job},
    validate,
};

/// Answers heartbeats by queuing them for [`Ingest`].
pub struct HeartbeatService {
    ingest: Ingest,
    /// The interval to ask agents for (0: let them choose).
    interval_ms: u32,
    /// How far ahead of ours a node's clock may be.
    max_skew_ns: i64,
}

impl HeartbeatService {
    pub fn new(ingest: Ingest, interval_ms: u32, max_skew_ns: i64) -> Self {
        Self {
            ingest,
            interval_ms,
            max_skew_ns,
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
        let credentials = auth::from_bearer(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
        )
        .inspect_err(|e| tracing::info!(error = %e, "heartbeat refused"))?;
        let node = credentials.node_id.clone();
        let heartbeat = validate::heartbeat(request.into_inner(), unix_now_ns(), self.max_skew_ns)
            .inspect_err(|e| tracing::warn!(%node, error = %e, "heartbeat refused"))?;
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
        Ok(Response::new(HeartbeatReply {
            outcome: applied.outcome.into(),
            heartbeat_interval_ms: self.interval_ms,
            applied_sequence: u64::try_from(applied.sequence).unwrap_or(0),
        }))
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
