//! `tally-collector` from the command line: migrations applied and
//! reverted, nodes added, listed and removed, clear errors.

use crate::common;

use std::process::{Command, Output};

use common::fleet::Fleet;

fn run(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-collector"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("run tally-collector")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_added_listed_and_removed() {
    let Some(fleet) = Fleet::start("cli_nodes").await else {
        return;
    };
    let out = run(&fleet.url, &["node", "add", "web-1"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("node added: web-1 (c"), "{text}");
    let token = text.lines().last().expect("token line").trim().to_owned();
    let (id, secret) = token.split_once('.').expect("<id>.<secret>");
    assert_eq!(secret.len(), 64);
    // Only a hash is stored.
    let stored: String = sqlx::query_scalar(r#"SELECT "tokenHash" FROM "nodes" WHERE "id" = $1"#)
        .bind(id)
        .fetch_one(&fleet.pool)
        .await
        .expect("node row");
    assert!(!stored.contains(secret) && stored.len() == 64);

    let out = run(&fleet.url, &["node", "add", "web-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));

    let out = run(&fleet.url, &["node", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["totalUpload"], "0", "BIGINTs as decimal strings");

    let out = run(&fleet.url, &["node", "remove", "web-1"]);
    assert!(out.status.success(), "{out:?}");
    let count: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM "traffic_stats""#)
        .fetch_one(&fleet.pool)
        .await
        .expect("count");
    assert_eq!(count, 0, "the node's traffic_stats row went with it");
    let out = run(&fleet.url, &["node", "remove", "web-1"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_and_reverts() {
    let Some(fleet) = Fleet::start("cli_migrate").await else {
        return;
    };
    let tables = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations'",
        )
        .fetch_one(&fleet.pool)
        .await
        .expect("count tables")
    };
    let migrations = tally_collector::db::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count() as i64;
    // The thirteen tables the migrations make (five of the seed's era, then
    // billing 3, quotas 2, corrections 2; the ninth only adds columns; the
    // tenth the followed counter sets).
    let all = tables().await;
    assert_eq!(all, 13);
    let out = run(&fleet.url, &["migrate", "--revert-to", "0"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(tables().await, 0);
    let out = run(&fleet.url, &["migrate"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains(&format!(
            "database schema up to date ({migrations} migrations)"
        )),
        "{out:?}"
    );
    assert_eq!(tables().await, all);
}

#[test]
fn errors_are_one_clear_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_tally-collector"))
        .args(["node", "list"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no database given: set DATABASE_URL"),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_tally-collector"))
        .args(["node", "list"])
        .env(
            "DATABASE_URL",
            "postgres://nobody@localhost/none?host=/nonexistent",
        )
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("tally-collector: cannot connect to the database"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_tally-collector"))
        .arg("--help")
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "migrate", "node", "period", "DATABASE_URL"] {
        assert!(help.contains(word), "--help mentions {word}:\n{help}");
    }
}

#[test]
fn version_names_the_commit() {
    let out = collector(&["--version"])
        .output()
        .expect("run tally-collector");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tally_testkit::cli_check::assert_version_line(
        &String::from_utf8_lossy(&out.stdout),
        "tally-collector",
        env!("CARGO_PKG_VERSION"),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
    );
}

/// `tally-collector` with none of this environment's `TALLY_…` settings.
fn collector(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally-collector"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TALLY_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).env_remove("DATABASE_URL");
    cmd
}

#[test]
fn a_wrong_flag_is_a_usage_error() {
    for args in [
        &["--bogus", "node", "list"][..],
        &["node", "list", "--bogus"],
        &["serve", "--listen-on", "0.0.0.0:1"],
    ] {
        let out = collector(args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: unexpected argument '--"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("Usage: tally-collector"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A near miss is named.
    let out = collector(&["serve", "--writer", "2"])
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("tip: a similar argument exists: '--writers'"),
        "{out:?}"
    );
}

/// Runs `args` against a database whose port is closed; returns stderr
/// after checking the exit status and that it took seconds, not minutes.
fn against_a_closed_port(mut cmd: Command) -> String {
    let started = std::time::Instant::now();
    let out = cmd
        .env("DATABASE_URL", "postgres://tally:s3cret@127.0.0.1:1/counts")
        .output()
        .expect("run");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        took < tally_collector::db::CONNECT_TIMEOUT + std::time::Duration::from_secs(5),
        "took {took:?}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with(
            "tally-collector: cannot connect to the database \"counts\" at 127.0.0.1:1 as user tally: "
        ),
        "names the database: {stderr}"
    );
    assert_eq!(
        stderr.matches("Connection refused").count(),
        1,
        "names the cause, once: {stderr}"
    );
    assert!(!stderr.contains("s3cret"), "no password: {stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    stderr
}

#[test]
fn an_unreachable_database_is_one_clear_line() {
    against_a_closed_port(collector(&["node", "list"]));
}

#[test]
fn serve_with_an_unreachable_database_is_one_clear_line() {
    against_a_closed_port(collector(&[
        "serve",
        "--insecure-plaintext",
        "--listen",
        "127.0.0.1:0",
    ]));
    // TLS with TALLY_INSECURE_PLAINTEXT=false in the environment is not a
    // conflict: the switch is off (it gets as far as the database).
    let mut tls = collector(&["serve", "--tls-cert", "/c.pem", "--tls-key", "/k.pem"]);
    tls.env("TALLY_INSECURE_PLAINTEXT", "false");
    against_a_closed_port(tls);
    // Set, it is one.
    let out = collector(&["serve", "--tls-cert", "/c.pem", "--tls-key", "/k.pem"])
        .env("TALLY_INSECURE_PLAINTEXT", "true")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("error: --insecure-plaintext cannot be used with --tls-cert/--tls-key"),
        "{out:?}"
    );
}
