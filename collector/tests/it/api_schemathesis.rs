//! The HTTP API against its own OpenAPI document, by schemathesis (PyPI):
//! a real collector on a throwaway database with enrolled nodes that have
//! reported, and `schemathesis run` on the document it serves, with a
//! bounded number of cases per operation and a fixed seed. Every answer
//! must be one the document describes (status, content type, headers,
//! body schema), no answer may be a 5xx, invalid input must be refused and
//! valid input accepted.
//!
//! schemathesis comes from the virtual environment `cargo xtask test` makes
//! (`xtask/src/schemathesis.rs`), named by `TALLY_SCHEMATHESIS`, else
//! looked for under `target/schemathesis-venv`. Without it the test says
//! `SKIP`; with `TALLY_REQUIRE_PRIVILEGED=1` it fails instead.

use crate::common;

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use common::{
    fleet::{self, Fleet},
    http::Client,
};
use tally_collector::http::{TokenSet, Tokens};

const ADMIN: &str = "admin-token-for-the-schemathesis-test";
const READ: &str = "read-token-for-the-schemathesis-test";

/// Cases per operation and phase.
const MAX_EXAMPLES: &str = "30";
/// Past this the run is stopped and the test fails.
const TIME_LIMIT: Duration = Duration::from_secs(600);

/// The `schemathesis` program, or `None` after saying why there is none.
fn schemathesis(test: &str) -> Option<PathBuf> {
    let program = std::env::var_os("TALLY_SCHEMATHESIS")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/schemathesis-venv/bin/schemathesis")
            },
            PathBuf::from,
        );
    if program.is_file() {
        return Some(program);
    }
    let reason = format!(
        "needs schemathesis at {} (`cargo xtask test` installs it)",
        program.display()
    );
    tally_testkit::skip::skip(test, &reason);
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_the_document() {
    let test = "api_schemathesis";
    let Some(program) = schemathesis(test) else {
        return;
    };
    let Some(fleet) = Fleet::start(test).await else {
        return;
    };
    let server = fleet
        .serve_here_with(|options| {
            // schemathesis sends wrong tokens on purpose, thousands: held
            // off after ten, nothing else would be tested (the 429 is
            // documented on every operation that takes a token).
            options.tokens = Tokens::with_failure_limit(
                TokenSet {
                    admin: vec![ADMIN.into()],
                    read: vec![READ.into()],
                },
                u32::MAX,
            )
        })
        .await;

    // Nodes with counters, interfaces and history, one of them with
    // deltas held as anomalies (its maxRate is 1 byte/s), and one that
    // never reported.
    let mut client = fleet::client(server.address).await;
    for (i, name) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
        let node = fleet.add_node(name).await;
        if name == "gamma" {
            fleet.set_node_settings(&node.id, r#""maxRate" = 1"#).await;
        }
        for sequence in 1..=3_u64 {
            let bytes = 1000 * sequence * (i as u64 + 1);
            fleet::send(
                &mut client,
                Some(&node.token),
                fleet::heartbeat("e", sequence, bytes, bytes / 2),
            )
            .await
            .expect("heartbeat");
        }
    }
    fleet.add_node("silent").await;
    let reader = Client::new(server.http_address).with_token(Some(READ));
    let held = reader.get("/api/v1/anomalies?status=held").await;
    assert_eq!(held.status, 200, "{}", held.body);
    assert!(
        held.json["anomalies"]
            .as_array()
            .is_some_and(|a| a.len() >= 2),
        "anomalies held: {}",
        held.body
    );

    // Every check runs (schemathesis's default) but for the exceptions
    // in api_schemathesis.toml, each with its reason. schemathesis writes
    // nothing but into this folder.
    let work = tempfile::tempdir().expect("a folder");
    let url = format!("http://{}/api/v1/openapi.json", server.http_address);
    let started = Instant::now();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api_schemathesis.toml");
    let run = tokio::process::Command::new(&program)
        .current_dir(work.path())
        .args(["--config-file", config])
        .arg("run")
        .arg(&url)
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", "12"])
        // One request at a time: the collector answers 503 busy (as
        // documented) past `--max-expensive-reads` concurrent history and
        // ranking requests, which `not_a_server_error` would count.
        .args(["--workers", "1"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "30"])
        .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
        // The event stream never ends while the collector runs: each case
        // would wait for the request timeout. Its authentication and
        // parameters are those of the other reads; tests/events.rs tests it.
        .args(["--exclude-path", "/api/v1/events"])
        .arg("--no-color")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(TIME_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {TIME_LIMIT:?}"))
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found answers the document does not describe ({}):\n{text}",
        output.status
    );
    // Past the harness's capture: what was run, and how long it took.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "{test}: schemathesis passed in {:.0?}:\n{text}",
        started.elapsed()
    );
}
