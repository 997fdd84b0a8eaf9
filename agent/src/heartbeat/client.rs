//! One heartbeat call: the request with the token, a deadline, and errors
//! described for a person.

use std::{error::Error as _, fmt, time::Duration};

use tally_proto::v1::{HeartbeatReply, heartbeat_client::HeartbeatClient};
use tonic::{Code, Request, Status, transport::Channel};

use super::{
    config::CollectorConfig,
    reading::Reading,
    request::{self, NodeInfo},
};

/// The collector's Heartbeat service, with this node's token. Clones share
/// the connection.
#[derive(Clone)]
pub struct Client {
    config: CollectorConfig,
    inner: HeartbeatClient<Channel>,
}

/// Why a heartbeat was not delivered.
#[derive(Debug)]
pub enum SendError {
    /// The collector (or the transport) answered with an error.
    Status(Status),
    /// No answer within the deadline.
    Timeout(Duration),
}

impl Client {
    /// Connects lazily: nothing happens on the network until the first call,
    /// and a broken connection is made again on the next one.
    pub fn new(config: CollectorConfig) -> Self {
        let inner = HeartbeatClient::new(config.endpoint.connect_lazy());
        Self { config, inner }
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// Sends one reading, waiting at most the RPC timeout (or `limit`, when
    /// shorter).
    pub async fn send(
        &mut self,
        reading: &Reading,
        limit: Option<Duration>,
    ) -> Result<HeartbeatReply, SendError> {
        let deadline = limit.map_or(self.config.rpc_timeout, |l| l.min(self.config.rpc_timeout));
        let mut call = Request::new(request::build(reading, &NodeInfo::current()));
        call.set_timeout(deadline);
        call.metadata_mut()
            .insert("authorization", self.config.authorization.clone());
        match tokio::time::timeout(deadline, self.inner.send(call)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(SendError::Status(status)),
            Err(_) => {
                // The connection may be dead without the kernel knowing yet
                // (a host gone without a reset): start a fresh one.
                self.inner = HeartbeatClient::new(self.config.endpoint.connect_lazy());
                Err(SendError::Timeout(deadline))
            }
        }
    }
}

/// How loudly a failure is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The collector is away or overloaded: expected to pass.
    Warn,
    /// The collector refused the heartbeat: needs a person (a wrong token, a
    /// protocol violation), though it is still retried.
    Error,
}

impl SendError {
    pub fn severity(&self) -> Severity {
        if self.is_certificate_problem() {
            return Severity::Error;
        }
        match self {
            SendError::Status(status) => match status.code() {
                Code::Unauthenticated
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::InvalidArgument
                | Code::Unimplemented => Severity::Error,
                _ => Severity::Warn,
            },
            SendError::Timeout(_) => Severity::Warn,
        }
    }

    /// A hint on what to do, for the errors that need a person.
    pub fn hint(&self) -> Option<&'static str> {
        if self.is_certificate_problem() {
            return Some(
                "the collector's TLS certificate does not check out: is it signed by a CA in \
                 --ca, and does it name the host of --collector?",
            );
        }
        let SendError::Status(status) = self else {
            return None;
        };
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => Some(
                "the collector does not accept this node's token: check --token-file \
                 (`tally-collector node add` prints a node's token)",
            ),
            Code::FailedPrecondition => Some(
                "the collector refused the counters as a protocol violation (a counter went \
                 backwards within one epoch); nothing was stored",
            ),
            Code::InvalidArgument => Some("the collector refused the heartbeat as malformed"),
            Code::Unimplemented => {
                Some("the server at --collector does not speak tally.v1 (wrong address or port?)")
            }
            _ => None,
        }
    }
}

impl SendError {
    /// The collector refused the counters as going backwards within their
    /// epoch: the contract's FAILED_PRECONDITION.
    pub fn is_backwards(&self) -> bool {
        matches!(self, SendError::Status(status) if status.code() == Code::FailedPrecondition)
    }

    /// rustls refused the collector's certificate (its cause names it).
    fn is_certificate_problem(&self) -> bool {
        matches!(self, SendError::Status(_)) && self.to_string().contains("certificate")
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Timeout(after) => write!(f, "no reply within {}", super::human(*after)),
            SendError::Status(status) => {
                // Transport errors keep the cause (connection refused, a
                // certificate problem) in the source chain; each part is
                // said once, without tonic's generic "transport error".
                let mut text = format!("{:?}", status.code());
                let mut parts = vec![status.message().to_owned()];
                let mut source = status.source();
                while let Some(cause) = source {
                    parts.push(cause.to_string());
                    source = cause.source();
                }
                for part in parts {
                    if !part.is_empty() && part != "transport error" && !text.contains(&part) {
                        text.push_str(": ");
                        text.push_str(&part);
                    }
                }
                f.write_str(&text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_described_and_graded() {
        let unauth = SendError::Status(Status::unauthenticated("unknown token"));
        assert_eq!(unauth.to_string(), "Unauthenticated: unknown token");
        assert_eq!(unauth.severity(), Severity::Error);
        assert!(unauth.hint().is_some_and(|h| h.contains("--token-file")));

        let backwards =
            SendError::Status(Status::failed_precondition("rx_bytes of eth0 went back"));
        assert_eq!(backwards.severity(), Severity::Error);
        assert!(backwards.is_backwards());
        assert!(!unauth.is_backwards());
        assert!(
            backwards
                .hint()
                .is_some_and(|h| h.contains("protocol violation"))
        );

        let away = SendError::Status(Status::unavailable("database unreachable"));
        assert_eq!(away.severity(), Severity::Warn);
        assert_eq!(away.hint(), None);
        assert!(!away.is_backwards());

        let tls = SendError::Status(Status::unavailable(
            "invalid peer certificate: UnknownIssuer",
        ));
        assert_eq!(tls.severity(), Severity::Error);
        assert!(tls.hint().is_some_and(|h| h.contains("--ca")));

        let slow = SendError::Timeout(Duration::from_secs(10));
        assert_eq!(slow.to_string(), "no reply within 10s");
        assert_eq!(slow.severity(), Severity::Warn);
    }
}
