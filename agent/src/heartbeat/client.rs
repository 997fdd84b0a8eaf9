//! Heartbeat calls: each reading goes as one message on a long-lived
//! `Stream` call (opened lazily, opened again after any failure), or as its
//! own `Send` call where the collector has no `Stream`. Either way with the
//! token, a deadline, and errors described for a person; a refusal in a
//! stream's reply is the status `Send` would have answered.
//!
//! The token is taken from the shared [`Credentials`] for every call. A
//! stream keeps the token it was opened with, so one opened before the
//! token changed is ended, and the next heartbeat opens a new one with the
//! new token.

use std::{
    error::Error as _,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_channel::mpsc;
use tally_proto::v1::{
    HeartbeatReply, HeartbeatRequest, Refusal, heartbeat_client::HeartbeatClient,
};
use tonic::{Code, Request, Status, Streaming, transport::Channel};

use super::{config::CollectorConfig, token::Credentials};

/// The collector's Heartbeat service, with this node's token. Clones share
/// the connection, but each opens its own stream.
pub struct Client {
    config: CollectorConfig,
    inner: HeartbeatClient<Channel>,
    /// The open stream (`None`: opened by the next heartbeat).
    stream: Option<Open>,
    /// The collector answered UNIMPLEMENTED for `Stream`: every heartbeat
    /// is a `Send` call from then on (for every clone).
    unary: Arc<AtomicBool>,
}

/// An open `Stream` call.
struct Open {
    requests: mpsc::UnboundedSender<HeartbeatRequest>,
    replies: Streaming<HeartbeatReply>,
    /// The generation of the token it was opened with.
    generation: u64,
}

impl Clone for Client {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            inner: self.inner.clone(),
            stream: None,
            unary: Arc::clone(&self.unary),
        }
    }
}

/// Why a heartbeat was not delivered.
#[derive(Debug)]
pub enum SendError {
    /// The collector (or the transport) answered with an error, or refused
    /// the heartbeat in a stream's reply.
    Status(Status),
    /// No answer within the deadline.
    Timeout(Duration),
}

impl Client {
    /// Connects lazily: nothing happens on the network until the first call,
    /// and a broken connection is made again on the next one.
    pub fn new(config: CollectorConfig) -> Self {
        let inner = HeartbeatClient::new(config.endpoint.connect_lazy());
        Self {
            config,
            inner,
            stream: None,
            unary: Arc::default(),
        }
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// Sends one heartbeat on the stream (or as a `Send` call, when the
    /// collector has no stream), waiting at most the RPC timeout (or
    /// `limit`, when shorter).
    pub async fn send_request(
        &mut self,
        request: HeartbeatRequest,
        limit: Option<Duration>,
    ) -> Result<HeartbeatReply, SendError> {
        let unary = self.unary.load(Ordering::Relaxed);
        self.deliver(request, limit, unary).await
    }

    /// Sends a heartbeat as its own `Send` call (no stream is left open),
    /// waiting as [`Client::send_request`] does.
    pub async fn send_request_once(
        &mut self,
        request: HeartbeatRequest,
        limit: Option<Duration>,
    ) -> Result<HeartbeatReply, SendError> {
        self.deliver(request, limit, true).await
    }

    async fn deliver(
        &mut self,
        request: HeartbeatRequest,
        limit: Option<Duration>,
        unary: bool,
    ) -> Result<HeartbeatReply, SendError> {
        let deadline = limit.map_or(self.config.rpc_timeout, |l| l.min(self.config.rpc_timeout));
        let answer = if unary {
            tokio::time::timeout(deadline, self.call(request, deadline)).await
        } else {
            tokio::time::timeout(deadline, self.streamed(request, deadline)).await
        };
        match answer {
            Ok(Ok(HeartbeatReply {
                refusal: Some(refusal),
                ..
            })) => Err(SendError::Status(refused(refusal))),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(status)) => Err(SendError::Status(status)),
            Err(_) => {
                // The connection may be dead without the kernel knowing yet
                // (a host gone without a reset): start a fresh one.
                self.stream = None;
                self.inner = HeartbeatClient::new(self.config.endpoint.connect_lazy());
                Err(SendError::Timeout(deadline))
            }
        }
    }

    /// One `Send` call.
    async fn call(
        &mut self,
        request: HeartbeatRequest,
        deadline: Duration,
    ) -> Result<HeartbeatReply, Status> {
        let mut call = Request::new(request);
        call.set_timeout(deadline);
        let (authorization, _) = self.credentials().current();
        call.metadata_mut().insert("authorization", authorization);
        Ok(self.inner.send(call).await?.into_inner())
    }

    /// One heartbeat on the stream. A stream that was open already may have
    /// been ended by the collector meanwhile (a restart): then the heartbeat
    /// goes once more on a new one (resending is safe by the contract).
    async fn streamed(
        &mut self,
        request: HeartbeatRequest,
        deadline: Duration,
    ) -> Result<HeartbeatReply, Status> {
        self.end_stream_of_old_token();
        let reused = self.stream.is_some();
        let answer = self.exchange(request.clone(), deadline).await;
        match answer {
            Err(status) if reused && !self.unary.load(Ordering::Relaxed) => {
                tracing::debug!(%status, "the heartbeat stream ended; opening a new one");
                self.exchange(request, deadline).await
            }
            answer => answer,
        }
    }

    /// Sends `request` on the stream (opening one if needed) and waits for
    /// its reply; any failure closes the stream. Falls back to `Send` for
    /// good when the collector has no `Stream`.
    async fn exchange(
        &mut self,
        request: HeartbeatRequest,
        deadline: Duration,
    ) -> Result<HeartbeatReply, Status> {
        let fresh = self.stream.is_none();
        let open = match self.stream.take() {
            Some(open) => Ok(open),
            None => self.open().await,
        };
        let answer = match open {
            Ok(open) => Self::on(open, request.clone()).await,
            Err(status) => Err(status),
        };
        match answer {
            Ok((reply, open)) => {
                self.stream = Some(open);
                Ok(reply)
            }
            Err(status) if fresh && status.code() == Code::Unimplemented => {
                tracing::info!(
                    collector = self.url(),
                    "the collector has no heartbeat stream (an older collector?): sending each \
                     heartbeat as a call of its own"
                );
                self.unary.store(true, Ordering::Relaxed);
                self.call(request, deadline).await
            }
            Err(status) => Err(status),
        }
    }

    fn credentials(&self) -> &Credentials {
        &self.config.credentials
    }

    /// Ends the open stream when it was opened with another token than the
    /// one in use now (the token file was read again): the heartbeat about
    /// to go opens a new one, with the new token.
    fn end_stream_of_old_token(&mut self) {
        let generation = self.credentials().generation();
        let Some(open) = self.stream.take_if(|open| open.generation != generation) else {
            return;
        };
        // No more requests: the collector sees the stream end.
        open.requests.close_channel();
        tracing::info!(
            collector = self.url(),
            "the node token changed: ending the heartbeat stream opened with the old one; this \
             heartbeat opens one with the new token"
        );
    }

    /// Opens a `Stream` call with the token in use.
    async fn open(&mut self) -> Result<Open, Status> {
        let (requests, queued) = mpsc::unbounded();
        let mut call = Request::new(queued);
        let (authorization, generation) = self.credentials().current();
        call.metadata_mut().insert("authorization", authorization);
        let replies = self.inner.stream(call).await?.into_inner();
        Ok(Open {
            requests,
            replies,
            generation,
        })
    }

    /// Sends `request` on `open` and waits for its reply; hands the stream
    /// back with it.
    async fn on(
        mut open: Open,
        request: HeartbeatRequest,
    ) -> Result<(HeartbeatReply, Open), Status> {
        if open.requests.unbounded_send(request).is_err() {
            return Err(Status::unavailable("the heartbeat stream is closed"));
        }
        match open.replies.message().await? {
            Some(reply) => Ok((reply, open)),
            None => Err(Status::unavailable(
                "the collector ended the heartbeat stream",
            )),
        }
    }
}

/// A refusal in a stream's reply as the status `Send` would have answered.
fn refused(refusal: Refusal) -> Status {
    let code = i32::try_from(refusal.code).map_or(Code::Unknown, Code::from);
    let mut status = Status::new(code, refusal.message);
    if refusal.retry_after_ms > 0
        && let Ok(value) = refusal.retry_after_ms.to_string().parse()
    {
        status
            .metadata_mut()
            .insert(tally_proto::RETRY_PUSHBACK, value);
    }
    status
}

/// The longest retry hint followed; a larger one is taken as this.
pub const MAX_RETRY_HINT: Duration = Duration::from_secs(300);

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
        if self.is_certificate_problem() || self.client_certificate_refused().is_some() {
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
        if let Some(hint) = self.client_certificate_refused() {
            return Some(hint);
        }
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
                 (`tally-collector node add` prints a node's token; a new one written there \
                 is read again without a restart)",
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
    /// How long the collector asked to wait before sending again
    /// (`grpc-retry-pushback-ms`, on RESOURCE_EXHAUSTED: this node's
    /// heartbeats came faster than it takes them), at most
    /// [`MAX_RETRY_HINT`].
    pub fn retry_hint(&self) -> Option<Duration> {
        let SendError::Status(status) = self else {
            return None;
        };
        if status.code() != Code::ResourceExhausted {
            return None;
        }
        let millis: u64 = status
            .metadata()
            .get(tally_proto::RETRY_PUSHBACK)?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        Some(Duration::from_millis(millis).min(MAX_RETRY_HINT))
    }

    /// The collector refused the counters as going backwards within their
    /// epoch: the contract's FAILED_PRECONDITION.
    pub fn is_backwards(&self) -> bool {
        matches!(self, SendError::Status(status) if status.code() == Code::FailedPrecondition)
    }

    /// The collector refused this heartbeat for good: sending it again
    /// would be refused again (malformed, an unknown token, counters going
    /// backwards). Used for the reboot journal's heartbeats, which are
    /// then set aside; a regular heartbeat is superseded by the next one.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SendError::Status(status) if matches!(
                status.code(),
                Code::InvalidArgument | Code::Unauthenticated | Code::FailedPrecondition
            )
        )
    }

    /// The collector ended the TLS handshake over this node's client
    /// certificate (a fatal alert it sent, as rustls names it): what to do.
    /// None for anything else, the agent's own refusal of the collector's
    /// certificate included (an alert the agent sends is no "received"
    /// one).
    fn client_certificate_refused(&self) -> Option<&'static str> {
        /// Alerts a server sends about the client's certificate: a bad,
        /// unknown, expired or revoked one, or a signature (of a key that
        /// is not the certificate's) that does not check out.
        const REFUSING: [&str; 8] = [
            "BadCertificate",
            "UnsupportedCertificate",
            "CertificateRevoked",
            "CertificateExpired",
            "CertificateUnknown",
            "UnknownCA",
            "DecryptError",
            "AccessDenied",
        ];
        let SendError::Status(_) = self else {
            return None;
        };
        let text = self.to_string();
        let (_, alert) = text.split_once("received fatal alert: ")?;
        if alert.starts_with("CertificateRequired") {
            return Some(
                "the collector requires a TLS client certificate (serve --client-ca): give \
                 --client-cert and --client-key",
            );
        }
        REFUSING
            .iter()
            .any(|refusing| alert.starts_with(refusing))
            .then_some(
                "the collector refused this node's TLS client certificate: is --client-cert \
                 signed by a CA in the collector's --client-ca and valid now, and is \
                 --client-key its key?",
            )
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
        assert!(!away.is_permanent());
        assert!(unauth.is_permanent() && backwards.is_permanent());
        assert!(SendError::Status(Status::invalid_argument("bad")).is_permanent());
        assert!(!SendError::Status(Status::permission_denied("no")).is_permanent());
        assert!(!SendError::Timeout(Duration::from_secs(1)).is_permanent());

        let tls = SendError::Status(Status::unavailable(
            "invalid peer certificate: UnknownIssuer",
        ));
        assert_eq!(tls.severity(), Severity::Error);
        assert!(tls.hint().is_some_and(|h| h.contains("--ca")));

        // The collector's alerts about the client certificate, as tonic
        // reports them.
        let required = SendError::Status(Status::unknown(
            "connection error: received fatal alert: CertificateRequired",
        ));
        assert_eq!(required.severity(), Severity::Error);
        assert_eq!(
            required.hint(),
            Some(
                "the collector requires a TLS client certificate (serve --client-ca): give \
                 --client-cert and --client-key"
            )
        );
        for alert in [
            "UnknownCA",
            "BadCertificate",
            "DecryptError",
            "CertificateExpired",
        ] {
            let refused = SendError::Status(Status::unknown(format!(
                "connection error: received fatal alert: {alert}"
            )));
            assert_eq!(refused.severity(), Severity::Error, "{alert}");
            assert!(
                refused
                    .hint()
                    .is_some_and(|h| h.contains("refused this node's TLS client certificate")),
                "{alert}"
            );
        }
        // Other alerts, and connections closed without one, are no such
        // refusal.
        for text in [
            "connection error: received fatal alert: HandshakeFailure",
            "connection error: stream closed because of a broken pipe",
        ] {
            let other = SendError::Status(Status::unknown(text));
            assert_eq!(other.severity(), Severity::Warn, "{text}");
            assert_eq!(other.hint(), None, "{text}");
        }

        let refusal = SendError::Status(refused(Refusal {
            code: Code::FailedPrecondition as u32,
            message: "rx bytes went backwards".into(),
            retry_after_ms: 0,
        }));
        assert!(refusal.is_backwards());
        assert_eq!(
            refusal.to_string(),
            "FailedPrecondition: rx bytes went backwards"
        );
        let retry = SendError::Status(refused(Refusal {
            code: Code::Unavailable as u32,
            message: "database error".into(),
            retry_after_ms: 0,
        }));
        assert_eq!(retry.severity(), Severity::Warn);
        assert_eq!(retry.retry_hint(), None);
        let paced = SendError::Status(refused(Refusal {
            code: Code::ResourceExhausted as u32,
            message: "too frequent".into(),
            retry_after_ms: 1500,
        }));
        assert_eq!(paced.retry_hint(), Some(Duration::from_millis(1500)));
        assert_eq!(paced.severity(), Severity::Warn);
        let huge = SendError::Status(refused(Refusal {
            code: Code::ResourceExhausted as u32,
            message: "too frequent".into(),
            retry_after_ms: u32::MAX,
        }));
        assert_eq!(huge.retry_hint(), Some(MAX_RETRY_HINT));

        let slow = SendError::Timeout(Duration::from_secs(10));
        assert_eq!(slow.to_string(), "no reply within 10s");
        assert_eq!(slow.severity(), Severity::Warn);
    }
}
