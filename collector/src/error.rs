//! The collector's errors, and the one place that maps them to gRPC status
//! codes (and, with the HTTP API, to HTTP statuses).

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
        matches!(
            self,
            Error::Unavailable(_)
                | Error::BatchFailed(_)
                | Error::Database(_)
                | Error::Busy(_)
                | Error::TooFrequent { .. }
        )
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
            Error::Busy(_) => Status::resource_exhausted(message),
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
            Error::TooFrequent { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
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
