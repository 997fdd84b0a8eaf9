//! Live updates: every applied heartbeat and period reset is announced with
//! PostgreSQL's NOTIFY in the transaction that stores it, so that every
//! collector replica on the database hears every update (and only committed
//! ones). Each replica LISTENs and fans the events out to its own
//! subscribers (the SSE endpoint).

use std::sync::Arc;

use tokio::sync::broadcast;

/// The NOTIFY channel.
pub const CHANNEL: &str = "tally_events";

/// The events this replica has heard, for its subscribers.
#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Arc<str>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(4096);
        Self { sender }
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.sender.subscribe()
    }
}
