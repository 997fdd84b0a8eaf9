//! Node tokens rotated and revoked without removing the node: the token
//! before a rotation is valid for its grace or until the new one is first
//! used, whichever comes first; a revoked node is refused and keeps its
//! records; the command line and the admin API do both.

use std::{
    process::{Command, Output},
    time::Duration,
};

use tally_collector::{
    http::{TokenSet, Tokens},
    token_rotation,
};
use tally_proto::v1::{HeartbeatReply, Outcome, heartbeat_client::HeartbeatClient};
use tokio::time::Instant;
use tonic::{Code, Status, transport::Channel};

use crate::common::{
    fleet::{self, Fleet},
    http::Client,
};

const ADMIN: &str = "admin-token-for-the-rotation-tests-0123";

/// Sends heartbeat `sequence` with `token`.
async fn send(
    client: &mut HeartbeatClient<Channel>,
    token: &str,
    sequence: u64,
) -> Result<HeartbeatReply, Status> {
    fleet::send(
        client,
        Some(token),
        fleet::heartbeat("e", sequence, sequence * 10, sequence * 20),
    )
    .await
}

/// Waits (the replicas' token books follow the database's events) until
/// `token` is refused, or panics.
async fn refused_soon(
    client: &mut HeartbeatClient<Channel>,
    token: &str,
    sequence: u64,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match send(client, token, sequence).await {
            Err(status) if status.code() == Code::Unauthenticated => return,
            other if Instant::now() > deadline => panic!("{what}: still {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits (the token book hears of a rotation through the database's
/// events, a moment after it committed) until `token` is taken, or panics.
async fn applied_soon(
    client: &mut HeartbeatClient<Channel>,
    token: &str,
    sequence: u64,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match send(client, token, sequence).await {
            Err(status) if status.code() == Code::Unauthenticated && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            reply => return applied(reply, what),
        }
    }
}

fn applied(reply: Result<HeartbeatReply, Status>, what: &str) {
    let reply = reply.unwrap_or_else(|status| panic!("{what}: {status:?}"));
    assert!(
        matches!(reply.outcome(), Outcome::Applied | Outcome::Duplicate),
        "{what}: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_before_a_rotation_lasts_until_the_new_one_is_used() {
    let Some(fleet) = Fleet::start("rotation_first_use").await else {
        return;
    };
    let node = fleet.add_node("web-1").await;
    let server = fleet.serve_here().await;
    let mut client = fleet::client(server.address).await;
    applied(send(&mut client, &node.token, 1).await, "the first token");

    let rotated = token_rotation::rotate(&fleet.pool, "web-1", Duration::from_secs(600))
        .await
        .expect("rotate");
    assert_ne!(rotated.token, node.token);
    assert!(rotated.previous_valid_until.is_some());
    // Within the grace both work, the old one as long as the new one was
    // not used.
    applied(
        send(&mut client, &node.token, 2).await,
        "the old token in its grace",
    );
    applied_soon(&mut client, &rotated.token, 3, "the new token").await;
    // Its first use ended the old one's grace.
    refused_soon(
        &mut client,
        &node.token,
        4,
        "the old token after the new one was used",
    )
    .await;
    let previous: Option<String> =
        sqlx::query_scalar(r#"SELECT "previousTokenHash" FROM "nodes" WHERE "id" = $1"#)
            .bind(&node.id)
            .fetch_one(&fleet.pool)
            .await
            .expect("node");
    assert_eq!(previous, None);
    applied(
        send(&mut client, &rotated.token, 5).await,
        "the new token again",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_ends_at_its_time_and_a_zero_grace_at_once() {
    let Some(fleet) = Fleet::start("rotation_grace").await else {
        return;
    };
    let node = fleet.add_node("web-1").await;
    let server = fleet.serve_here().await;
    let mut client = fleet::client(server.address).await;
    applied(send(&mut client, &node.token, 1).await, "the first token");

    let rotated = token_rotation::rotate(&fleet.pool, &node.id, Duration::from_secs(2))
        .await
        .expect("rotate");
    applied(
        send(&mut client, &node.token, 2).await,
        "the old token in its grace",
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    refused_soon(&mut client, &node.token, 3, "the old token after its grace").await;

    let again = token_rotation::rotate(&fleet.pool, &node.id, Duration::ZERO)
        .await
        .expect("rotate");
    assert_eq!(again.previous_valid_until, None);
    refused_soon(
        &mut client,
        &rotated.token,
        3,
        "a token rotated without grace",
    )
    .await;
    applied(send(&mut client, &again.token, 3).await, "the newest token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_and_keeps_its_records() {
    let Some(fleet) = Fleet::start("rotation_revoke").await else {
        return;
    };
    let node = fleet.add_node("web-1").await;
    let server = fleet.serve_here().await;
    let mut client = fleet::client(server.address).await;
    applied(send(&mut client, &node.token, 1).await, "the first token");
    let rotated = token_rotation::rotate(&fleet.pool, &node.id, Duration::from_secs(600))
        .await
        .expect("rotate");
    let totals = fleet.totals(&node.id).await;

    token_rotation::revoke(&fleet.pool, "web-1")
        .await
        .expect("revoke");
    refused_soon(
        &mut client,
        &rotated.token,
        2,
        "the current token of a revoked node",
    )
    .await;
    refused_soon(
        &mut client,
        &node.token,
        2,
        "the previous token of a revoked node",
    )
    .await;
    assert_eq!(fleet.totals(&node.id).await, totals, "its counters stay");
    let history: i64 =
        sqlx::query_scalar(r#"SELECT count(*) FROM "node_history" WHERE "nodeId" = $1"#)
            .bind(&node.id)
            .fetch_one(&fleet.pool)
            .await
            .expect("history");
    assert!(history > 0, "its history stays");

    // A rotation gives it a token again; the revoked ones stay invalid.
    let back = token_rotation::rotate(&fleet.pool, &node.id, Duration::from_secs(600))
        .await
        .expect("rotate");
    assert_eq!(
        back.previous_valid_until, None,
        "no grace for a revoked token"
    );
    applied_soon(&mut client, &back.token, 2, "the token after a revocation").await;
    refused_soon(
        &mut client,
        &rotated.token,
        3,
        "a revoked token after a new rotation",
    )
    .await;
}

fn run(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-collector"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("run tally-collector")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_and_the_admin_api_rotate_and_revoke() {
    let Some(fleet) = Fleet::start("rotation_cli_api").await else {
        return;
    };
    let node = fleet.add_node("web-1").await;
    let out = run(
        &fleet.url,
        &[
            "node",
            "rotate-token",
            "web-1",
            "--grace",
            "0s",
            "--token-only",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(token.starts_with(&format!("{}.", node.id)), "{token}");
    let out = run(&fleet.url, &["node", "rotate-token", "web-1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("the token before stays valid until"),
        "{text}"
    );
    let out = run(&fleet.url, &["node", "revoke", "web-1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("every token revoked"));
    let out = run(&fleet.url, &["node", "revoke", "nobody"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no node \"nobody\""),
        "{out:?}"
    );

    let server = fleet
        .serve_here_with(|options| {
            options.tokens = Tokens::new(TokenSet {
                admin: vec![ADMIN.into()],
                read: vec![],
            });
        })
        .await;
    let anonymous = Client::new(server.http_address);
    let admin = anonymous.with_token(Some(ADMIN));
    let path = format!("/api/v1/nodes/{}/token", node.id);
    assert_eq!(anonymous.post(&path, Some("{}")).await.status, 401);
    let bad = admin
        .post(&path, Some(r#"{"graceSeconds": 9999999999}"#))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let unknown = admin.post("/api/v1/nodes/nobody/token", Some("{}")).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let rotated = admin.post(&path, Some(r#"{"graceSeconds": 60}"#)).await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let body: serde_json::Value = serde_json::from_str(&rotated.body).expect("JSON");
    let token = body["token"].as_str().expect("token");
    // The node was revoked: no grace for the token before.
    assert_eq!(
        body["previousValidUntil"],
        serde_json::Value::Null,
        "{body}"
    );
    let mut client = fleet::client(server.address).await;
    applied_soon(&mut client, token, 1, "the token from the API").await;
    let again = admin.post(&path, Some("{}")).await;
    let body: serde_json::Value = serde_json::from_str(&again.body).expect("JSON");
    assert!(
        body["previousValidUntil"].is_string(),
        "the default grace: {body}"
    );
    let revoked = admin
        .post(&format!("/api/v1/nodes/{}/revoke", node.id), None)
        .await;
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    refused_soon(&mut client, token, 2, "a token revoked through the API").await;
}
