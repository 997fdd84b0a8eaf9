//! TLS on the node channel: with a certificate the collector speaks only
//! TLS, a client that trusts its CA is served, others are not; without one
//! it refuses to start unless plaintext is asked for explicitly. And what
//! both listeners do with connections that only hold sockets.

use crate::common::{self, browser};

use std::{process::Command, time::Duration};

use common::fleet::{self, Fleet, Process};
use tally_proto::v1::{Outcome, heartbeat_client::HeartbeatClient};
use tally_testkit::certs::Pki;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn pki() -> Pki {
    Pki::new(&["localhost"]).expect("certificates")
}

async fn tls_client(
    port: u16,
    ca_pem: &str,
) -> Result<HeartbeatClient<Channel>, tonic::transport::Error> {
    tls_client_with(port, ca_pem, None).await
}

/// A TLS client of `localhost:port` that trusts `ca_pem`, presenting
/// `identity` (a client certificate and key) if given.
pub(crate) async fn tls_client_with(
    port: u16,
    ca_pem: &str,
    identity: Option<tonic::transport::Identity>,
) -> Result<HeartbeatClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(HeartbeatClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_ca_only() {
    let Some(fleet) = Fleet::start("tls").await else {
        return;
    };
    let node = fleet.add_node("t").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ours = pki();
    let (cert, key) = ours.write_server(dir.path()).expect("write cert and key");
    let server = Process::start_with(
        &fleet.url,
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
            "--handshake-timeout",
            "1s",
        ],
    );
    let port = server.address.port();

    // Half-open handshakes: connections that say nothing, or only the
    // first bytes of a ClientHello. They are closed after the handshake
    // timeout, and real clients are served meanwhile.
    let mut half_open = Vec::new();
    for i in 0..20 {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        if i % 2 == 1 {
            use tokio::io::AsyncWriteExt as _;
            socket
                .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .expect("a partial ClientHello");
        }
        half_open.push(socket);
    }

    let mut client = tls_client(port, &ours.ca_pem).await.expect("TLS connects");
    let reply = fleet::send(
        &mut client,
        Some(&node.token),
        fleet::heartbeat("e", 1, 10, 20),
    )
    .await
    .expect("served over TLS");
    assert_eq!(reply.outcome(), Outcome::Applied);
    for mut socket in half_open {
        use tokio::io::AsyncReadExt as _;
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut byte))
            .await
            .expect("closed within the handshake timeout");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "closed, not answered: {read:?}"
        );
    }

    // Another CA: the handshake fails.
    let other = pki();
    let refused = match tls_client(port, &other.ca_pem).await {
        Err(_) => true,
        Ok(mut c) => fleet::send(&mut c, Some(&node.token), fleet::heartbeat("e", 2, 11, 21))
            .await
            .is_err(),
    };
    assert!(refused, "a client with another CA must not be served");

    // Plaintext to a TLS port: no answer.
    let plain = match HeartbeatClient::connect(format!("http://127.0.0.1:{port}")).await {
        Err(_) => true,
        Ok(mut c) => fleet::send(&mut c, Some(&node.token), fleet::heartbeat("e", 3, 12, 22))
            .await
            .is_err(),
    };
    assert!(plain, "plaintext must not be served on the TLS port");
    assert_eq!(fleet.totals(&node.id).await.0, 10);
}

#[test]
fn serve_without_tls_or_plaintext_refuses_to_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_tally-collector"))
        .args(["serve", "--listen", "127.0.0.1:0", "--no-migrate"])
        // Never reached: the check comes before connecting.
        .env(
            "DATABASE_URL",
            "postgres://nobody@localhost/none?host=/nonexistent",
        )
        .output()
        .expect("run tally-collector");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "no TLS certificate given: pass --tls-cert and --tls-key, or --insecure-plaintext"
        ),
        "{stderr}"
    );
}

/// The open files the test needs (its sockets, and the collector's, which
/// inherits the limit).
const OPEN_FILES: libc::rlim_t = 16_384;

/// Raises this process's open-file limit to at least [`OPEN_FILES`] (the
/// hard limit too, which root may).
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct, setrlimit reads it.
    let raised = unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit), 0);
        limit.rlim_max = limit.rlim_max.max(OPEN_FILES);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit)
    };
    assert_eq!(
        raised,
        0,
        "cannot raise the open-file limit to {}: {}",
        limit.rlim_max,
        std::io::Error::last_os_error()
    );
}

/// A TCP connection to `port` from `source` (any address of 127/8).
async fn connect_from(source: [u8; 4], port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind((std::net::Ipv4Addr::from(source), 0).into())
        .expect("bind the source address");
    socket
        .connect((std::net::Ipv4Addr::LOCALHOST, port).into())
        .await
        .expect("connect")
}

/// Whether the collector closed `socket` (end of file or reset) by
/// `deadline`.
async fn closed_by(socket: &mut tokio::net::TcpStream, deadline: tokio::time::Instant) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An HTTP answer (408, 400) before the close: read on.
            Ok(Ok(_)) => {}
        }
    }
}

/// The value of the sample `name{labels}` in a Prometheus text answer.
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Thousands of connections that only hold sockets: 5,000 idle (half on
/// each listener), 1,000 half-finished handshakes (partial ClientHellos on
/// the TLS node channel, partial request headers on HTTP), and one address
/// opening more than its share. The ones over the per-address limit are
/// closed at once, the rest after the handshake timeout; real nodes (over
/// TLS) and a browser are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_only_hold_connections_are_closed_while_nodes_and_a_browser_are_served() {
    use tokio::io::AsyncWriteExt as _;
    let test = "sockets_that_only_hold_connections_are_closed";
    let Some(browser) = browser::Browser::start(test, 1280, 900).await else {
        return;
    };
    let Some(fleet) = Fleet::start("tls_held_sockets").await else {
        return;
    };
    raise_open_files();
    let nodes = [
        fleet.add_node("a").await,
        fleet.add_node("b").await,
        fleet.add_node("c").await,
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let ours = pki();
    let (cert, key) = ours.write_server(dir.path()).expect("write cert and key");
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let http_listen = format!("127.0.0.1:{http_port}");
    let server = Process::start_with(
        &fleet.url,
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
            "--http-listen",
            &http_listen,
            // Long enough that the first idle connections are still held
            // when the last are opened (5 s on a busy 2-core machine).
            "--handshake-timeout",
            "12s",
            "--header-read-timeout",
            "12s",
            "--max-connections-per-address",
            "600",
            "--max-http-connections-per-address",
            "600",
        ],
    );
    let grpc_port = server.address.port();
    let http = common::http::Client::new(http_listen.parse().expect("address"));

    // Real nodes report over TLS every 100 ms throughout.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut reporters = Vec::new();
    for node in &nodes {
        let (token, ca, mut stopped) = (node.token.clone(), ours.ca_pem.clone(), stopped.clone());
        reporters.push(tokio::spawn(async move {
            let mut client = tls_client(grpc_port, &ca).await.expect("TLS connects");
            let mut sent = 0u64;
            while !*stopped.borrow() {
                sent += 1;
                let reply = fleet::send(
                    &mut client,
                    Some(&token),
                    fleet::heartbeat("e", sent, sent * 10, sent * 20),
                )
                .await
                .expect("a real node is served");
                assert_eq!(reply.outcome(), Outcome::Applied);
                let _ = tokio::time::timeout(Duration::from_millis(100), stopped.changed()).await;
            }
            sent
        }));
    }
    drop(stopped);

    // 5,000 idle connections from ten addresses (250 per listener each),
    // and 1,000 half-finished handshakes from two others.
    let started = tokio::time::Instant::now();
    let mut held = Vec::new();
    for i in 0..10u8 {
        for _ in 0..250 {
            held.push(connect_from([127, 0, 0, 10 + i], grpc_port).await);
            held.push(connect_from([127, 0, 0, 10 + i], http_port).await);
        }
    }
    for _ in 0..500 {
        let mut socket = connect_from([127, 0, 0, 30], grpc_port).await;
        socket
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .expect("a partial ClientHello");
        held.push(socket);
        let mut socket = connect_from([127, 0, 0, 31], http_port).await;
        socket
            .write_all(b"GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("partial request headers");
        held.push(socket);
    }
    // One address beyond its share: 700 where 600 are allowed.
    let mut greedy = Vec::new();
    for _ in 0..700 {
        greedy.push(connect_from([127, 0, 0, 40], grpc_port).await);
    }
    let opened_in = started.elapsed();
    eprintln!(
        "opened {} held connections and {} from one address in {opened_in:?}",
        held.len(),
        greedy.len()
    );

    // While they are held: the collector counts them, and serves.
    let metrics = http.get("/metrics").await;
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    let open_grpc = sample(&metrics.body, r#"tally_connections_open{listener="grpc"}"#);
    let open_http = sample(&metrics.body, r#"tally_connections_open{listener="http"}"#);
    eprintln!("held by the collector: grpc {open_grpc}, http {open_http}");
    assert!(
        open_grpc >= 3_000.0 && open_http >= 3_000.0,
        "grpc {open_grpc}, http {open_http}"
    );
    assert_eq!(
        sample(
            &metrics.body,
            r#"tally_connections_closed_by_limit_total{listener="grpc",reason="address_full"}"#
        ),
        100.0,
        "the connections beyond the address's share are closed"
    );
    let mut closed_at_once = 0;
    let now = tokio::time::Instant::now() + Duration::from_millis(1);
    for socket in &mut greedy {
        if closed_by(socket, now).await {
            closed_at_once += 1;
        }
    }
    assert_eq!(closed_at_once, 100, "closed as soon as accepted");
    browser
        .client
        .goto(&format!("http://{http_listen}/"))
        .await
        .expect("open the dashboard");
    browser
        .wait_for(
            "three rows",
            Duration::from_secs(10),
            "return document.querySelectorAll('#nodes-body tr').length;",
            |v| v.as_u64() == Some(3),
        )
        .await;

    // After the timeouts every held connection is closed.
    let mut still_open = 0;
    let deadline = started + Duration::from_secs(30);
    for socket in held.iter_mut().chain(greedy.iter_mut()) {
        if !closed_by(socket, deadline).await {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "connections still open after the timeouts");
    let metrics = http.get("/metrics").await;
    let closed_quiet = sample(
        &metrics.body,
        r#"tally_connections_closed_by_limit_total{listener="grpc",reason="silent"}"#,
    ) + sample(
        &metrics.body,
        r#"tally_connections_closed_by_limit_total{listener="http",reason="silent"}"#,
    );
    let open_grpc = sample(&metrics.body, r#"tally_connections_open{listener="grpc"}"#);
    eprintln!(
        "closed for want of a request: {closed_quiet}; still open: grpc {open_grpc}, http {}",
        sample(&metrics.body, r#"tally_connections_open{listener="http"}"#)
    );
    assert!(closed_quiet >= 5_500.0, "{closed_quiet}");
    assert!(open_grpc <= 3.0, "only the real nodes stay: {open_grpc}");

    // The browser is still served, live; the nodes' heartbeats all applied.
    browser
        .client
        .refresh()
        .await
        .expect("reload the dashboard");
    browser
        .wait_for(
            "three rows after the reload",
            Duration::from_secs(10),
            "return document.querySelectorAll('#nodes-body tr').length;",
            |v| v.as_u64() == Some(3),
        )
        .await;
    stop.send_replace(true);
    for (node, reporter) in nodes.iter().zip(reporters) {
        let sent = reporter.await.expect("reporter");
        assert!(sent >= 20, "{sent}");
        assert_eq!(
            fleet.totals(&node.id).await.0,
            i64::try_from(sent * 10).expect("small")
        );
    }
    browser.finish().await;
}
