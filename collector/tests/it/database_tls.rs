//! TLS to PostgreSQL: the collector honours `sslmode` and `sslrootcert` in
//! DATABASE_URL (as libpq does), verifies the server's certificate and name
//! when asked, and encrypts whenever the server offers TLS.

use std::process::{Command, Output};

use tally_collector::db;
use tally_testkit::{
    certs::{Pki, other_authority_pem},
    devdb::TempCluster,
    skip::skip,
};

/// A cluster that speaks TLS on 127.0.0.1 with a certificate for
/// `localhost`, the authority's certificate in a file, and where it is.
struct TlsDatabase {
    cluster: TempCluster,
    ca_file: std::path::PathBuf,
    other_ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsDatabase {
    fn start(test: &str) -> Option<Self> {
        let pki = Pki::new(&["localhost"]).expect("certificates");
        let cluster = match TempCluster::builder()
            .tcp()
            .tls(&pki.cert_pem, &pki.key_pem)
            .start()
        {
            Ok(cluster) => cluster,
            Err(e) if e.is_unavailable() => {
                skip(test, &format!("needs PostgreSQL 15 binaries ({e})"));
                return None;
            }
            Err(e) => panic!("{test}: cannot start a temporary PostgreSQL: {e}"),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).expect("write the CA");
        let other_ca_file = dir.path().join("other-ca.pem");
        std::fs::write(
            &other_ca_file,
            other_authority_pem("other").expect("other CA"),
        )
        .expect("write the other CA");
        Some(Self {
            cluster,
            ca_file,
            other_ca_file,
            _dir: dir,
        })
    }

    /// The URL to host `host` with `query` (`sslmode=…`).
    fn url(&self, host: &str, query: &str) -> String {
        format!("{}?{query}", self.cluster.tcp_url("postgres", host))
    }
}

fn migrate(url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-collector"))
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .output()
        .expect("run tally-collector")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether the pool's connections are encrypted.
async fn encrypted(url: &str) -> bool {
    let pool = db::connect(url, 1).await.expect("connect");
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("pg_stat_ssl")
}

#[test]
fn verify_full_connects_to_the_named_server_only() {
    let Some(db) = TlsDatabase::start("verify_full_connects_to_the_named_server_only") else {
        return;
    };
    let ca = db.ca_file.display();
    let out = migrate(&db.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    assert!(out.status.success(), "{}", stderr(&out));

    // Another authority signed nothing of this server's.
    let other = db.other_ca_file.display();
    let out = migrate(&db.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    ));
    assert!(!out.status.success(), "an unknown issuer was trusted");
    let text = stderr(&out);
    assert!(
        text.contains("cannot connect to the database") && text.contains("UnknownIssuer"),
        "{text}"
    );

    // The certificate names localhost, not 127.0.0.1: verify-full refuses,
    // verify-ca (the authority only) accepts.
    let out = migrate(&db.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    assert!(!out.status.success(), "a wrong server name was accepted");
    assert!(
        stderr(&out).contains("certificate not valid for name \"127.0.0.1\""),
        "{}",
        stderr(&out)
    );
    let out = migrate(&db.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test]
async fn tls_is_used_whenever_the_server_offers_it() {
    let Some(db) = TlsDatabase::start("tls_is_used_whenever_the_server_offers_it") else {
        return;
    };
    assert!(encrypted(&db.url("127.0.0.1", "sslmode=require")).await);
    // sqlx's default, as libpq's: prefer.
    assert!(encrypted(&db.url("127.0.0.1", "application_name=t")).await);
    assert!(!encrypted(&db.url("127.0.0.1", "sslmode=disable")).await);
}

#[test]
fn require_refuses_a_server_without_tls() {
    let cluster = match TempCluster::builder().tcp().start() {
        Ok(cluster) => cluster,
        Err(e) if e.is_unavailable() => {
            skip(
                "require_refuses_a_server_without_tls",
                &format!("needs PostgreSQL 15 binaries ({e})"),
            );
            return;
        }
        Err(e) => panic!("cannot start a temporary PostgreSQL: {e}"),
    };
    let base = cluster.tcp_url("postgres", "127.0.0.1");
    let out = migrate(&format!("{base}?sslmode=require"));
    assert!(!out.status.success(), "require connected without TLS");
    assert!(
        stderr(&out).contains("cannot connect to the database"),
        "{}",
        stderr(&out)
    );
    let out = migrate(&format!("{base}?sslmode=prefer"));
    assert!(out.status.success(), "{}", stderr(&out));
}
