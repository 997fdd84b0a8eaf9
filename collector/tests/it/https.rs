//! HTTPS on the HTTP side: the API, the dashboard and its live events work
//! over TLS (HTTP/2 and HTTP/1.1 offered), plain HTTP is refused beyond
//! loopback unless asked for, and mutual TLS on the node channel lets in
//! only agents with a certificate of the client authority.

use std::{process::Command, sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tally_proto::v1::{Outcome, heartbeat_client::HeartbeatClient};
use tally_testkit::certs::Pki;
use tonic::transport::{Channel, Identity};

use crate::{
    common::{
        browser::Browser,
        fleet::{self, Fleet, Process},
    },
    tls::tls_client_with,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The protocol the server picks when offered `offered` (ALPN).
async fn negotiated(port: u16, ca_pem: &str, offered: &[&[u8]]) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = offered.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let stream = connector.connect(name, tcp).await.expect("handshake");
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_the_dashboard_and_live_events_work_over_https() {
    let test = "the_api_the_dashboard_and_live_events_work_over_https";
    let Some(browser) = Browser::start_with(test, 1280, 900, true).await else {
        return;
    };
    let Some(fleet) = Fleet::start("https").await else {
        return;
    };
    let node = fleet.add_node("web-1").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new(&["localhost"]).expect("certificates");
    let (cert, key) = pki.write_server(dir.path()).expect("write");
    let port = free_port();
    let server = Process::start_with(
        &fleet.url,
        &[
            "--insecure-plaintext",
            "--http-listen",
            &format!("127.0.0.1:{port}"),
            "--http-tls-cert",
            cert.to_str().expect("utf-8"),
            "--http-tls-key",
            key.to_str().expect("utf-8"),
        ],
    );

    assert_eq!(
        negotiated(port, &pki.ca_pem, &[b"h2", b"http/1.1"])
            .await
            .as_deref(),
        Some(&b"h2"[..])
    );
    assert_eq!(
        negotiated(port, &pki.ca_pem, &[b"http/1.1"])
            .await
            .as_deref(),
        Some(&b"http/1.1"[..])
    );

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("CA"))
        .build()
        .expect("client");
    let nodes = client
        .get(format!("https://localhost:{port}/api/v1/nodes"))
        .send()
        .await
        .expect("GET over HTTPS");
    assert_eq!(nodes.status(), 200);
    assert!(nodes.text().await.expect("body").contains("web-1"));
    // Plain HTTP on the HTTPS port gets nothing useful.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.is_ok_and(|r| r.status() != 200),
        "plain HTTP was served"
    );

    // The dashboard and its event stream, over HTTPS.
    browser
        .client
        .goto(&format!("https://localhost:{port}/"))
        .await
        .expect("open the dashboard");
    browser
        .wait_for(
            "the live event stream",
            Duration::from_secs(10),
            "return document.getElementById('connection').dataset.state;",
            |v| v == "live",
        )
        .await;
    let mut grpc = fleet::client(server.address).await;
    let reply = fleet::send(
        &mut grpc,
        Some(&node.token),
        fleet::heartbeat("e", 1, 5_000_000, 7),
    )
    .await
    .expect("heartbeat");
    assert_eq!(reply.outcome(), Outcome::Applied);
    let script = format!(
        r#"return document.querySelector('tr[data-node-id="{}"] [data-field="totalDownload"]')?.dataset.bytes ?? null;"#,
        node.id
    );
    browser
        .wait_for("the live figure", Duration::from_secs(10), &script, |v| {
            v == "5000000"
        })
        .await;
    browser.finish().await;
}

#[test]
fn plain_http_beyond_loopback_needs_asking_for() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tally-collector"))
            .args(["serve", "--insecure-plaintext", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env_remove("TALLY_HTTP_INSECURE_PLAINTEXT")
            .output()
            .expect("run tally-collector")
    };
    let out = run(&["--http-listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--http-listen 0.0.0.0:0 would serve plain HTTP beyond this host"),
        "{stderr}"
    );
    // Asked for: it gets as far as the database (which is not there).
    let out = run(&["--http-listen", "0.0.0.0:0", "--http-insecure-plaintext"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_lets_in_only_agents_with_a_client_certificate() {
    let Some(fleet) = Fleet::start("mtls").await else {
        return;
    };
    let node = fleet.add_node("m").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let server_pki = Pki::new(&["localhost"]).expect("certificates");
    let (cert, key) = server_pki.write_server(dir.path()).expect("write");
    let clients = Pki::new(&["node-m"]).expect("client certificates");
    let strangers = Pki::new(&["node-x"]).expect("other client certificates");
    let client_ca = dir.path().join("client-ca.pem");
    std::fs::write(&client_ca, &clients.ca_pem).expect("write");
    let server = Process::start_with(
        &fleet.url,
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
            "--client-ca",
            client_ca.to_str().expect("utf-8"),
        ],
    );
    let port = server.address.port();
    let send = |client: Result<HeartbeatClient<Channel>, tonic::transport::Error>, sequence| {
        let token = node.token.clone();
        async move {
            let mut client = client.map_err(|e| e.to_string())?;
            fleet::send(
                &mut client,
                Some(&token),
                fleet::heartbeat("e", sequence, 10, 20),
            )
            .await
            .map_err(|status| status.to_string())
        }
    };
    let ours = Identity::from_pem(&clients.cert_pem, &clients.key_pem);
    let reply = send(
        tls_client_with(port, &server_pki.ca_pem, Some(ours)).await,
        1,
    )
    .await
    .expect("an agent with a client certificate is served");
    assert_eq!(reply.outcome(), Outcome::Applied);
    let after_first = fleet.totals(&node.id).await;
    for (what, identity) in [
        ("no client certificate", None),
        (
            "a certificate of another authority",
            Some(Identity::from_pem(&strangers.cert_pem, &strangers.key_pem)),
        ),
    ] {
        let refused = send(tls_client_with(port, &server_pki.ca_pem, identity).await, 2).await;
        assert!(refused.is_err(), "{what} was served: {refused:?}");
    }
    assert_eq!(
        fleet.totals(&node.id).await,
        after_first,
        "only the first heartbeat counted"
    );
}
