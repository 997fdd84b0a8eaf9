//! The webhook: events (quota thresholds crossed) are queued as rows of
//! `webhook_deliveries` in the transaction that records them ([`queue`]),
//! and a deliverer task in each collector started with `--webhook-url`
//! POSTs them ([`start`]).
//!
//! # A call
//!
//! `POST <url>` with the event's JSON object as the body and the headers
//! `content-type: application/json`, `x-tally-event: <event>`,
//! `x-tally-delivery: <row id>` (the same on every attempt: receivers
//! deduplicate on it), `x-tally-timestamp: <Unix seconds of this attempt>`
//! and `x-tally-signature: v1=<hex>`, the HMAC-SHA256 keyed with
//! `--webhook-secret` of `<timestamp>.<delivery>.<body bytes>` ([`Signer`]):
//! a receiver that checks it and refuses old timestamps cannot be made to
//! take a captured call again, under its id or another. A 2xx
//! answer within [`Config::timeout`] delivers; anything else (another
//! status, a redirect, no connection, no answer in time) is retried with
//! exponential backoff (1 s, doubling, at most 10 min apart) until
//! [`Config::max_attempts`] attempts; then the row is given up (kept with
//! its last error) and logged as an error. Delivered rows are deleted after
//! [`Config::retention`] ([`prune`]).
//!
//! # Replicas
//!
//! Any collector of the database may deliver any row. A deliverer claims
//! due rows with `FOR UPDATE SKIP LOCKED` and leases them by moving their
//! `nextAttemptAt` past the longest an attempt can take, so no other
//! deliverer claims them meanwhile, without holding a transaction during
//! the HTTP call. A deliverer that dies mid-call leaves its rows to be
//! claimed again when the lease ends: delivery is at least once.
//!
//! # Waking up
//!
//! [`queue`] NOTIFYs [`CHANNEL`] and the deliverer LISTENs on it, so a new
//! row is attempted at once; besides, the deliverer sleeps until the next
//! row is due, at most [`Config::poll`] (for leases that ended, or a lost
//! LISTEN connection).

use std::{fmt, sync::Arc, time::Duration};

use chrono::{NaiveDateTime, Utc};
use hmac::{Hmac, KeyInit as _, Mac as _};
use reqwest::{StatusCode, header};
use sha2::Sha256;
use sqlx::{
    PgConnection, PgPool, Row as _,
    postgres::{PgListener, PgPoolOptions},
};
use tokio::{sync::watch, task::JoinHandle};

pub use reqwest::Url;

use crate::metrics::{Delivery, Metrics};

/// The NOTIFY channel that announces new deliveries.
pub const CHANNEL: &str = "tally_webhooks";

/// How long past an attempt's timeout a claimed row stays leased.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Longest error text kept in `lastError`, in characters.
const MAX_ERROR: usize = 500;

/// How long delivered rows are kept, unless set.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often delivered rows past their retention are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Most rows one prune statement deletes (the next prune takes the rest).
const PRUNE_BATCH: i64 = 10_000;

/// Where and how to deliver.
#[derive(Clone)]
pub struct Config {
    pub url: Url,
    pub signer: Signer,
    /// The longest one attempt may take, connecting included.
    pub timeout: Duration,
    /// The pause after the first failed attempt; each further one doubles
    /// it, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Attempts before a delivery is given up.
    pub max_attempts: i32,
    /// The longest the deliverer sleeps without looking for due rows.
    pub poll: Duration,
    /// Most rows claimed (and attempted concurrently) at once.
    pub batch: i64,
    /// Delivered rows are deleted this long after their delivery.
    pub retention: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &redacted(&self.url))
            .field("signer", &"<secret>")
            .field("timeout", &self.timeout)
            .field("base_delay", &self.base_delay)
            .field("max_delay", &self.max_delay)
            .field("max_attempts", &self.max_attempts)
            .field("poll", &self.poll)
            .field("batch", &self.batch)
            .field("retention", &self.retention)
            .finish()
    }
}

impl Config {
    /// Delivers to `url` signing with `secret`, with the documented timing
    /// (10 s timeout; 1 s doubling up to 10 min; 12 attempts).
    pub fn new(url: Url, secret: &str) -> Result<Self, Error> {
        Ok(Self {
            url,
            signer: Signer::new(secret)?,
            timeout: Duration::from_secs(10),
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(600),
            max_attempts: 12,
            poll: Duration::from_secs(30),
            batch: 16,
            retention: DEFAULT_RETENTION,
        })
    }

    /// The pause after the `attempts`-th failed attempt.
    pub fn backoff(&self, attempts: i32) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(31);
        self.base_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

/// Why the webhook cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the webhook secret is empty")]
    EmptySecret,
    #[error("the webhook secret is not a usable HMAC key")]
    Key,
    #[error("cannot set up the webhook's HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Signs calls: HMAC-SHA256 keyed with the webhook secret, of the
/// attempt's timestamp, the delivery id and the body.
#[derive(Clone)]
pub struct Signer(Hmac<Sha256>);

impl Signer {
    pub fn new(secret: &str) -> Result<Self, Error> {
        if secret.is_empty() {
            return Err(Error::EmptySecret);
        }
        Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map(Signer)
            .map_err(|_| Error::Key)
    }

    /// The `x-tally-signature` value of a call: `v1=<lowercase hex>` of
    /// the HMAC of `<timestamp>.<delivery>.<body>`.
    pub fn sign(&self, timestamp: i64, delivery: i64, body: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(format!("{timestamp}.{delivery}.").as_bytes());
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut value = String::with_capacity(3 + 2 * digest.len());
        value.push_str("v1=");
        for byte in digest {
            value.push_str(&format!("{byte:02x}"));
        }
        value
    }
}

/// A webhook URL as given on the command line: absolute, `http` or
/// `https`.
pub fn parse_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("expected an http:// or https:// URL with a host".into());
    }
    Ok(url)
}

/// The URL without what may be secret in it (credentials, path and query:
/// chat services put tokens there), for logs.
fn redacted(url: &Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    )
}

/// Queues one delivery of `event` per payload (JSON objects) in the
/// transaction `conn` is in, due at `now`, and NOTIFYs [`CHANNEL`] (heard
/// when the transaction commits). One statement; none for no payloads.
pub async fn queue(
    conn: &mut PgConnection,
    event: &str,
    payloads: &[String],
    now: NaiveDateTime,
) -> Result<(), sqlx::Error> {
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query(
        r#"WITH "queued" AS (
               INSERT INTO "webhook_deliveries" ("event", "payload", "createdAt", "nextAttemptAt")
               SELECT $1, p::jsonb, $3, $3 FROM UNNEST($2::text[]) AS p
               RETURNING 1)
           SELECT pg_notify($4, count(*)::text) FROM "queued""#,
    )
    .bind(event)
    .bind(payloads)
    .bind(now)
    .bind(CHANNEL)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes delivered rows delivered more than `retention` ago (at most
/// 10,000 a call); how many. Rows not delivered (pending or given up)
/// stay.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let before = Utc::now()
        .naive_utc()
        .checked_sub_signed(retention)
        .unwrap_or(NaiveDateTime::MIN);
    let done = sqlx::query(
        r#"DELETE FROM "webhook_deliveries" WHERE "id" IN (
               SELECT "id" FROM "webhook_deliveries"
               WHERE "deliveredAt" < $1 LIMIT $2)"#,
    )
    .bind(before)
    .bind(PRUNE_BATCH)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Starts delivering (until `stopping` turns true; the round in flight is
/// finished first). Fails only if the HTTP client cannot be set up.
pub fn start(
    pool: PgPool,
    config: Config,
    metrics: Arc<Metrics>,
    stopping: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, Error> {
    // reqwest takes rustls's process-wide provider; ring is the one the
    // gRPC side links. Fails only when one is installed already: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tally-collector/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(Error::Client)?;
    tracing::info!(
        url = %redacted(&config.url),
        max_attempts = config.max_attempts,
        "delivering webhook events"
    );
    let deliverer = Deliverer {
        pool,
        config,
        client,
        metrics,
    };
    Ok(tokio::spawn(deliverer.run(stopping)))
}

struct Deliverer {
    pool: PgPool,
    config: Config,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

/// A claimed row.
struct Claimed {
    id: i64,
    event: String,
    payload: serde_json::Value,
    /// Attempts made before this one.
    attempts: i32,
}

/// What one attempt came to.
enum Outcome {
    Delivered(StatusCode),
    Failed(Option<StatusCode>, String),
}

impl Deliverer {
    async fn run(self, mut stopping: watch::Receiver<bool>) {
        let mut wake = Wake::new(&self.pool);
        let mut pruned_at: Option<tokio::time::Instant> = None;
        loop {
            if *stopping.borrow() {
                return;
            }
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(tokio::time::Instant::now());
                match prune(&self.pool, self.config.retention).await {
                    Ok(0) => {}
                    Ok(rows) => {
                        tracing::info!(rows, "delivered webhook rows past their retention deleted")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot delete old webhook rows; will retry")
                    }
                }
            }
            // LISTEN before looking, so that a row queued meanwhile wakes.
            wake.listen().await;
            let pause = match self.round().await {
                Ok(claimed) if claimed >= self.config.batch => continue,
                Ok(_) => match self.next_due().await {
                    Ok(Some(due)) => (due - Utc::now().naive_utc())
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                        .min(self.config.poll),
                    Ok(None) => self.config.poll,
                    Err(error) => {
                        tracing::warn!(%error, "cannot look for due webhook deliveries; will retry");
                        self.config.poll
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "cannot claim webhook deliveries; will retry");
                    self.config.poll.min(Duration::from_secs(5))
                }
            };
            tokio::select! {
                _ = stopping.wait_for(|stopping| *stopping) => return,
                () = tokio::time::sleep(pause) => {}
                () = wake.heard() => {}
            }
        }
    }

    /// Claims the due rows (up to a batch) and attempts them concurrently;
    /// the number claimed.
    async fn round(&self) -> Result<i64, sqlx::Error> {
        let now = Utc::now().naive_utc();
        let lease = chrono::Duration::from_std(self.config.timeout + LEASE_MARGIN)
            .unwrap_or(chrono::Duration::MAX);
        let rows = sqlx::query(
            r#"UPDATE "webhook_deliveries" w SET "nextAttemptAt" = $2
               WHERE w."id" IN (
                   SELECT "id" FROM "webhook_deliveries"
                   WHERE "deliveredAt" IS NULL AND "attempts" < $3 AND "nextAttemptAt" <= $1
                   ORDER BY "nextAttemptAt", "id"
                   LIMIT $4
                   FOR UPDATE SKIP LOCKED)
               RETURNING w."id", w."event", w."payload", w."attempts""#,
        )
        .bind(now)
        .bind(now + lease)
        .bind(self.config.max_attempts)
        .bind(self.config.batch)
        .fetch_all(&self.pool)
        .await?;
        let claimed = rows
            .iter()
            .map(|row| {
                Ok(Claimed {
                    id: row.try_get("id")?,
                    event: row.try_get("event")?,
                    payload: row.try_get("payload")?,
                    attempts: row.try_get("attempts")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let count = claimed.len() as i64;
        let results =
            futures_util::future::join_all(claimed.into_iter().map(|d| self.attempt(d))).await;
        // Every attempt was made; the first failure to store one is the
        // round's error (its row is attempted again when its lease ends).
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(count)
    }

    /// Makes one attempt at `delivery` and stores what came of it.
    async fn attempt(&self, delivery: Claimed) -> Result<(), sqlx::Error> {
        let attempt = delivery.attempts + 1;
        let outcome = match serde_json::to_vec(&delivery.payload) {
            Ok(body) => self.post(&delivery, body).await,
            Err(error) => Outcome::Failed(None, format!("cannot serialize the payload: {error}")),
        };
        let now = Utc::now().naive_utc();
        match outcome {
            Outcome::Delivered(status) => {
                sqlx::query(
                    r#"UPDATE "webhook_deliveries"
                       SET "deliveredAt" = $2, "attempts" = $3, "lastError" = NULL
                       WHERE "id" = $1"#,
                )
                .bind(delivery.id)
                .bind(now)
                .bind(attempt)
                .execute(&self.pool)
                .await?;
                self.metrics.webhook(Delivery::Delivered);
                tracing::info!(
                    delivery = delivery.id,
                    event = %delivery.event,
                    status = status.as_u16(),
                    attempt,
                    "webhook delivered"
                );
            }
            Outcome::Failed(status, error) => {
                let given_up = attempt >= self.config.max_attempts;
                let retry_in = self.config.backoff(attempt);
                let next = if given_up {
                    now
                } else {
                    now + chrono::Duration::from_std(retry_in).unwrap_or(chrono::Duration::MAX)
                };
                sqlx::query(
                    r#"UPDATE "webhook_deliveries"
                       SET "attempts" = $2, "lastError" = $3, "nextAttemptAt" = $4
                       WHERE "id" = $1"#,
                )
                .bind(delivery.id)
                .bind(attempt)
                .bind(&error)
                .bind(next)
                .execute(&self.pool)
                .await?;
                let status = status.map(|s| s.as_u16());
                if given_up {
                    self.metrics.webhook(Delivery::GivenUp);
                    tracing::error!(
                        delivery = delivery.id,
                        event = %delivery.event,
                        status,
                        attempt,
                        %error,
                        "webhook delivery given up after the last attempt"
                    );
                } else {
                    self.metrics.webhook(Delivery::Failed);
                    tracing::warn!(
                        delivery = delivery.id,
                        event = %delivery.event,
                        status,
                        attempt,
                        %error,
                        retry_in_ms = retry_in.as_millis() as u64,
                        "webhook attempt failed; will retry"
                    );
                }
            }
        }
        Ok(())
    }

    async fn post(&self, delivery: &Claimed, body: Vec<u8>) -> Outcome {
        let timestamp = Utc::now().timestamp();
        let signature = self.config.signer.sign(timestamp, delivery.id, &body);
        let sent = self
            .client
            .post(self.config.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-tally-event", &delivery.event)
            .header("x-tally-delivery", delivery.id.to_string())
            .header("x-tally-timestamp", timestamp.to_string())
            .header("x-tally-signature", signature)
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => return Outcome::Failed(None, describe(error)),
        };
        let status = response.status();
        if status.is_success() {
            return Outcome::Delivered(status);
        }
        // The start of the body says why, often.
        let said = match response.chunk().await {
            Ok(Some(chunk)) => String::from_utf8_lossy(&chunk).trim().to_owned(),
            _ => String::new(),
        };
        let mut error = format!("HTTP {status}");
        if !said.is_empty() {
            error.push_str(": ");
            error.push_str(&said);
        }
        Outcome::Failed(Some(status), truncate(error))
    }

    /// When the next row is due (`None`: nothing is pending).
    async fn next_due(&self) -> Result<Option<NaiveDateTime>, sqlx::Error> {
        sqlx::query_scalar(
            r#"SELECT min("nextAttemptAt") FROM "webhook_deliveries"
               WHERE "deliveredAt" IS NULL AND "attempts" < $1"#,
        )
        .bind(self.config.max_attempts)
        .fetch_one(&self.pool)
        .await
    }
}

/// A failed request and its causes, without the URL (it may hold a token).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    truncate(text)
}

fn truncate(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_ERROR) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The LISTEN side: a connection of its own (made with the pool's
/// options), reconnected when lost.
struct Wake {
    own: PgPool,
    listener: Option<PgListener>,
}

impl Wake {
    fn new(pool: &PgPool) -> Self {
        Self {
            own: PgPoolOptions::new()
                .max_connections(1)
                .max_lifetime(None)
                .idle_timeout(None)
                .connect_lazy_with((*pool.connect_options()).clone()),
            listener: None,
        }
    }

    /// LISTENs, unless it does already; on failure, the deliverer polls.
    async fn listen(&mut self) {
        if self.listener.is_some() {
            return;
        }
        let connected = async {
            let mut listener = PgListener::connect_with(&self.own).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match connected.await {
            Ok(listener) => self.listener = Some(listener),
            Err(error) => tracing::warn!(
                channel = CHANNEL,
                %error,
                "cannot LISTEN for new webhook deliveries; polling until it can"
            ),
        }
    }

    /// Completes when a delivery may have been queued: a notification, or
    /// a reconnection (notifications may have been missed). Never, when not
    /// listening.
    async fn heard(&mut self) {
        let Some(listener) = &mut self.listener else {
            return std::future::pending().await;
        };
        match listener.try_recv().await {
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(channel = CHANNEL, %error, "the webhook LISTEN connection failed");
                self.listener = None;
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_id_and_body_in_hex() {
        // The HMAC of the three parts joined by dots, computed here in
        // one piece.
        let signer = Signer::new("Jefe").expect("key");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"1765000000.42.{\"a\":1}");
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            signer.sign(1_765_000_000, 42, br#"{"a":1}"#),
            format!("v1={expected}")
        );
        assert_ne!(
            signer.sign(1_765_000_000, 43, br#"{"a":1}"#),
            signer.sign(1_765_000_000, 42, br#"{"a":1}"#),
            "the id is signed"
        );
        assert_ne!(
            signer.sign(1_765_000_001, 42, br#"{"a":1}"#),
            signer.sign(1_765_000_000, 42, br#"{"a":1}"#),
            "the timestamp is signed"
        );
        assert!(matches!(Signer::new(""), Err(Error::EmptySecret)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config =
            Config::new(parse_url("http://127.0.0.1:1/").expect("url"), "s").expect("config");
        let delays: Vec<u64> = (1..=12).map(|a| config.backoff(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(config.backoff(1000), Duration::from_secs(600));
    }

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(parse_url("ftp://example.invalid/").is_err());
        assert!(parse_url("not a url").is_err());
        let url =
            parse_url("https://user:pw@hooks.example.invalid:8443/T0/B1/secret?x=1").expect("url");
        assert_eq!(redacted(&url), "https://hooks.example.invalid:8443");
        let config = Config::new(url, "top-secret").expect("config");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("top-secret") && !debug.contains("B1"),
            "{debug}"
        );
    }

    #[test]
    fn long_errors_are_cut() {
        assert_eq!(truncate("short".into()), "short");
        let long = truncate("é".repeat(2 * MAX_ERROR));
        assert_eq!(long.chars().count(), MAX_ERROR + 1);
    }
}
