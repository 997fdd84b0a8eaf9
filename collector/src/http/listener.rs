//! The HTTP side's connection loop: connections admitted within the
//! listener's limits ([`crate::connections`]), HTTP/1 request headers read
//! within a deadline (which also ends idle keep-alive connections), HTTP/2
//! kept alive with pings, and a graceful end that lets answers in flight
//! finish.

use std::time::Duration;

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceExt as _;

use crate::connections::Admission;

/// A graceful end waits this long at most for connections to finish.
const GRACE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `stopping` turns true.
pub async fn serve(
    listener: TcpListener,
    admission: Admission,
    router: Router,
    header_read_timeout: Duration,
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
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(admitted), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
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
