//! The database: connecting, and the embedded migrations (`migrations/`).

use std::{io, time::Duration};

use sqlx::{
    Connection as _, PgConnection, PgPool,
    migrate::{MigrateError, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::time::Instant;

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How long [`connect`] tries to reach the database before it gives up
/// with the reason: connections that are refused (a server still starting)
/// are retried within it, and an attempt that gets no answer at all ends
/// with it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects a pool of at most `max_connections`.
///
/// One connection is made first, on its own, so that a database that
/// cannot be reached fails within [`CONNECT_TIMEOUT`] with its cause (the
/// pool itself would retry a refused connection for its whole acquire
/// timeout and then report only that it timed out).
///
/// The probe also says whether the connection is encrypted: a plaintext
/// connection to another host is logged as a warning (`sslmode` in the URL
/// or `PGSSLMODE` decides; sqlx's default, `prefer`, takes TLS when the
/// server offers it).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let mut first = first_connection(&options).await?;
    let encryption = encryption(&mut first).await?;
    // Only a probe: whether it closes cleanly does not matter.
    let _ = first.close().await;
    let local = is_local(&options);
    match &encryption {
        Some(version) => tracing::debug!(tls = %version, "the database connection is encrypted"),
        None if local => {}
        None => tracing::warn!(
            host = options.get_host(),
            "the database connection is not encrypted: passwords and counters cross the network \
             in the clear; use sslmode=verify-full (with sslrootcert=<CA file> for a private \
             authority) in DATABASE_URL"
        ),
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// One connection within [`CONNECT_TIMEOUT`]; a refused connection, or a
/// server that is starting up or full, is retried with a growing pause, and
/// the last error is returned when time is up.
async fn first_connection(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut pause = Duration::from_millis(50);
    loop {
        let attempt = tokio::time::timeout_at(deadline, PgConnection::connect_with(options)).await;
        let error = match attempt {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) if worth_retrying(&error) => error,
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(sqlx::Error::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                )));
            }
        };
        if Instant::now() + pause >= deadline {
            return Err(error);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// The TLS version of `connection`, or `None` when it is not encrypted.
async fn encryption(connection: &mut PgConnection) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl")
        .fetch_optional(connection)
        .await
}

/// Whether the database is on this host: a Unix socket, `localhost` or a
/// loopback address (where plaintext crosses no network).
fn is_local(options: &PgConnectOptions) -> bool {
    if options.get_socket().is_some() {
        return true;
    }
    let host = options.get_host();
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a failed connection may succeed when tried again soon.
fn worth_retrying(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(error) => error.kind() == io::ErrorKind::ConnectionRefused,
        // too_many_connections, cannot_connect_now (starting up)
        sqlx::Error::Database(error) => matches!(error.code().as_deref(), Some("53300" | "57P03")),
        _ => false,
    }
}

/// Names the database a URL points at, for messages, without its password:
/// `"tally" at db.example:5432 as tally`.
pub fn describe(url: &str) -> String {
    let Ok(options) = url.parse::<PgConnectOptions>() else {
        return "given by --database-url or DATABASE_URL".to_owned();
    };
    let user = options.get_username();
    let name = options.get_database().unwrap_or(user);
    match options.get_socket() {
        Some(dir) => format!(
            "{name:?} on the Unix socket in {} (port {}) as user {user}",
            dir.display(),
            options.get_port()
        ),
        None => format!(
            "{name:?} at {}:{} as user {user}",
            options.get_host(),
            options.get_port()
        ),
    }
}

/// How `serve` shares its database connections out, and how long their
/// statements may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The batch writers' connections (one each).
    pub writers: u32,
    /// The HTTP side's: API, dashboard, events, metrics.
    pub readers: u32,
    /// The upkeep's: period sweeps, quota checks, retention, webhooks,
    /// token reloads.
    pub upkeep: u32,
    /// Longest a statement of the writers or readers may run
    /// (`statement_timeout`); the upkeep's get [`UPKEEP_STATEMENTS`] times
    /// as long.
    pub statement_timeout: Duration,
    /// Longest a statement may wait for a lock (`lock_timeout`).
    pub lock_timeout: Duration,
}

/// How many times longer the upkeep's statements may run (a retention
/// `DELETE` of a day of history is long).
pub const UPKEEP_STATEMENTS: u32 = 30;

/// The HTTP side's connections, unless set (`--reader-connections`).
pub const DEFAULT_READERS: u32 = 4;
/// A statement's time limit, unless set (`--statement-timeout`).
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A statement's wait for a lock, unless set (`--lock-timeout`).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for Budget {
    fn default() -> Self {
        Self {
            writers: 4,
            readers: DEFAULT_READERS,
            upkeep: 2,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

/// One pool per kind of work, so that readers can never take the
/// connections the writers need (nor the upkeep), each connection with its
/// statement and lock timeouts.
#[derive(Debug, Clone)]
pub struct Pools {
    pub writers: PgPool,
    pub readers: PgPool,
    pub upkeep: PgPool,
}

impl Pools {
    /// The pools, to the database `options` name (connected lazily).
    pub fn new(options: &PgConnectOptions, budget: &Budget) -> Self {
        let pool = |size: u32, statements: Duration| {
            let settings = options.clone().options([
                ("statement_timeout", millis(statements)),
                ("lock_timeout", millis(budget.lock_timeout)),
            ]);
            PgPoolOptions::new()
                .max_connections(size.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(settings)
        };
        Self {
            writers: pool(budget.writers, budget.statement_timeout),
            readers: pool(budget.readers, budget.statement_timeout),
            upkeep: pool(budget.upkeep, budget.statement_timeout * UPKEEP_STATEMENTS),
        }
    }
}

/// A duration as PostgreSQL's milliseconds setting.
fn millis(duration: Duration) -> String {
    format!("{}ms", duration.as_millis().max(1))
}

/// Applies every migration not applied yet; returns how many there are in
/// all (each has its reverse beside it).
pub async fn migrate(pool: &PgPool) -> Result<usize, MigrateError> {
    MIGRATOR.run(pool).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count())
}

/// Reverts migrations down to `target` (0 reverts all).
pub async fn revert(pool: &PgPool, target: i64) -> Result<(), MigrateError> {
    MIGRATOR.undo(pool, target).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_named_without_its_password() {
        let named = describe("postgres://tally:s3cret@db.example:6543/counts");
        assert_eq!(named, r#""counts" at db.example:6543 as user tally"#);
        let socket = describe("postgres://tally:s3cret@localhost/tally?host=/run/postgresql");
        assert!(
            socket.starts_with(r#""tally" on the Unix socket in /run/postgresql"#),
            "{socket}"
        );
        assert!(!socket.contains("s3cret"), "{socket}");
        assert_eq!(
            describe("not a URL"),
            "given by --database-url or DATABASE_URL"
        );
    }

    #[test]
    fn only_other_hosts_are_remote() {
        let local = |url: &str| is_local(&url.parse().expect("url"));
        assert!(local("postgres://t@localhost/t"));
        assert!(local("postgres://t@127.0.0.1/t"));
        assert!(local("postgres://t@127.8.9.1:5433/t"));
        assert!(local("postgres://t@[::1]/t"));
        assert!(local("postgres://t@db.example/t?host=/run/postgresql"));
        assert!(!local("postgres://t@db.example/t"));
        assert!(!local("postgres://t@10.0.0.5/t"));
        assert!(!local("postgres://t@[2001:db8::1]/t"));
    }
}
