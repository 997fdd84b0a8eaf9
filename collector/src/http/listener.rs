//! The HTTP side's connection loop: connections admitted within the
//! listener's limits ([`crate::connections`]), HTTP/1 request headers read
//! within a deadline (which also ends idle keep-alive connections), HTTP/2
//! kept alive with pings, TLS if asked for (the handshake within a
//! deadline, in the connection's own task), and a graceful end that lets
//! answers in flight finish.

use std::time::Duration;

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::connections::Admission;

/// A graceful end waits this long at most for connections to finish.
const GRACE: Duration = Duration::from_secs(10);

/// HTTPS: the acceptor, and how long a handshake may take.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
}

/// Serves `router` on `listener` (over TLS with `tls`) until `stopping`
/// turns true.
pub async fn serve(
    listener: TcpListener,
    admission: Admission,
    router: Router,
    header_read_timeout: Duration,
    tls: Option<Tls>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    loop {
        let admitted = tokio::select! {
            admitted = admission.next(&listener) => admitted,
            _ = stopping.wait_for(|stopping| *stopping) => break,
        };
        // Each request learns its client's address (failed authentications
        // are counted per address).
        let peer = ConnectInfo(admitted.peer_addr());
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(peer);
                request
            },
        ));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(admitted), service);
                    watcher.watch(connection.into_owned()).await
                }
                Some(tls) => {
                    let stream = match tokio::time::timeout(
                        tls.handshake_timeout,
                        tls.acceptor.accept(admitted),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, peer = %peer.0, "TLS handshake failed (HTTP)");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer.0, "TLS handshake timed out (HTTP)");
                            return;
                        }
                    };
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(error) = result {
                tracing::trace!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections still open after the grace period");
    }
}
