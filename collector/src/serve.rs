//! `tally-collector serve`: the gRPC node channel (behind the in-memory
//! token check, kept current by the live events) and, in one process, the
//! HTTP side with the live-event listener that feeds its event stream, plus
//! the periodic upkeep: scheduled period resets of quiet nodes and history
//! retention.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use chrono::Utc;
use sqlx::PgPool;
use tally_proto::{limits, v1::heartbeat_server::HeartbeatServer};
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::{
    billing::period::{self, Schedule},
    billing::rates,
    connections::{self, Admission, Limits},
    db, events,
    grpc::{HeartbeatService, authenticate::Gate},
    http,
    ingest::{self, Ingest},
    metrics::Metrics,
    node_tokens::NodeTokens,
    quota, webhook,
};

/// What `serve` needs besides the database.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// PEM certificate chain and key; `None` serves plaintext.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// PEM certificates of the authorities whose client certificates the
    /// node channel requires (mutual TLS); `None`: none asked for.
    pub client_ca: Option<PathBuf>,
    /// The interval to ask agents for.
    pub heartbeat_interval: Option<Duration>,
    /// A node's clock further off ours than this is warned about (never
    /// refused).
    pub max_clock_skew: Duration,
    pub history_retention: Duration,
    pub ingest: ingest::Config,
    /// Address of the HTTP side (health, JSON API); `None`: no HTTP.
    pub http_listen: Option<SocketAddr>,
    /// PEM certificate chain and key of the HTTP side; `None` serves
    /// plaintext HTTP.
    pub http_tls: Option<(PathBuf, PathBuf)>,
    /// A node not heard from for this long is shown offline.
    pub offline_after: Duration,
    /// Bearer tokens of the HTTP side.
    pub tokens: http::Tokens,
    /// Where to deliver webhook events; `None`: none are queued.
    pub webhook: Option<webhook::Config>,
    /// The database connections of each kind of work, and their timeouts
    /// (the writers' count is `ingest.writers`).
    pub database: db::Budget,
    /// Expensive reads (history, window rankings) served at once; more are
    /// answered 503 with `Retry-After`.
    pub max_expensive_reads: usize,
    /// Event streams (SSE) open at once; more are answered 503.
    pub max_event_streams: usize,
    /// Concurrent heartbeat calls (HTTP/2 streams) per connection.
    pub max_streams_per_connection: u32,
    /// One node's heartbeats are taken at most one per this interval, after
    /// a burst (zero: all).
    pub min_heartbeat_interval: Duration,
    /// A heartbeat `Stream` that sends nothing for this long is ended (the
    /// agent opens a new one with its next heartbeat).
    pub stream_idle_timeout: Duration,
    /// A new connection (either listener) must send its first bytes within
    /// this time, and finish its TLS handshake (if any) within it, or it is
    /// closed.
    pub handshake_timeout: Duration,
    /// Connections open at once on the node channel, in total and from one
    /// source address.
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// Connections open at once on the HTTP side, in total and from one
    /// source address.
    pub max_http_connections: usize,
    pub max_http_connections_per_address: usize,
    /// An HTTP/1 request's headers must come within this time (also the
    /// longest an idle keep-alive connection is kept).
    pub header_read_timeout: Duration,
}

/// The defaults of [`crate::serve::Options`]
/// ([`crate::serve::Options::new`]), which are also the defaults of
/// `tally-collector serve`'s flags. Those of ingestion and of the database
/// connections are beside their settings:
/// [`crate::ingest::DEFAULT_MAX_BATCH`], [`crate::ingest::DEFAULT_WRITERS`],
/// [`crate::ingest::batch::DEFAULT_MAX_INTERFACE_NAMES`],
/// [`crate::db::DEFAULT_READERS`], [`crate::db::DEFAULT_STATEMENT_TIMEOUT`]
/// and [`crate::db::DEFAULT_LOCK_TIMEOUT`].
pub mod defaults {
    use std::time::Duration;

    use crate::ingest::batch::DEFAULT_MAX_CLOCK_SKEW_MS;

    /// A node's clock further off ours is warned about: five minutes.
    pub const MAX_CLOCK_SKEW: Duration = Duration::from_millis(DEFAULT_MAX_CLOCK_SKEW_MS as u64);
    /// History older than this is deleted: 30 days.
    pub const HISTORY_RETENTION: Duration = Duration::from_secs(30 * 86_400);
    /// A node not heard from for this long is shown offline.
    pub const OFFLINE_AFTER: Duration = Duration::from_secs(30);
    /// Expensive reads served at once.
    pub const MAX_EXPENSIVE_READS: u32 = 2;
    /// Event streams open at once.
    pub const MAX_EVENT_STREAMS: u32 = 256;
    /// Concurrent heartbeat calls per connection.
    pub const MAX_STREAMS_PER_CONNECTION: u32 = 4096;
    /// One node's heartbeats are taken at most one per this interval.
    pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
    /// A heartbeat stream silent for this long is ended: two minutes.
    pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
    /// A new connection's first bytes and TLS handshake must come within
    /// this time.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Connections open at once on the node channel.
    pub const MAX_CONNECTIONS: u32 = 100_000;
    /// Connections open at once on the node channel from one address.
    pub const MAX_CONNECTIONS_PER_ADDRESS: u32 = 4096;
    /// Connections open at once on the HTTP side.
    pub const MAX_HTTP_CONNECTIONS: u32 = 10_000;
    /// Connections open at once on the HTTP side from one address.
    pub const MAX_HTTP_CONNECTIONS_PER_ADDRESS: u32 = 256;
    /// An HTTP/1 request's headers must come within this time.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
}

impl Options {
    /// The gRPC side on `listen` (plaintext), no HTTP side, no webhook, no
    /// tokens, and every other setting at its default ([`defaults`], as
    /// `tally-collector serve` has them without flags).
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls: None,
            client_ca: None,
            http_tls: None,
            heartbeat_interval: None,
            max_clock_skew: defaults::MAX_CLOCK_SKEW,
            history_retention: defaults::HISTORY_RETENTION,
            ingest: ingest::Config::default(),
            http_listen: None,
            offline_after: defaults::OFFLINE_AFTER,
            tokens: http::Tokens::default(),
            webhook: None,
            database: db::Budget::default(),
            max_expensive_reads: defaults::MAX_EXPENSIVE_READS as usize,
            max_event_streams: defaults::MAX_EVENT_STREAMS as usize,
            max_streams_per_connection: defaults::MAX_STREAMS_PER_CONNECTION,
            min_heartbeat_interval: defaults::MIN_HEARTBEAT_INTERVAL,
            stream_idle_timeout: defaults::STREAM_IDLE_TIMEOUT,
            handshake_timeout: defaults::HANDSHAKE_TIMEOUT,
            max_connections: defaults::MAX_CONNECTIONS as usize,
            max_connections_per_address: defaults::MAX_CONNECTIONS_PER_ADDRESS as usize,
            max_http_connections: defaults::MAX_HTTP_CONNECTIONS as usize,
            max_http_connections_per_address: defaults::MAX_HTTP_CONNECTIONS_PER_ADDRESS as usize,
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
        }
    }
}

/// The bound sockets, so that the caller knows the addresses before serving.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
}

/// Binds the gRPC and (if asked for) HTTP listeners.
pub async fn bind(options: &Options) -> anyhow::Result<Listeners> {
    let grpc = TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let http = match options.http_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (HTTP)"))?,
        ),
        None => None,
    };
    Ok(Listeners { grpc, http })
}

/// Serves until `shutdown` completes, then lets in-flight heartbeats finish.
pub async fn serve(
    pool: PgPool,
    options: Options,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Each agent keeps one heartbeat stream open; a proxy may carry
        // many agents on one connection.
        .max_concurrent_streams(Some(options.max_streams_per_connection))
        .timeout(Duration::from_secs(30));
    if let Some((cert, key)) = &options.tls {
        let cert = std::fs::read(cert)
            .with_context(|| format!("cannot read the certificate {}", cert.display()))?;
        let key =
            std::fs::read(key).with_context(|| format!("cannot read the key {}", key.display()))?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .timeout(options.handshake_timeout);
        if let Some(ca) = &options.client_ca {
            let ca = std::fs::read(ca)
                .with_context(|| format!("cannot read the client CA {}", ca.display()))?;
            config = config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false);
        }
        server = server
            .tls_config(config)
            .context("cannot use the TLS certificate and key")?;
    }
    // Open heartbeat streams (and HTTP connections) end when the shutdown
    // begins: a graceful shutdown waits for every call in flight.
    let (stopping, stopping_rx) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    // One pool per kind of work: readers never take the writers'
    // connections, and every statement has its time limit.
    let budget = db::Budget {
        writers: u32::try_from(options.ingest.writers).unwrap_or(u32::MAX),
        ..options.database
    };
    let pools = db::Pools::new(&pool.connect_options(), &budget);
    drop(pool);
    let hub = events::Hub::new();
    let metrics = Arc::new(Metrics::new().context("cannot set up the collector's metrics")?);
    let deliverer = match options.webhook.clone() {
        Some(config) => Some(
            webhook::start(
                pools.upkeep.clone(),
                config,
                metrics.clone(),
                stopping_rx.clone(),
            )
            .context("cannot start the webhook deliverer")?,
        ),
        None => None,
    };
    let quotas = quota::Config {
        webhook: options.webhook.is_some(),
    };
    // The nodes' tokens, checked before a heartbeat is decoded; kept
    // current by the live events (nodes enrolled and removed anywhere).
    let tokens = NodeTokens::load(&pools.upkeep)
        .await
        .context("cannot read the nodes' tokens")?;
    tracing::info!(nodes = tokens.len(), "node tokens loaded");
    let following = tokio::spawn(Arc::clone(&tokens).follow(
        pools.upkeep.clone(),
        hub.subscribe(),
        stopping_rx.clone(),
    ));
    let listener = tokio::spawn(events::listen(
        pools.upkeep.clone(),
        hub.clone(),
        stopping_rx.clone(),
    ));
    let http = match listeners.http {
        Some(listener) => {
            let tls = match &options.http_tls {
                Some((cert, key)) => Some(http::listener::Tls {
                    acceptor: http::tls::acceptor(cert, key).context("cannot serve HTTPS")?,
                    handshake_timeout: options.handshake_timeout,
                }),
                None => None,
            };
            let admission = Admission::new(
                "http",
                Limits {
                    max: options.max_http_connections,
                    max_per_address: options.max_http_connections_per_address,
                    first_bytes_within: options.handshake_timeout,
                },
                metrics.clone(),
            );
            let http = spawn_http(
                http::AppState {
                    pool: pools.readers.clone(),
                    offline_after: options.offline_after,
                    max_clock_skew: options.max_clock_skew,
                    tokens: options.tokens.clone(),
                    events: hub,
                    metrics: metrics.clone(),
                    stopping: stopping_rx.clone(),
                    readiness: Arc::default(),
                    expensive_reads: Arc::new(tokio::sync::Semaphore::new(
                        options.max_expensive_reads.max(1),
                    )),
                    event_streams: Arc::new(tokio::sync::Semaphore::new(
                        options.max_event_streams.max(1),
                    )),
                },
                listener,
                admission,
                options.header_read_timeout,
                tls,
                options.ingest.schedule,
            )?;
            Some(http)
        }
        None => None,
    };
    let upkeep = tokio::spawn(upkeep(
        pools.upkeep.clone(),
        options.ingest.schedule,
        options.history_retention,
        quotas,
    ));
    let ingest = ingest::Config {
        quota: quotas,
        max_clock_skew: options.max_clock_skew,
        batch_deadline: budget.statement_timeout,
        ..options.ingest.clone()
    };
    let ingest = Ingest::start(pools.writers.clone(), ingest, metrics.clone());
    let interval_ms = options
        .heartbeat_interval
        .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
    connections::fit_open_files(
        (options.max_connections as u64).saturating_add(options.max_http_connections as u64),
    );
    let admission = Admission::new(
        "grpc",
        Limits {
            max: options.max_connections,
            max_per_address: options.max_connections_per_address,
            first_bytes_within: options.handshake_timeout,
        },
        metrics.clone(),
    );
    // Tokens are checked (in memory) before anything of a call is decoded.
    let gate = Gate::new(tokens, pools.upkeep.clone(), metrics.clone());
    let service = gate.wrap(
        HeartbeatServer::new(HeartbeatService::new(
            ingest,
            interval_ms,
            options.min_heartbeat_interval,
            options.stream_idle_timeout,
            stopping_rx,
            metrics,
        ))
        .max_decoding_message_size(limits::MAX_MESSAGE_BYTES),
    );
    let address = listeners.grpc.local_addr().context("no local address")?;
    tracing::info!(
        %address,
        tls = options.tls.is_some(),
        client_certificates = options.client_ca.is_some(),
        "serving tally.v1.Heartbeat"
    );
    let result = server
        .add_service(service)
        .serve_with_incoming_shutdown(admission.incoming(listeners.grpc), shutdown)
        .await
        .context("the gRPC server failed");
    upkeep.abort();
    if let Some(deliverer) = deliverer
        && let Err(error) = deliverer.await
    {
        tracing::warn!(%error, "the webhook deliverer task failed");
    }
    if let Some(http) = http
        && let Err(error) = http.await
    {
        tracing::warn!(%error, "the HTTP server task failed");
    }
    if let Err(error) = listener.await {
        tracing::warn!(%error, "the live-event listener task failed");
    }
    if let Err(error) = following.await {
        tracing::warn!(%error, "the node-token follower task failed");
    }
    result
}

/// Serves the HTTP side on `listener` until `stopping` turns true.
fn spawn_http(
    state: http::AppState,
    listener: TcpListener,
    admission: Admission,
    header_read_timeout: Duration,
    tls: Option<http::listener::Tls>,
    schedule: Option<Schedule>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let address = listener.local_addr().context("no local address")?;
    let (admin_tokens, read_tokens) = state.tokens.counts();
    tracing::info!(
        %address,
        tls = tls.is_some(),
        admin_tokens,
        read_tokens,
        "serving HTTP (dashboard, JSON API, events, metrics)"
    );
    let stopping = state.stopping.clone();
    // The billing views need the `--period-reset` fallback day.
    let router = http::router(state).layer(axum::Extension(http::billing::PeriodReset(
        schedule.map(Schedule::day),
    )));
    Ok(tokio::spawn(http::listener::serve(
        listener,
        admission,
        router,
        header_read_timeout,
        tls,
        stopping,
    )))
}

/// Periods of quiet nodes that ended by their anchor day, and quotas on
/// 95th percentile rates, every minute; history older than the retention
/// (but never of a current period: the 95th percentile needs it), every
/// ten minutes. Errors are logged and retried.
async fn upkeep(
    pool: PgPool,
    schedule: Option<Schedule>,
    retention: Duration,
    quotas: quota::Config,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut round: u64 = 0;
    loop {
        tick.tick().await;
        match period::sweep(&pool, schedule.map(|s| s.day())).await {
            Ok(0) => {}
            Ok(nodes) => tracing::info!(nodes, "periods ended by their anchor day"),
            Err(error) => tracing::warn!(%error, "scheduled period reset failed; will retry"),
        }
        // Before any history is pruned: the rates of the periods closed
        // since the last round.
        match rates::fill_pending(&pool).await {
            Ok(0) => {}
            Ok(periods) => tracing::info!(periods, "rates of closed periods computed"),
            Err(error) => {
                tracing::warn!(%error, "cannot compute closed periods' rates; will retry")
            }
        }
        let fallback_day = schedule.map(Schedule::day);
        if let Err(error) = quota::check(&pool, &quotas, fallback_day).await {
            tracing::warn!(%error, "quota check failed; will retry");
        }
        if round.is_multiple_of(10) {
            match prune_history(&pool, retention).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, "history past retention deleted"),
                Err(error) => tracing::warn!(%error, "history retention failed; will retry"),
            }
        }
        round += 1;
    }
}

/// Deletes history older than `retention` and older than every node's
/// current period (looking back two months at most).
pub async fn prune_history(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let cutoff = Utc::now().naive_utc()
        - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    // The current periods' history stays: their 95th percentile needs it.
    let oldest_period: Option<chrono::NaiveDateTime> =
        sqlx::query_scalar(r#"SELECT min("periodStart") FROM "traffic_stats""#)
            .fetch_one(pool)
            .await?;
    // (At most two months back: a period without an anchor day may be
    // open for years.)
    let floor = Utc::now().naive_utc() - chrono::Duration::days(62);
    let cutoff = oldest_period.map_or(cutoff, |oldest| cutoff.min(oldest.max(floor)));
    // Nor the history of a closed period whose rates are still to come.
    let oldest_pending: Option<chrono::NaiveDateTime> =
        sqlx::query_scalar(r#"SELECT min("start") FROM "billing_periods" WHERE "p95Rate" IS NULL"#)
            .fetch_one(pool)
            .await?;
    let cutoff = oldest_pending.map_or(cutoff, |oldest| cutoff.min(oldest));
    let nodes = sqlx::query(r#"DELETE FROM "node_history" WHERE "bucket" < $1"#)
        .bind(cutoff)
        .execute(pool)
        .await?;
    let interfaces = sqlx::query(r#"DELETE FROM "interface_history" WHERE "bucket" < $1"#)
        .bind(cutoff)
        .execute(pool)
        .await?;
    Ok(nodes.rows_affected() + interfaces.rows_affected())
}
