//! The OpenAPI document against the router that serves it: the document
//! parses, names its security schemes and counter format, and describes
//! exactly the routes the router has under `/api/v1` with exactly the
//! methods they answer. The router's routes are read from the router
//! itself (its `Debug` form lists every path), and each method is probed
//! over real HTTP.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::{fleet::Fleet, http::Client};
use serde_json::Value;
use tally_collector::http::{self, TokenSet, Tokens};

const ADMIN: &str = "admin-token-for-the-openapi-test";
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Every path the router routes, from its `Debug` form (which prints each
/// route's path as a quoted string).
fn router_paths() -> BTreeSet<String> {
    let debug = format!("{:?}", http::routes());
    debug
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => found.push(target),
                    _ => refs(value, found),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_exactly_what_is_served() {
    let Some(fleet) = Fleet::start("api_openapi").await else {
        return;
    };
    let server = fleet
        .serve_here_with(|options| {
            options.tokens = Tokens::new(TokenSet {
                admin: vec![ADMIN.into()],
                read: vec!["read-token-for-the-openapi-test".into()],
            })
        })
        .await;
    let anonymous = Client::new(server.http_address);
    let admin = anonymous.with_token(Some(ADMIN));

    // Served without a token, as JSON.
    let response = anonymous.get("/api/v1/openapi.json").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    let doc = &response.json;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "tally collector API");
    let schemes = &doc["components"]["securitySchemes"];
    for name in ["readToken", "adminToken"] {
        assert_eq!(schemes[name]["type"], "http", "{name}");
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
    }
    let counter = &doc["components"]["schemas"]["Counter"];
    assert_eq!(counter["type"], "string");
    assert!(counter["pattern"].is_string());
    assert_eq!(
        doc["components"]["schemas"]["Traffic"]["properties"]["totalUpload"]["$ref"],
        "#/components/schemas/Counter"
    );
    let mut found = Vec::new();
    refs(doc, &mut found);
    assert!(found.len() > 20);
    for target in found {
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("a schema reference: {target}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{target} is defined"
        );
    }

    // The documented operations, per path.
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeMap<&str, BTreeSet<String>> = paths
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .expect("path item")
                .keys()
                .map(|m| m.to_ascii_uppercase())
                .collect();
            (path.as_str(), methods)
        })
        .collect();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            let what = format!("{method} {path}");
            assert!(
                operation_ids.insert(operation["operationId"].as_str().expect("operationId")),
                "{what}: operation ids are unique"
            );
            assert!(operation["summary"].is_string(), "{what}");
            assert!(
                operation["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty())
            );
            let security = operation["security"].to_string();
            if path == "/api/v1/openapi.json" {
                assert_eq!(operation["security"], Value::Null, "open");
            } else if method == "get" {
                assert!(security.contains("readToken"), "{what}: {security}");
                assert!(operation["responses"]["401"].is_object(), "{what}");
            } else {
                assert_eq!(security, r#"[{"adminToken":[]}]"#, "{what}");
                for status in ["401", "403"] {
                    assert!(operation["responses"][status].is_object(), "{what}");
                }
            }
        }
    }

    // The router's paths under /api/v1 are the document's, and the
    // document's others (/metrics) are routed too.
    let routed = router_paths();
    assert!(
        routed.contains("/api/v1/nodes") && routed.contains("/healthz"),
        "the router's Debug form lists its paths: {routed:?}"
    );
    let api: BTreeSet<&str> = routed
        .iter()
        .map(String::as_str)
        .filter(|p| p.starts_with("/api/v1/") || *p == "/api/v1")
        .collect();
    let in_document: BTreeSet<&str> = documented
        .keys()
        .copied()
        .filter(|p| p.starts_with("/api/v1/"))
        .collect();
    assert_eq!(api, in_document, "routed under /api/v1 vs documented");
    for path in documented.keys() {
        assert!(
            routed.contains(*path),
            "{path} is documented but not routed"
        );
    }

    // Each documented path answers its documented methods, and only them.
    let id = fleet.add_node("probe").await.id;
    for (path, methods) in &documented {
        let path = path.replace("{id}", &id);
        for method in METHODS {
            let what = format!("{method} {path}");
            // The event stream does not end: only its status is read.
            let (status, message) = if path.ends_with("/events") {
                (admin.status(method, &path).await, String::new())
            } else {
                let body = (method == "POST" && path == "/api/v1/nodes")
                    .then_some(r#"{"name": "probe-2"}"#);
                let response = admin.send(method, &path, body).await;
                let message = response.json["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                (response.status, message)
            };
            if methods.contains(method) {
                assert!(
                    status != 405 && !message.starts_with("no such endpoint"),
                    "{what} is documented but answers {status} {message}"
                );
                assert!(status < 500, "{what}: {status} {message}");
            } else {
                assert_eq!(status, 405, "{what} is not documented: {message}");
            }
        }
    }
}
