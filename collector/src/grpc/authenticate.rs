//! The token check in front of the `Heartbeat` service: a service wrapping
//! the generated server, which sees a call's headers before anything of its
//! body is read. A call whose token is missing, malformed, unknown or wrong
//! is answered `UNAUTHENTICATED` at once (a `Stream` ends before its first
//! message is read). The credentials of an admitted call travel on in its
//! extensions.
//!
//! Tokens are checked against [`NodeTokens`] in memory: a wrong secret costs
//! a hash and a map lookup, no database query. A node id the book does not
//! know (enrolled a moment ago on another replica, or by hand in SQL) is
//! looked up in the database, at most [`LOOKUPS_PER_SECOND`] a second for
//! the whole collector, and one not found is not looked up again for
//! [`UNKNOWN_FOR`]: a flood of made-up node ids costs the database nearly
//! nothing.
//!
//! Refusals are counted (`tally_heartbeats_total{outcome="rejected"}`) and
//! logged at warn with the caller's address, at most once every
//! [`LOG_EVERY`] per address (with the number held back meanwhile).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use sqlx::PgPool;
use tonic::{
    Status,
    body::Body,
    codegen::{Service, http},
    server::NamedService,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};

use crate::{
    auth::{self, Admitted, Credentials},
    error::Error,
    log_pace::{LOG_EVERY, LogPace},
    metrics::Metrics,
    node_tokens::NodeTokens,
};

/// Lookups of node ids the book does not know, per second, at most.
pub const LOOKUPS_PER_SECOND: f64 = 20.0;
/// A node id not found is refused without a lookup for this long.
pub const UNKNOWN_FOR: Duration = Duration::from_secs(10);
/// Unknown ids remembered; beyond, the memory starts afresh.
const REMEMBERED: usize = 4096;

/// What checks a call's token.
#[derive(Clone)]
pub struct Gate {
    tokens: Arc<NodeTokens>,
    pool: PgPool,
    metrics: Arc<Metrics>,
    state: Arc<Mutex<GateState>>,
}

#[derive(Debug)]
struct GateState {
    /// Lookups that may be made now (a token bucket).
    lookups: f64,
    refilled: Instant,
    /// Node ids looked up and not found, and when.
    unknown: HashMap<String, Instant>,
    /// The pace of the refusals' log lines, per address.
    logged: LogPace<Option<IpAddr>>,
}

impl Gate {
    pub fn new(tokens: Arc<NodeTokens>, pool: PgPool, metrics: Arc<Metrics>) -> Self {
        Self {
            tokens,
            pool,
            metrics,
            state: Arc::new(Mutex::new(GateState {
                lookups: LOOKUPS_PER_SECOND,
                refilled: Instant::now(),
                unknown: HashMap::new(),
                logged: LogPace::default(),
            })),
        }
    }

    /// Wraps the service `inner`.
    pub fn wrap<S>(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            gate: self.clone(),
        }
    }

    /// The credentials of a call with these headers, or why not.
    async fn check(&self, headers: &http::HeaderMap) -> Result<Credentials, Error> {
        let value = headers.get("authorization").and_then(|v| v.to_str().ok());
        let credentials = auth::from_bearer(value)?;
        if let Some(admitted) = self.tokens.admits(&credentials) {
            self.first_use(&credentials, admitted).await;
            return Ok(credentials);
        }
        let refused = || Error::Unauthenticated("unknown node or wrong token");
        if self.tokens.knows(&credentials.node_id) || !self.may_look_up(&credentials.node_id) {
            return Err(refused());
        }
        if let Err(error) = self
            .tokens
            .reload_node(&self.pool, &credentials.node_id)
            .await
        {
            tracing::warn!(%error, "cannot look a node's token up");
            return Err(Error::Unavailable("cannot check the token now"));
        }
        if let Some(admitted) = self.tokens.admits(&credentials) {
            self.first_use(&credentials, admitted).await;
            return Ok(credentials);
        }
        if !self.tokens.knows(&credentials.node_id) {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.unknown.len() >= REMEMBERED {
                state.unknown.clear();
            }
            state
                .unknown
                .insert(credentials.node_id.clone(), Instant::now());
        }
        Err(refused())
    }

    /// The first use of a node's new token ends the grace of the one
    /// before it. A failure is logged: the grace then ends at its time.
    async fn first_use(&self, credentials: &Credentials, admitted: Admitted) {
        if admitted != Admitted::Current || !self.tokens.has_previous(&credentials.node_id) {
            return;
        }
        match self
            .tokens
            .retire_previous(&self.pool, &credentials.node_id, &credentials.secret_hash)
            .await
        {
            Ok(()) => tracing::info!(
                node = %credentials.node_id,
                "the node used its new token: the one before it is no longer valid"
            ),
            Err(error) => tracing::warn!(
                node = %credentials.node_id,
                %error,
                "cannot end the grace of the node's previous token; it ends at its time"
            ),
        }
    }

    /// Whether an unknown node id may be looked up now.
    fn may_look_up(&self, node_id: &str) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state
            .unknown
            .get(node_id)
            .is_some_and(|at| now.duration_since(*at) < UNKNOWN_FOR)
        {
            return false;
        }
        let refill = now.duration_since(state.refilled).as_secs_f64() * LOOKUPS_PER_SECOND;
        state.lookups = (state.lookups + refill).min(LOOKUPS_PER_SECOND);
        state.refilled = now;
        if state.lookups < 1.0 {
            return false;
        }
        state.lookups -= 1.0;
        true
    }

    /// Counts a refusal and logs it, paced per address.
    fn refused(&self, source: Option<IpAddr>, error: &Error) {
        self.metrics.rejected(1);
        let logged = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .logged
            .event(source, Instant::now());
        let Some(refused) = logged else {
            return;
        };
        let source = source.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        tracing::warn!(
            %source,
            refused,
            %error,
            "heartbeat calls refused: authentication failed (logged at most every {}s per \
             address)",
            LOG_EVERY.as_secs()
        );
    }
}

/// The service behind the token check.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    gate: Gate,
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Authenticated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The service polled ready is the one to call; a clone takes its
        // place for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        Box::pin(async move {
            match gate.check(request.headers()).await {
                Ok(credentials) => {
                    request.extensions_mut().insert(credentials);
                    inner.call(request).await
                }
                Err(error) => {
                    gate.refused(remote_ip(&request), &error);
                    Ok(Status::from(error).into_http())
                }
            }
        })
    }
}

/// The caller's address, as the transport recorded it (plaintext or TLS).
fn remote_ip<B>(request: &http::Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .and_then(TcpConnectInfo::remote_addr)
        .map(|address| address.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_gate() -> Gate {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@localhost/none")
            .expect("a lazy pool");
        Gate::new(
            Arc::default(),
            pool,
            Arc::new(Metrics::new().expect("metrics")),
        )
    }

    #[tokio::test]
    async fn lookups_of_unknown_ids_are_few_and_not_repeated() {
        let gate = new_gate();
        let allowed = (0..100)
            .filter(|i| gate.may_look_up(&format!("n{i}")))
            .count();
        assert_eq!(allowed, LOOKUPS_PER_SECOND as usize, "a burst, then none");
        let fresh = new_gate();
        fresh
            .state
            .lock()
            .expect("lock")
            .unknown
            .insert("gone".into(), Instant::now());
        assert!(!fresh.may_look_up("gone"), "not found a moment ago");
        assert!(fresh.may_look_up("other"));
    }

    #[tokio::test]
    async fn a_missing_or_malformed_token_is_refused_without_a_lookup() {
        let gate = new_gate();
        let mut headers = http::HeaderMap::new();
        assert!(matches!(
            gate.check(&headers).await,
            Err(Error::Unauthenticated(_))
        ));
        headers.insert("authorization", "Bearer nodot".parse().expect("value"));
        assert!(matches!(
            gate.check(&headers).await,
            Err(Error::Unauthenticated(_))
        ));
        assert_eq!(
            gate.state.lock().expect("lock").lookups,
            LOOKUPS_PER_SECOND,
            "no lookup was spent"
        );
    }
}
