//! The collector's errors, and the one place that maps them to gRPC status
//! codes (and, with the HTTP API, to HTTP statuses), and database failures
//! by their SQLSTATE to whether they are worth retrying ([`DbFailure`]).

use std::time::Duration;

use tally_proto::v1::Refusal;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable credentials, or credentials that do not match.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// The credentials are fine but the operation is not allowed.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// A request that breaks the contract's limits or shape.
    #[error("invalid heartbeat: {0}")]
    Invalid(String),
    /// A raw counter went backwards within one epoch.
    #[error(
        "protocol violation: {what} went backwards within epoch {epoch} (last applied {last}, now {now}); nothing was stored"
    )]
    Backwards {
        what: &'static str,
        epoch: String,
        last: i64,
        now: i64,
    },
    /// Applying the heartbeat would take a total past 2^63 - 1.
    #[error("the node's {0} total would exceed 2^63 - 1 bytes; nothing was stored")]
    TotalOverflow(&'static str),
    /// No node of that id or name.
    #[error("no node {0:?}")]
    NoSuchNode(String),
    /// A request parameter or body of the HTTP API that is malformed or out
    /// of bounds; the message names the parameter.
    #[error("{0}")]
    InvalidArgument(String),
    /// No HTTP endpoint at that path.
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    /// A node of that name exists already.
    #[error("a node named {0:?} exists already")]
    NodeExists(String),
    /// The request is well-formed but the resource's state does not allow
    /// it (an anomaly decided already, a calibration that would make the
    /// counters inconsistent).
    #[error("{0}")]
    Conflict(String),
    /// No resource of that kind and id (other than a node).
    #[error("{0}")]
    NotFound(String),
    /// The collector is shutting down or overloaded.
    #[error("the collector is not accepting heartbeats now ({0}); retry later")]
    Unavailable(&'static str),
    /// Too many expensive requests at once: ask again in a moment.
    #[error("busy: {0}; retry in a second")]
    Busy(&'static str),
    /// A node's heartbeats come faster than the collector takes them.
    #[error(
        "this node's heartbeats come faster than one per {}ms (after a burst); send again in \
         {}ms",
        min_interval.as_millis(),
        retry_after.as_millis()
    )]
    TooFrequent {
        min_interval: Duration,
        retry_after: Duration,
    },
    /// Too many failed authentications from the client's address.
    #[error(
        "too many failed authentications from this address; try again in {}s",
        retry_after.as_secs().max(1)
    )]
    TooManyFailedAuthentications { retry_after: Duration },
    /// The batch a heartbeat was in could not be committed.
    #[error("database error (nothing was stored; retry): {0}")]
    BatchFailed(String),
    /// The database failed; nothing of the request was stored.
    #[error("database error (nothing was stored): {0}")]
    Database(#[from] sqlx::Error),
}

impl Error {
    /// Whether the same request may succeed later unchanged.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(error) => DbFailure::of(error).is_retryable(),
            _ => matches!(
                self,
                Error::Unavailable(_)
                    | Error::BatchFailed(_)
                    | Error::Busy(_)
                    | Error::TooFrequent { .. }
            ),
        }
    }

    /// A database error that refused the values it was given (see
    /// [`DbFailure::Refused`]): the same request would fail again.
    fn refused_by_database(&self) -> bool {
        matches!(self, Error::Database(error) if DbFailure::of(error) == DbFailure::Refused)
    }
}

/// What a failed database call means for the request that made it, by its
/// SQLSTATE or the kind of failure: the one place that reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// Worth trying again unchanged: a serialization failure (40001) or
    /// deadlock (40P01), a lost or refused connection (class 08, I/O, TLS),
    /// a server shutting down or starting (57P01–57P03), out of resources
    /// (class 53), a statement or lock timeout (57014, 55P03), a pool that
    /// timed out or closed.
    Transient,
    /// A unique violation (23505): another writer inserted the same key
    /// first. The code that inserts handles the races it expects; a retry
    /// finds the row that won.
    UniqueRace,
    /// The values given were refused: a data exception (class 22) or an
    /// integrity constraint other than uniqueness (class 23: check, not
    /// null, foreign key, exclusion). The same request fails again: it is
    /// refused, never retried.
    Refused,
    /// Anything else (a schema that does not match, a bug): not the
    /// request's fault, so it is answered as unavailable, as before.
    Other,
}

impl DbFailure {
    pub fn of(error: &sqlx::Error) -> Self {
        match error {
            sqlx::Error::Database(error) => match error.code() {
                Some(code) => Self::of_sqlstate(&code),
                None => Self::Other,
            },
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed => Self::Transient,
            _ => Self::Other,
        }
    }

    /// By a SQLSTATE (PostgreSQL, Appendix A).
    pub fn of_sqlstate(code: &str) -> Self {
        match code {
            "40001" | "40P01" | "57014" | "55P03" | "57P01" | "57P02" | "57P03" => Self::Transient,
            "23505" => Self::UniqueRace,
            _ if code.starts_with("08") || code.starts_with("53") => Self::Transient,
            _ if code.starts_with("22") || code.starts_with("23") => Self::Refused,
            _ => Self::Other,
        }
    }

    /// Whether the same request may succeed later unchanged.
    pub fn is_retryable(self) -> bool {
        self != Self::Refused
    }

    /// Whether the statement failed on the values it was given (classes 22
    /// and 23, uniqueness too): in a batch, on one of its heartbeats.
    pub fn caused_by_values(self) -> bool {
        matches!(self, Self::Refused | Self::UniqueRace)
    }
}

impl Error {
    /// What the caller is told: the error, but of a database failure only
    /// that it happened (its details, which may show the schema or the
    /// values of others, go to the log where it happened).
    pub fn public_message(&self) -> String {
        // (The retry hint goes with the status, see `From<Error> for
        // Status`.)
        match self {
            Error::Database(_) if self.refused_by_database() => {
                "the database refused the values given: nothing was changed".to_owned()
            }
            Error::BatchFailed(_) | Error::Database(_) => {
                "the database failed: nothing was changed; retry later".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let message = error.public_message();
        if error.refused_by_database() {
            return Status::invalid_argument(message);
        }
        match error {
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::Forbidden(_) => Status::permission_denied(message),
            Error::Invalid(_) | Error::InvalidArgument(_) => Status::invalid_argument(message),
            Error::Backwards { .. } => Status::failed_precondition(message),
            Error::TotalOverflow(_) => Status::out_of_range(message),
            Error::NoSuchNode(_) | Error::NoRoute(_) | Error::NotFound(_) => {
                Status::not_found(message)
            }
            Error::NodeExists(_) => Status::already_exists(message),
            Error::Conflict(_) => Status::failed_precondition(message),
            Error::Unavailable(_) | Error::BatchFailed(_) | Error::Database(_) => {
                Status::unavailable(message)
            }
            Error::Busy(_) | Error::TooManyFailedAuthentications { .. } => {
                Status::resource_exhausted(message)
            }
            Error::TooFrequent { retry_after, .. } => {
                let mut status = Status::resource_exhausted(message);
                if let Ok(value) = millis(retry_after).to_string().parse() {
                    status
                        .metadata_mut()
                        .insert(tally_proto::RETRY_PUSHBACK, value);
                }
                status
            }
        }
    }
}

/// Whole milliseconds, rounded up (a hint of 0 would mean none).
fn millis(duration: Duration) -> u32 {
    let rounded = duration.as_micros().div_ceil(1000).max(1);
    u32::try_from(rounded).unwrap_or(u32::MAX)
}

/// A heartbeat refused on the `Stream` call: the status `Send` would answer,
/// as the reply's `refusal` (the stream goes on).
pub fn refusal(error: Error) -> Refusal {
    let retry_after_ms = match &error {
        Error::TooFrequent { retry_after, .. } => millis(*retry_after),
        _ => 0,
    };
    let status = Status::from(error);
    Refusal {
        code: status.code() as u32,
        message: status.message().to_owned(),
        retry_after_ms,
    }
}

impl Error {
    /// The HTTP status and the stable code of the JSON error body.
    pub fn http_status(&self) -> (axum::http::StatusCode, &'static str) {
        use axum::http::StatusCode;
        if self.refused_by_database() {
            return (StatusCode::BAD_REQUEST, "invalid_argument");
        }
        match self {
            Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::Invalid(_) | Error::InvalidArgument(_) => {
                (StatusCode::BAD_REQUEST, "invalid_argument")
            }
            Error::Backwards { .. } => (StatusCode::CONFLICT, "counter_went_backwards"),
            Error::TotalOverflow(_) => (StatusCode::CONFLICT, "total_overflow"),
            Error::NoSuchNode(_) | Error::NoRoute(_) | Error::NotFound(_) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            Error::NodeExists(_) => (StatusCode::CONFLICT, "already_exists"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::Unavailable(_) | Error::BatchFailed(_) | Error::Database(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Error::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Error::TooFrequent { .. } | Error::TooManyFailedAuthentications { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
            }
        }
    }
}

/// The JSON body of every HTTP error.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `unauthenticated` (401), `forbidden` (403),
    /// `invalid_argument` (400), `not_found` (404), `already_exists` (409),
    /// `conflict` (409), `unavailable` (503), `busy` (503: too many
    /// expensive requests at once; both 503s carry `Retry-After`).
    #[schema(example = "invalid_argument")]
    pub code: &'static str,
    /// For people; names the parameter at fault.
    #[schema(example = "limit: 0 is not from 1 to 1000")]
    pub message: String,
}

impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        let (status, code) = self.http_status();
        match self {
            // Busy is the answer to a load, not a failure: one log line per
            // such answer would let careless clients flood the log.
            Error::Busy(_) => tracing::debug!(error = %self, "HTTP request answered busy"),
            _ if status.is_server_error() => tracing::warn!(error = %self, "HTTP request failed"),
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.public_message(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
            // Busy or the database: worth asking again soon, not at once.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if let Error::TooManyFailedAuthentications { retry_after } = &self
            && let Ok(value) = retry_after.as_secs().max(1).to_string().parse()
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        if status == axum::http::StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn codes() {
        let code = |e: Error| Status::from(e).code();
        assert_eq!(code(Error::Unauthenticated("x")), Code::Unauthenticated);
        assert_eq!(code(Error::Invalid("x".into())), Code::InvalidArgument);
        assert_eq!(
            code(Error::Backwards {
                what: "rx bytes",
                epoch: "e".into(),
                last: 2,
                now: 1
            }),
            Code::FailedPrecondition
        );
        assert_eq!(code(Error::TotalOverflow("upload")), Code::OutOfRange);
        assert_eq!(code(Error::Unavailable("stopping")), Code::Unavailable);
        assert_eq!(
            code(Error::Database(sqlx::Error::PoolTimedOut)),
            Code::Unavailable
        );
    }

    #[test]
    fn database_failures_are_told_without_their_details() {
        let secret = "relation \"nodes\" column \"tokenHash\" value 42";
        for error in [
            Error::BatchFailed(secret.into()),
            Error::Database(sqlx::Error::Protocol(secret.into())),
        ] {
            let (status, code) = error.http_status();
            assert_eq!((status.as_u16(), code), (503, "unavailable"));
            let told = error.public_message();
            assert!(
                !told.contains("tokenHash") && told.contains("retry"),
                "{told}"
            );
            let status = Status::from(error);
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert!(!status.message().contains("tokenHash"), "{status:?}");
        }
        assert_eq!(
            Error::Invalid("hostname".into()).public_message(),
            "invalid heartbeat: hostname"
        );
    }

    #[test]
    fn refusals_carry_the_status_code_and_message() {
        let refusal = refusal(Error::TotalOverflow("upload"));
        assert_eq!(refusal.code, Code::OutOfRange as u32);
        assert!(refusal.message.contains("upload total would exceed"));
        assert_eq!(
            super::refusal(Error::Unavailable("stopping")).code,
            Code::Unavailable as u32
        );
    }

    /// A database error with a SQLSTATE, as PostgreSQL sends them.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "a database error"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn sqlstate(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Sqlstate(code)))
    }

    #[test]
    fn database_failures_are_retried_or_refused_by_their_sqlstate() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        for (error, failure) in [
            (sqlstate("40001"), DbFailure::Transient), // serialization failure
            (sqlstate("40P01"), DbFailure::Transient), // deadlock
            (sqlstate("08006"), DbFailure::Transient), // connection failure
            (sqlstate("57P01"), DbFailure::Transient), // admin shutdown
            (sqlstate("57014"), DbFailure::Transient), // statement timeout
            (sqlstate("55P03"), DbFailure::Transient), // lock timeout
            (sqlstate("53300"), DbFailure::Transient), // too many connections
            (sqlx::Error::PoolTimedOut, DbFailure::Transient),
            (sqlx::Error::PoolClosed, DbFailure::Transient),
            (sqlx::Error::Io(io()), DbFailure::Transient),
            (sqlstate("23505"), DbFailure::UniqueRace),
            (sqlstate("23514"), DbFailure::Refused), // check violation
            (sqlstate("23502"), DbFailure::Refused), // not null violation
            (sqlstate("23503"), DbFailure::Refused), // foreign key violation
            (sqlstate("22003"), DbFailure::Refused), // numeric out of range
            (sqlstate("22P05"), DbFailure::Refused), // untranslatable character
            (sqlstate("42703"), DbFailure::Other),   // undefined column
            (sqlx::Error::RowNotFound, DbFailure::Other),
        ] {
            let told = format!("{error}");
            assert_eq!(DbFailure::of(&error), failure, "{told}");
            let error = Error::Database(error);
            let refused = failure == DbFailure::Refused;
            assert_eq!(error.is_transient(), !refused, "{told}");
            let expected = if refused {
                (400, "invalid_argument", Code::InvalidArgument)
            } else {
                (503, "unavailable", Code::Unavailable)
            };
            let (status, code) = error.http_status();
            let grpc = Status::from(error).code();
            assert_eq!((status.as_u16(), code, grpc), expected, "{told}");
        }
        // What a batch isolates down to one heartbeat: classes 22 and 23.
        assert!(DbFailure::UniqueRace.caused_by_values());
        assert!(DbFailure::Refused.caused_by_values());
        assert!(!DbFailure::Transient.caused_by_values());
        assert!(!DbFailure::Other.caused_by_values());
    }

    #[test]
    fn backwards_message_names_the_values() {
        let message = Error::Backwards {
            what: "tx bytes",
            epoch: "abc".into(),
            last: 10,
            now: 9,
        }
        .to_string();
        assert!(message.contains("tx bytes went backwards within epoch abc"));
        assert!(message.contains("last applied 10, now 9"));
    }
}
