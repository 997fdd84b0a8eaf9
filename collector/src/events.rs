//! Live updates: every applied heartbeat, period reset and enrolment change
//! is announced with PostgreSQL's NOTIFY in the transaction that stores it,
//! so that every collector replica on the database hears every update (and
//! only committed ones, in commit order). Each replica LISTENs ([`listen`])
//! and fans the events out to its own subscribers through its [`Hub`] (the
//! SSE endpoint, `GET /api/v1/events`).
//!
//! # Wire format
//!
//! An event is one JSON object with a `type` field (`heartbeat`,
//! `period_reset`, `nodes`) beside the contract's data fields (counters as
//! decimal strings, timestamps RFC 3339 UTC with milliseconds); the SSE
//! endpoint sends exactly this object as the event's data. A transaction's
//! events are packed into as few NOTIFY payloads as fit PostgreSQL's limit
//! ([`MAX_PAYLOAD`]), in order: newline-separated JSON values, the first
//! being the payload's part number within its transaction. PostgreSQL
//! delivers identical payloads of one transaction only once; the part number
//! makes every payload of a transaction distinct, so that two packs of equal
//! events (a node's zero-traffic heartbeats in one batch) both arrive.

use std::{borrow::Cow, fmt::Write as _, sync::Arc, time::Duration};

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize, Serializer};
use sqlx::{
    PgConnection, PgPool,
    postgres::{PgListener, PgPoolOptions},
};
use tokio::sync::{broadcast, watch};

pub use crate::load::Load;

/// The NOTIFY channel.
pub const CHANNEL: &str = "tally_events";

/// The longest NOTIFY payload, in bytes (PostgreSQL's default build refuses
/// payloads of 8000 bytes or more).
pub const MAX_PAYLOAD: usize = 7999;

/// Events a subscriber may fall behind by before it is told to resync.
const BACKLOG: usize = 4096;

/// The kinds of events, by their SSE event name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Heartbeat,
    PeriodReset,
    Nodes,
    /// A node's usage crossed a quota threshold.
    Quota,
    /// An admin calibrated a node's counters.
    Calibration,
    /// A delta too large for its interface was held.
    AnomalyHeld,
    /// An anomaly (a held delta) was decided.
    Anomaly,
    /// A node's heartbeats were answered STALE several times in a row.
    Stale,
    /// Events may have been missed (the database connection was lost, or
    /// the subscriber fell behind): refetch.
    Resync,
}

impl Kind {
    /// The event's name (its `type` field, and the SSE `event:` line).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Heartbeat => "heartbeat",
            Kind::PeriodReset => "period_reset",
            Kind::Nodes => "nodes",
            Kind::Quota => "quota",
            Kind::Calibration => "calibration",
            Kind::AnomalyHeld => "anomaly_held",
            Kind::Anomaly => "anomaly",
            Kind::Stale => "stale",
            Kind::Resync => "resync",
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        [
            Kind::Heartbeat,
            Kind::PeriodReset,
            Kind::Nodes,
            Kind::Quota,
            Kind::Calibration,
            Kind::AnomalyHeld,
            Kind::Anomaly,
            Kind::Stale,
            Kind::Resync,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// One event as subscribers get it: its kind and its JSON object (with the
/// `type` field).
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: Kind,
    pub data: Arc<str>,
}

impl Event {
    /// The event telling a subscriber to refetch.
    pub fn resync() -> Event {
        Event {
            kind: Kind::Resync,
            data: Arc::from(r#"{"type":"resync"}"#),
        }
    }
}

/// A node's `traffic_stats` as an event carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[sqlx(rename_all = "camelCase")]
pub struct TrafficCounters {
    #[serde(serialize_with = "decimal")]
    pub total_upload: i64,
    #[serde(serialize_with = "decimal")]
    pub total_download: i64,
    #[serde(serialize_with = "decimal")]
    pub period_upload: i64,
    #[serde(serialize_with = "decimal")]
    pub period_download: i64,
    #[serde(serialize_with = "timestamp")]
    pub period_start: NaiveDateTime,
}

/// What happened to a node's enrolment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeChange {
    Added,
    Removed,
    /// Its token was rotated or revoked, or the grace of its previous
    /// token ended.
    Token,
}

/// An event to announce, as it is serialized.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notice<'a> {
    /// A heartbeat was applied; the node's traffic after it.
    #[serde(rename_all = "camelCase")]
    Heartbeat {
        node_id: &'a str,
        #[serde(serialize_with = "timestamp")]
        last_seen: NaiveDateTime,
        load: Load,
        traffic: TrafficCounters,
    },
    /// The node's period counters were reset; its traffic after the reset.
    #[serde(rename_all = "camelCase")]
    PeriodReset {
        node_id: &'a str,
        traffic: TrafficCounters,
    },
    /// A delta too large for its interface was held (an `anomalies` row)
    /// instead of counted.
    #[serde(rename_all = "camelCase")]
    AnomalyHeld {
        node_id: &'a str,
        interface: &'a str,
        #[serde(serialize_with = "decimal")]
        upload: i64,
        #[serde(serialize_with = "decimal")]
        download: i64,
    },
    /// A node's usage crossed a quota threshold (once per period and
    /// threshold): the `quota_events` row.
    #[serde(rename_all = "camelCase")]
    Quota {
        node_id: &'a str,
        node_name: &'a str,
        #[serde(serialize_with = "timestamp")]
        period_start: NaiveDateTime,
        /// Percent of the quota.
        threshold: i32,
        #[serde(serialize_with = "decimal")]
        usage: i64,
        #[serde(serialize_with = "decimal")]
        quota: i64,
        /// The billing mode's name (`Mode::as_str` of `billing`, which
        /// builds on this module's events).
        mode: &'static str,
        #[serde(serialize_with = "timestamp")]
        at: NaiveDateTime,
    },
    /// An admin calibrated the node's counters (the `calibrations` row
    /// `calibration_id`); its traffic after.
    #[serde(rename_all = "camelCase")]
    Calibration {
        node_id: &'a str,
        calibration_id: i64,
        traffic: TrafficCounters,
    },
    /// An admin accepted or discarded a held delta (`status`: `accepted`
    /// or `discarded`; `credited`: where its bytes were added); the node's
    /// traffic after.
    #[serde(rename = "anomaly", rename_all = "camelCase")]
    AnomalyDecided {
        node_id: &'a str,
        anomaly_id: i64,
        status: &'a str,
        #[serde(serialize_with = "decimal")]
        upload: i64,
        #[serde(serialize_with = "decimal")]
        download: i64,
        credited: &'a str,
        traffic: TrafficCounters,
    },
    /// The node's last `run` heartbeats in a row were answered STALE
    /// (announced once per run, when it reaches
    /// [`crate::ingest::store::STALE_RUN_FLAGGED`]): nothing they carry is
    /// counted. `reason`: the last one's (`superseded`,
    /// `older_generation`, `earlier_in_boot`, `earlier_reading`).
    #[serde(rename_all = "camelCase")]
    Stale {
        node_id: &'a str,
        reason: &'a str,
        run: i32,
        #[serde(serialize_with = "decimal")]
        stale_heartbeats: i64,
    },
    /// A node was enrolled or removed.
    #[serde(rename_all = "camelCase")]
    Nodes {
        node_id: &'a str,
        change: NodeChange,
    },
}

fn decimal<S: Serializer>(value: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn timestamp<S: Serializer>(time: &NaiveDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&time.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

/// The events of one transaction, packed into NOTIFY payloads as they come.
#[derive(Debug, Default)]
pub struct Outbox {
    payloads: Vec<String>,
    scratch: Vec<u8>,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `notice` after the events added so far.
    pub fn push(&mut self, notice: &Notice<'_>) {
        self.scratch.clear();
        if let Err(error) = serde_json::to_writer(&mut self.scratch, notice) {
            tracing::error!(%error, "cannot serialize an event; it is not announced");
            return;
        }
        match std::str::from_utf8(&self.scratch) {
            Ok(line) => pack_line(&mut self.payloads, line),
            Err(error) => tracing::error!(%error, "an event is not UTF-8; it is not announced"),
        }
    }

    /// Adds an event already serialized as one line of JSON.
    pub fn push_json(&mut self, line: &str) {
        pack_line(&mut self.payloads, line);
    }

    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// The NOTIFY payloads, in order.
    pub fn payloads(&self) -> &[String] {
        &self.payloads
    }

    /// Sends the payloads on [`CHANNEL`] with one statement, in the
    /// transaction `conn` is in (they are delivered when it commits).
    pub async fn send(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.payloads.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
            .bind(CHANNEL)
            .bind(&self.payloads)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// Appends `line` to the last payload, or starts a new one (headed by its
/// part number) when it would not fit.
fn pack_line(payloads: &mut Vec<String>, line: &str) {
    if line.is_empty() || line.contains('\n') {
        tracing::error!(
            line,
            "an event is not one line of JSON; it is not announced"
        );
        return;
    }
    if let Some(last) = payloads.last_mut()
        && last.len() + 1 + line.len() <= MAX_PAYLOAD
    {
        last.push('\n');
        last.push_str(line);
        return;
    }
    let mut payload = String::with_capacity(MAX_PAYLOAD.min(line.len() + 16));
    let _ = write!(payload, "{}\n{line}", payloads.len());
    if payload.len() > MAX_PAYLOAD {
        tracing::error!(
            bytes = line.len(),
            "an event is too large for a NOTIFY payload; it is not announced"
        );
        return;
    }
    payloads.push(payload);
}

/// The events of a NOTIFY payload, in order; lines that are not events
/// (the part number, or a type this version does not know) are skipped.
pub fn unpack(payload: &str) -> impl Iterator<Item = Event> + '_ {
    #[derive(Deserialize)]
    struct Tagged<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
    }
    payload
        .split('\n')
        .skip(1)
        .filter(|line| {
            // An event is a JSON object: serde would read `Tagged` from an
            // array too (`["nodes"]`).
            let object = line.trim_start().starts_with('{');
            if !object {
                tracing::warn!(line, "skipping a line that is not a JSON object");
            }
            object
        })
        .filter_map(|line| match serde_json::from_str::<Tagged<'_>>(line) {
            Ok(tagged) => match Kind::from_name(&tagged.kind) {
                Some(kind) => Some(Event {
                    kind,
                    data: Arc::from(line),
                }),
                None => {
                    tracing::debug!(kind = %tagged.kind, "skipping an event of an unknown type");
                    None
                }
            },
            Err(error) => {
                tracing::warn!(%error, line, "skipping a malformed event");
                None
            }
        })
}

/// The events this replica has heard, for its subscribers.
#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Event>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(BACKLOG);
        Self { sender }
    }

    /// A receiver of every event from now on. A receiver that falls more
    /// than a few thousand events behind gets `Lagged`: it should resync.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }

    /// Broadcasts `event` to the current subscribers (if any).
    pub fn publish(&self, event: Event) {
        let _ = self.sender.send(event);
    }

    /// Broadcasts the events of a NOTIFY payload.
    pub fn publish_payload(&self, payload: &str) {
        // Parsing is for subscribers; nobody listens, nobody parses.
        if self.sender.receiver_count() == 0 {
            return;
        }
        for event in unpack(payload) {
            self.publish(event);
        }
    }
}

/// First and longest pause between two attempts to (re)connect.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(30));

/// LISTENs on [`CHANNEL`] and broadcasts what is heard on `hub`, until
/// `stopping` turns true. It uses a connection of its own (not one of
/// `pool`'s, which serve requests), made with `pool`'s options. When the
/// connection is lost, it reconnects (with a growing pause while that
/// fails) and broadcasts a `resync` event: events of the gap are lost.
pub async fn listen(pool: PgPool, hub: Hub, mut stopping: watch::Receiver<bool>) {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut pause = BACKOFF.0;
    // Events may have been missed before this connection: from the second
    // connection on, or after a failed first attempt.
    let mut missed = false;
    loop {
        let connected = tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => return,
            connected = subscribe(&own) => connected,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(
                    channel = CHANNEL,
                    %error,
                    retry_in_ms = pause.as_millis() as u64,
                    "cannot LISTEN for live events; live updates are paused"
                );
                missed = true;
                tokio::select! {
                    _ = stopping.wait_for(|stopping| *stopping) => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(BACKOFF.1);
                continue;
            }
        };
        pause = BACKOFF.0;
        tracing::info!(channel = CHANNEL, "listening for live events");
        if missed {
            hub.publish(Event::resync());
        }
        missed = true;
        loop {
            let next = tokio::select! {
                _ = stopping.wait_for(|stopping| *stopping) => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(notification)) => hub.publish_payload(notification.payload()),
                // sqlx has reconnected and LISTENs again.
                Ok(None) => {
                    tracing::warn!(
                        channel = CHANNEL,
                        "the live-event connection was lost and is back; subscribers resync"
                    );
                    hub.publish(Event::resync());
                }
                Err(error) => {
                    tracing::warn!(channel = CHANNEL, %error, "the live-event connection failed; reconnecting");
                    break;
                }
            }
        }
    }
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: u32, milli: u32) -> NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 25)
            .and_then(|d| d.and_hms_milli_opt(10, 0, second, milli))
            .expect("valid time")
    }

    fn traffic(n: i64) -> TrafficCounters {
        TrafficCounters {
            total_upload: n,
            total_download: i64::MAX,
            period_upload: 0,
            period_download: n * 2,
            period_start: at(0, 123),
        }
    }

    #[test]
    fn events_carry_their_type_and_the_contract_fields() {
        let mut outbox = Outbox::new();
        outbox.push(&Notice::Heartbeat {
            node_id: "n1",
            last_seen: at(1, 5),
            load: Load {
                one: 0.5,
                five: 0.25,
                fifteen: 2.0,
            },
            traffic: traffic(7),
        });
        outbox.push(&Notice::PeriodReset {
            node_id: "n2",
            traffic: traffic(1),
        });
        outbox.push(&Notice::Nodes {
            node_id: "n3",
            change: NodeChange::Removed,
        });
        assert_eq!(outbox.payloads().len(), 1);
        let events: Vec<Event> = unpack(&outbox.payloads()[0]).collect();
        let kinds: Vec<Kind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [Kind::Heartbeat, Kind::PeriodReset, Kind::Nodes]);
        let json = |i: usize| -> serde_json::Value {
            serde_json::from_str(&events[i].data).expect("JSON")
        };
        assert_eq!(
            json(0),
            serde_json::json!({
                "type": "heartbeat", "nodeId": "n1", "lastSeen": "2026-11-25T10:00:01.005Z",
                "load": {"one": 0.5, "five": 0.25, "fifteen": 2.0},
                "traffic": {"totalUpload": "7", "totalDownload": "9223372036854775807",
                            "periodUpload": "0", "periodDownload": "14",
                            "periodStart": "2026-11-25T10:00:00.123Z"}
            })
        );
        assert_eq!(json(1)["type"], "period_reset");
        assert_eq!(json(1)["traffic"]["totalUpload"], "1");
        assert_eq!(
            json(2),
            serde_json::json!({"type": "nodes", "nodeId": "n3", "change": "removed"})
        );
    }

    #[test]
    fn many_events_pack_into_distinct_payloads_under_the_limit_in_order() {
        let mut outbox = Outbox::new();
        let mut sent = Vec::new();
        for i in 0..2000 {
            // Identical events in runs: equal packs must still differ.
            let node = format!("node-{}", i / 100);
            let notice = Notice::PeriodReset {
                node_id: &node,
                traffic: traffic(i / 100),
            };
            sent.push(serde_json::to_string(&notice).expect("JSON"));
            outbox.push(&notice);
        }
        let payloads = outbox.payloads();
        assert!(payloads.len() > 20, "{} payloads", payloads.len());
        for payload in payloads {
            assert!(payload.len() < 8000, "{} bytes", payload.len());
            // Packed as full as the limit allows.
            assert!(
                payload.len() > MAX_PAYLOAD - 300 || payload == payloads.last().expect("a payload")
            );
        }
        let distinct: std::collections::HashSet<&String> = payloads.iter().collect();
        assert_eq!(distinct.len(), payloads.len(), "no two payloads are equal");
        let received: Vec<String> = payloads
            .iter()
            .flat_map(|p| unpack(p))
            .map(|e| e.data.to_string())
            .collect();
        assert_eq!(received, sent, "every event, in order");
    }

    #[test]
    fn oversized_and_unknown_events_are_skipped() {
        let mut outbox = Outbox::new();
        outbox.push_json(&format!(
            r#"{{"type":"nodes","nodeId":"{}"}}"#,
            "x".repeat(8000)
        ));
        assert!(outbox.is_empty());
        outbox.push_json(r#"{"type":"future_kind"}"#);
        outbox.push_json(r#"{"type":"nodes","nodeId":"a","change":"added"}"#);
        let events: Vec<Event> = outbox.payloads().iter().flat_map(|p| unpack(p)).collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, Kind::Nodes);
    }

    /// Found by the `event_payload` fuzz target: a JSON array whose first
    /// element names a type (`["nodes"]`) was passed on as that event.
    #[test]
    fn only_json_objects_are_events() {
        let payload = "0\n[\"nodes\"]\n[\"heartbeat\",1]\n{\"type\":\"nodes\",\"nodeId\":\"a\"}";
        let events: Vec<Event> = unpack(payload).collect();
        assert_eq!(events.len(), 1);
        assert_eq!(&*events[0].data, r#"{"type":"nodes","nodeId":"a"}"#);
    }
}
