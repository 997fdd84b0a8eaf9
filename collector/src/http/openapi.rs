//! The OpenAPI 3.1 document of the HTTP API, generated from the code: each
//! route is registered together with its `#[utoipa::path]` description (see
//! [`super::api`]), so the document cannot miss a route of the JSON API.
//! Routes implemented with plain axum elsewhere (the event stream,
//! `/metrics`) are described here by hand. Served at
//! `GET /api/v1/openapi.json`.

use std::sync::LazyLock;

use axum::http::header;
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, Response,
    ResponseBuilder, Schema, Tag,
    path::{HttpMethod, OperationBuilder},
    schema::{ComponentsBuilder, ObjectBuilder, Type},
    security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
};

pub use crate::error::ErrorBody;

pub const TAG_NODES: &str = "nodes";
pub const TAG_RANKINGS: &str = "rankings";
pub const TAG_ADMIN: &str = "admin";
pub const TAG_EVENTS: &str = "events";
pub const TAG_META: &str = "meta";

/// The names of the security schemes.
pub const READ_TOKEN: &str = "readToken";
pub const ADMIN_TOKEN: &str = "adminToken";

const DESCRIPTION: &str = "\
The JSON API of tally's collector: the fleet's nodes with their exact traffic counters, \
their history, rankings, and (with the admin token) enrolment and period resets.

* Every 64-bit counter is a JSON **decimal string** (`\"9007199254740993\"`): JSON numbers \
are doubles for most readers and lose digits above 2^53.
* Times are RFC 3339 in UTC with milliseconds and `Z` (`2026-11-25T10:00:00.000Z`).
* Errors are `{\"error\": {\"code\", \"message\"}}` with a stable `code`.
* Reading needs the read token (`Authorization: Bearer <token>`) when the collector has one \
(`--read-token`); the admin token reads too. The admin endpoints need the admin token \
(`--admin-token`) and answer 403 when the collector has none.
* Unknown query parameters are ignored; a known parameter with a bad value is a 400.";

/// What the generated paths are added to: description, security schemes,
/// tags.
pub fn base() -> OpenApi {
    let bearer = |description: &str| {
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(description))
                .build(),
        )
    };
    let tag = |name: &str, description: &str| {
        let mut tag = Tag::new(name);
        tag.description = Some(description.to_owned());
        tag
    };
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("tally collector API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(DESCRIPTION))
                .license(Some(LicenseBuilder::new().name("Apache-2.0").build())),
        )
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    READ_TOKEN,
                    bearer(
                        "The collector's read token (`--read-token`). Without one configured, \
                         reading is open.",
                    ),
                )
                .security_scheme(
                    ADMIN_TOKEN,
                    bearer("The collector's admin token (`--admin-token`); it also reads."),
                )
                .build(),
        ))
        .tags(Some([
            tag(TAG_NODES, "The nodes, their counters and history"),
            tag(TAG_RANKINGS, "Nodes ordered by traffic"),
            tag(TAG_ADMIN, "Changing the fleet (admin token)"),
            tag(TAG_EVENTS, "Live updates and metrics"),
            tag(TAG_META, "This document"),
        ]))
        .build()
}

/// The schema of a string the API sends as the name of a value of a real
/// enum: exactly `names` (each once, in order), so that the document lists
/// what the code can send and nothing else. The names come from the code
/// that makes them (`tally_proto`'s `name()`s, the views' `as_str`).
pub fn names_schema(
    description: &str,
    names: impl IntoIterator<Item = &'static str>,
) -> RefOr<Schema> {
    let mut values: Vec<&'static str> = Vec::new();
    for name in names {
        if !values.contains(&name) {
            values.push(name);
        }
    }
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values))
        .into()
}

/// The whole document: the registered routes' descriptions, and those of
/// the routes implemented elsewhere.
pub fn document() -> OpenApi {
    let mut openapi = super::api().into_openapi();
    let reading = || {
        [
            SecurityRequirement::default(),
            SecurityRequirement::new(READ_TOKEN, Vec::<String>::new()),
            SecurityRequirement::new(ADMIN_TOKEN, Vec::<String>::new()),
        ]
    };
    let error = |description: &str| -> Response {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    let text = || ObjectBuilder::new().schema_type(Type::String).build();
    let unauthorized = "A read token is configured and missing or wrong";
    let events = OperationBuilder::new()
        .tag(TAG_EVENTS)
        .operation_id(Some("events"))
        .summary(Some("Live updates (Server-Sent Events)"))
        .description(Some(
            "A `text/event-stream` of what changes in the fleet, from every collector of the \
             database:\n\n\
             * `event: heartbeat`, data `{\"nodeId\", \"lastSeen\", \"load\", \"traffic\": \
             {\"totalUpload\", \"totalDownload\", \"periodUpload\", \"periodDownload\", \
             \"periodStart\"}}`: one per applied heartbeat, with the totals after it;\n\
             * `event: period_reset`, data `{\"nodeId\", \"traffic\": {…the same 5 fields}}`;\n\
             * `event: nodes`, data `{\"nodeId\", \"change\": \"added\"|\"removed\"|\"token\"}`;\n\
             * `event: quota`, data `{\"nodeId\", \"nodeName\", \"periodStart\", \"threshold\", \
             \"usage\", \"quota\", \"mode\", \"at\"}`: a threshold (percent) of the node's quota \
             crossed, once per period;\n\
             * `event: calibration`, data `{\"nodeId\", \"calibrationId\", \"traffic\": {…the \
             same 5 fields}}`: an admin calibrated the node's counters;\n\
             * `event: anomaly`, data `{\"nodeId\", \"anomalyId\", \"status\": \
             \"accepted\"|\"discarded\", \"upload\", \"download\", \"credited\", \"traffic\"}`: \
             an admin decided a held anomaly;\n\
             * `event: anomaly_held`, data `{\"nodeId\", \"interface\", \"upload\", \
             \"download\"}`: a delta too large for its interface was held, not counted;\n\
             * `event: stale`, data `{\"nodeId\", \"reason\", \"run\", \
             \"staleHeartbeats\"}`: the node's last `run` (3) heartbeats in a row were \
             answered STALE: nothing they carry is counted (sent once per run; the next applied \
             heartbeat ends the run);\n\
             * `event: resync`: events may have been missed, fetch again.\n\n\
             Each event's data is one JSON object that also carries its name as `type`. \
             A `:` comment line every 15 s keeps the connection alive; the stream ends when the \
             collector stops. Counters are decimal strings here too.",
        ))
        .securities(Some(reading()))
        .response(
            "200",
            ResponseBuilder::new()
                .description("The event stream")
                .content(
                    "text/event-stream",
                    ContentBuilder::new().schema(Some(text())).build(),
                )
                .build(),
        )
        .response("401", error(unauthorized))
        .build();
    let metrics = OperationBuilder::new()
        .tag(TAG_EVENTS)
        .operation_id(Some("metrics"))
        .summary(Some("Prometheus metrics"))
        .description(Some(
            "The collector's metrics in the Prometheus text exposition format 0.0.4.",
        ))
        .securities(Some(reading()))
        .response(
            "200",
            ResponseBuilder::new()
                .description("The metrics")
                .content(
                    "text/plain; version=0.0.4",
                    ContentBuilder::new().schema(Some(text())).build(),
                )
                .build(),
        )
        .response("401", error(unauthorized))
        .build();
    openapi
        .paths
        .add_path_operation("/api/v1/events", vec![HttpMethod::Get], events);
    openapi
        .paths
        .add_path_operation("/metrics", vec![HttpMethod::Get], metrics);
    // Every operation that takes a token may be answered 429: an address
    // that sent too many wrong ones is held off for a while.
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                operation.responses.responses.insert(
                    "429".to_owned(),
                    RefOr::T(error(
                        "Too many wrong tokens from this address within a minute; try again \
                         after Retry-After (seconds)",
                    )),
                );
            }
        }
    }
    openapi
}

/// The document as served, made once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| match document().to_json() {
    Ok(json) => json,
    Err(error) => {
        tracing::error!(%error, "cannot serialize the OpenAPI document");
        String::from("{}")
    }
});

/// This document
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi",
    tag = TAG_META,
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object),
    )
)]
pub async fn serve() -> ([(header::HeaderName, &'static str); 1], &'static str) {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tally_proto::v1;

    use super::document;
    use crate::{
        validate,
        views::rankings::{By, Direction},
    };

    /// The values the document lists for the component schema `name`.
    fn listed(name: &str) -> Vec<String> {
        let json = document().to_json().unwrap_or_default();
        let document: Value = serde_json::from_str(&json).unwrap_or_default();
        let values = &document["components"]["schemas"][name]["enum"];
        let values = values.as_array().cloned().unwrap_or_default();
        values
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    /// Every name the API can send in a field of an enum's names is listed,
    /// and nothing else: the document once said `container-bridge` where
    /// the API sends `container_bridge`.
    #[test]
    fn named_values_are_the_names_the_api_sends() {
        let kinds = listed("LinkKind");
        assert!(kinds.iter().any(|k| k == "container_bridge"), "{kinds:?}");
        for kind in v1::LinkKind::ALL {
            let name = validate::kind_name(kind);
            assert!(kinds.iter().any(|k| k == name), "{name} not in {kinds:?}");
        }
        assert_eq!(kinds.len(), v1::LinkKind::ALL.len() - 1, "{kinds:?}");
        assert_eq!(
            listed("InterfaceState"),
            ["unknown", "attached", "gone", "retired"]
        );
        assert_eq!(
            listed("StaleReason"),
            [
                "earlier_reading",
                "superseded",
                "older_generation",
                "earlier_in_boot"
            ]
        );
        let by: Vec<_> = By::ALL.map(|b| b.as_str().to_owned()).into();
        assert_eq!(listed("RankBy"), by);
        let direction: Vec<_> = Direction::ALL.map(|d| d.as_str().to_owned()).into();
        assert_eq!(listed("RankDirection"), direction);
    }
}
