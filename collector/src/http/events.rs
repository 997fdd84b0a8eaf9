//! `GET /api/v1/events`: the live events as Server-Sent Events.
//!
//! Each event is `event: <type>` (`heartbeat`, `period_reset`, `nodes`,
//! `resync`) and `data: <JSON object>`: the contract's data fields plus the
//! `type` field again (`{"type":"resync"}` for a resync), so that a client
//! may also dispatch on the data alone. A comment line (`:`) is sent every
//! 15 s as keep-alive. A client that falls behind gets `resync` (refetch)
//! and continues with the newer events. The stream ends when the collector
//! begins to stop (else a graceful shutdown would wait for it forever).
//! At most `--max-event-streams` are open at once on one collector; more
//! are answered 503 `busy` with `Retry-After`.

use std::{convert::Infallible, time::Duration};

use axum::{
    Router,
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
    routing::get,
};
use futures_util::{Stream, StreamExt as _};
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use super::{AppState, auth::Reader};
use crate::events;

/// How often a keep-alive comment is sent.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/events", get(stream))
}

async fn stream(
    _: Reader,
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, crate::error::Error> {
    // Held as long as the stream is open.
    let permit = std::sync::Arc::clone(&state.event_streams)
        .try_acquire_owned()
        .map_err(|_| crate::error::Error::Busy("too many event streams open"))?;
    let heard = heard(state.events.subscribe()).map(move |event| {
        let _open = &permit;
        Ok(Event::default().event(event.kind.name()).data(&*event.data))
    });
    let mut stopping = state.stopping.clone();
    let stopped = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    Ok(Sse::new(heard.take_until(stopped)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// The events `receiver` gets, a `resync` in place of those it missed by
/// falling behind.
fn heard(receiver: broadcast::Receiver<events::Event>) -> impl Stream<Item = events::Event> {
    BroadcastStream::new(receiver).map(|item| match item {
        Ok(event) => event,
        Err(BroadcastStreamRecvError::Lagged(missed)) => {
            tracing::debug!(missed, "a slow event subscriber missed events; resync");
            events::Event::resync()
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::events::{Hub, Kind};

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_a_resync_then_the_newer_events() {
        let hub = Hub::new();
        let mut stream = Box::pin(heard(hub.subscribe()));
        let event = |i: usize| events::Event {
            kind: Kind::Nodes,
            data: Arc::from(format!(r#"{{"type":"nodes","n":{i}}}"#)),
        };
        hub.publish(event(0));
        let first = stream.next().await.expect("an event");
        assert_eq!(&*first.data, r#"{"type":"nodes","n":0}"#);
        // Far more than the backlog while the subscriber does not read.
        for i in 1..=10_000 {
            hub.publish(event(i));
        }
        let next = stream.next().await.expect("an event");
        assert_eq!(next.kind, Kind::Resync);
        assert_eq!(&*next.data, r#"{"type":"resync"}"#);
        let after = stream.next().await.expect("an event");
        assert_eq!(after.kind, Kind::Nodes, "then the events still held");
    }
}
