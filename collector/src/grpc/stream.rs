//! The `Stream` call: many heartbeats of one node on one long-lived call,
//! each answered in order, one at a time (an agent sends one and waits for
//! its reply). A refusal is a reply carrying the status `Send` would answer,
//! and the stream goes on; only a refused token ends it (UNAUTHENTICATED).
//! A stream that sends nothing for `--stream-idle-timeout` is ended (OK):
//! the agent opens a new one with its next heartbeat, and a caller that
//! only holds streams open holds them no longer.

use std::{
    pin::Pin,
    time::{Duration, Instant},
};

use futures_util::{Stream, stream};
use tally_proto::v1::{HeartbeatReply, HeartbeatRequest};
use tokio::sync::watch;
use tonic::{Status, Streaming};

use super::Apply;
use crate::{
    auth::Credentials,
    error::{self, Error},
};

/// The replies of one stream, in the order of its requests.
pub type Replies = Pin<Box<dyn Stream<Item = Result<HeartbeatReply, Status>> + Send>>;

struct State {
    apply: Apply,
    credentials: Credentials,
    requests: Streaming<HeartbeatRequest>,
    idle_timeout: Duration,
    stopping: watch::Receiver<bool>,
    /// The last item was the status that ends the stream.
    ended: bool,
}

/// Answers each of `requests` as `credentials`' node. The stream ends when
/// the agent ends its side, when the token is refused, or when the
/// collector begins to shut down (between two heartbeats, never while one
/// is being applied).
pub(super) fn replies(
    apply: Apply,
    credentials: Credentials,
    requests: Streaming<HeartbeatRequest>,
    idle_timeout: Duration,
    stopping: watch::Receiver<bool>,
) -> Replies {
    let state = State {
        apply,
        credentials,
        requests,
        idle_timeout,
        stopping,
        ended: false,
    };
    Box::pin(stream::unfold(state, |mut state| async move {
        if state.ended {
            return None;
        }
        let next = tokio::select! {
            biased;
            _ = state.stopping.wait_for(|stopping| *stopping) => return None,
            next = tokio::time::timeout(state.idle_timeout, state.requests.message()) => match next {
                Ok(next) => next,
                Err(_) => {
                    tracing::debug!(
                        node = %state.credentials.node_id,
                        "ending a heartbeat stream that sent nothing for {:?}",
                        state.idle_timeout
                    );
                    return None;
                }
            },
        };
        let request = match next {
            Ok(Some(request)) => request,
            // The agent ended its side.
            Ok(None) => return None,
            // A broken message, or the agent is gone.
            Err(status) => {
                tracing::debug!(node = %state.credentials.node_id, %status, "heartbeat stream failed");
                state.ended = true;
                return Some((Err(status), state));
            }
        };
        let received = Instant::now();
        let reply = match state
            .apply
            .heartbeat(state.credentials.clone(), request, received)
            .await
        {
            Ok(reply) => Ok(reply),
            Err(error @ Error::Unauthenticated(_)) => {
                state.ended = true;
                Err(Status::from(error))
            }
            Err(error) => Ok(HeartbeatReply {
                refusal: Some(error::refusal(error)),
                ..HeartbeatReply::default()
            }),
        };
        Some((reply, state))
    }))
}
