//! `tally-collector` from the command line: migrations applied and
//! reverted, nodes added, listed and removed, clear errors.

mod common;

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
    // One table per migration.
    let migrations = tally_collector::db::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count() as i64;
    assert_eq!(tables().await, migrations);
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
    assert_eq!(tables().await, migrations);
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
