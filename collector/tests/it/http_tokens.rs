//! The HTTP side's admin and read tokens from the command line: several at
//! once from a file, rotated on SIGHUP without a restart, weak ones and the
//! examples' placeholders refused at start, and wrong ones logged and
//! answered 429 past a limit per address.

use std::process::Command;

use crate::common::{
    fleet::{Fleet, Process},
    http::Client,
};

const OLD: &str = "old-admin-token-0123456789abcdef0123";
const NEW: &str = "new-admin-token-0123456789abcdef0123";
const READ: &str = "read-token-0123456789abcdef0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_on_sighup_and_guesses_are_held_off() {
    let Some(fleet) = Fleet::start("http_tokens").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let admin_file = dir.path().join("admin-tokens");
    std::fs::write(&admin_file, format!("# the admins\n{OLD}\n{NEW}\n")).expect("write");
    let http_listen = format!("127.0.0.1:{}", free_port());
    let mut server = Process::start_with(
        &fleet.url,
        &[
            "--insecure-plaintext",
            "--http-listen",
            &http_listen,
            "--admin-token-file",
            admin_file.to_str().expect("utf-8"),
            "--read-token",
            READ,
        ],
    );
    let http = Client::new(http_listen.parse().expect("address"));
    for token in [OLD, NEW] {
        let listed = http.with_token(Some(token)).get("/api/v1/nodes").await;
        assert_eq!(listed.status, 200, "{token}: {}", listed.body);
        let status = http
            .with_token(Some(token))
            .get("/api/v1/billing")
            .await
            .status;
        assert_ne!(status, 401, "{token}");
    }

    // Rotation: the old token goes, on SIGHUP, without a restart.
    std::fs::write(&admin_file, format!("{NEW}\n")).expect("write");
    let pid = server.pid();
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    server.wait_for_line("the reload", |line| {
        line.contains("HTTP tokens read again").then_some(())
    });
    assert_eq!(
        http.with_token(Some(OLD)).get("/api/v1/nodes").await.status,
        401
    );
    assert_eq!(
        http.with_token(Some(NEW)).get("/api/v1/nodes").await.status,
        200
    );
    assert_eq!(server.pid(), pid, "the collector was not restarted");

    // A file with a bad token is not taken: the valid set stays.
    std::fs::write(&admin_file, "short\n").expect("write");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    server.wait_for_line("the refused reload", |line| {
        line.contains("HTTP tokens not changed").then_some(())
    });
    assert_eq!(
        http.with_token(Some(NEW)).get("/api/v1/nodes").await.status,
        200
    );

    // Guessing: ten wrong tokens, then 429 for this address, right token or
    // not, with the wait in Retry-After; each failure is logged at WARN.
    // (One wrong token above counts as well.)
    let mut statuses = Vec::new();
    for _ in 0..9 {
        statuses.push(
            http.with_token(Some("guess"))
                .get("/api/v1/nodes")
                .await
                .status,
        );
    }
    assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
    let held_off = http.with_token(Some(NEW)).get("/api/v1/nodes").await;
    assert_eq!(held_off.status, 429, "{}", held_off.body);
    assert_eq!(held_off.error_code(), Some("too_many_requests"));
    let wait: u64 = held_off
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("HTTP authentication failed")
            && l.contains("address=127.0.0.1")),
        "{log}"
    );
    assert!(
        !log.contains("guess") && !log.contains(NEW),
        "a token was logged"
    );
}

#[test]
fn weak_tokens_and_placeholders_are_refused_at_start() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tally-collector"))
            .args(["serve", "--insecure-plaintext", "--listen", "127.0.0.1:0"])
            .args(args)
            // Never reached: the flags are refused first.
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env_remove("TALLY_ADMIN_TOKEN")
            .output()
            .expect("run tally-collector")
    };
    for (args, expected) in [
        (
            &["--admin-token", "CHANGE-ME-openssl-rand-hex-32"][..],
            "--admin-token: the token: is the example's placeholder",
        ),
        (
            &["--read-token", "too-short"][..],
            "--read-token: the token: is 9 characters long",
        ),
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("database"),
            "checked after the database: {stderr}"
        );
    }
}
