//! TLS on the node channel: with a certificate the collector speaks only
//! TLS, a client that trusts its CA is served, others are not; without one
//! it refuses to start unless plaintext is asked for explicitly.

mod common;

use std::{process::Command, time::Duration};

use common::fleet::{self, Fleet, Process};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tally_proto::v1::{Outcome, heartbeat_client::HeartbeatClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("cert");
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

async fn tls_client(
    port: u16,
    ca_pem: &str,
) -> Result<HeartbeatClient<Channel>, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
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
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &ours.cert_pem).expect("write cert");
    std::fs::write(&key, &ours.key_pem).expect("write key");
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
