//! The dashboard page at `/`: plain HTML, CSS and JavaScript embedded in the
//! binary (no build step, nothing fetched from elsewhere). The page reads the
//! JSON API and the event stream like any other client.
//!
//! The script is a set of ES modules: the page loads `app.js` with
//! `<script type="module">`, and the browser fetches what it imports from
//! `/dashboard/`. Those files are a fixed table ([`FILES`]): a name not in it
//! is a 404, and nothing is read from disk.
//!
//! Every file is served with a strict Content-Security-Policy (scripts and
//! styles only from this origin, no inline code), `nosniff`, and
//! `Cache-Control: no-cache` with an `ETag` derived from the content: the
//! browser revalidates each time, so an upgraded collector never runs with
//! the page of the previous version, and an unchanged page costs a 304.

use std::sync::LazyLock;

use axum::{
    Router,
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::get,
};
use sha2::{Digest as _, Sha256};

use super::AppState;

/// What the page may load and run: only its own files and API, no inline
/// script or style, no frames, no forms posting anywhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// A strong validator: the start of the content's SHA-256, quoted.
    etag: HeaderValue,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        let digest = Sha256::digest(body.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            body,
            content_type,
            etag: HeaderValue::from_str(&format!("\"{hex}\""))
                .unwrap_or_else(|_| HeaderValue::from_static("\"0\"")),
        }
    }
}

static INDEX: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("dashboard/index.html"),
        "text/html; charset=utf-8",
    )
});

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// One entry of [`FILES`]: `dashboard/<name>` embedded, with its type.
macro_rules! file {
    ($name:literal, $content_type:expr) => {
        (
            $name,
            Asset::new(include_str!(concat!("dashboard/", $name)), $content_type),
        )
    };
}

/// Every file the page loads from `/dashboard/`, by name: the style sheet,
/// the entry module `app.js` and every module it imports (each module's
/// header says what it owns).
static FILES: LazyLock<Vec<(&str, Asset)>> = LazyLock::new(|| {
    vec![
        file!("style.css", CSS),
        file!("app.js", JAVASCRIPT),
        file!("anomalies.js", JAVASCRIPT),
        file!("api.js", JAVASCRIPT),
        file!("badges.js", JAVASCRIPT),
        file!("banner.js", JAVASCRIPT),
        file!("billing.js", JAVASCRIPT),
        file!("calibrations.js", JAVASCRIPT),
        file!("chart.js", JAVASCRIPT),
        file!("connection.js", JAVASCRIPT),
        file!("detail.js", JAVASCRIPT),
        file!("diagnostics.js", JAVASCRIPT),
        file!("dom.js", JAVASCRIPT),
        file!("events.js", JAVASCRIPT),
        file!("format.js", JAVASCRIPT),
        file!("nodes.js", JAVASCRIPT),
        file!("plot.js", JAVASCRIPT),
        file!("ranking.js", JAVASCRIPT),
        file!("selection.js", JAVASCRIPT),
        file!("settings.js", JAVASCRIPT),
        file!("sse.js", JAVASCRIPT),
        file!("state.js", JAVASCRIPT),
        file!("stream.js", JAVASCRIPT),
        file!("token.js", JAVASCRIPT),
    ]
});

/// The file of [`FILES`] named `name`.
fn file(name: &str) -> Option<&'static Asset> {
    FILES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, asset)| asset)
}

/// `/` and the page's files (open: they hold no data).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve(&INDEX, &headers) }),
        )
        .route(
            "/dashboard/{name}",
            get(|uri: Uri, headers: HeaderMap| async move { serve_file(&uri, &headers) }),
        )
}

/// `/dashboard/<name>`: the file of that name, or a bare 404 (as for any
/// path the router does not know). The name is compared as sent, not
/// percent-decoded, as the router matches paths.
fn serve_file(uri: &Uri, request: &HeaderMap) -> Response {
    match uri.path().strip_prefix("/dashboard/").and_then(file) {
        Some(asset) => serve(asset, request),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Whether `If-None-Match` names the asset's current version.
fn not_modified(asset: &Asset, request: &HeaderMap) -> bool {
    let Some(etag) = asset.etag.to_str().ok() else {
        return false;
    };
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        // A weak comparison, as RFC 9110 asks for If-None-Match.
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let fresh = not_modified(asset, request);
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let headers = response.headers_mut();
    if !fresh {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    headers.insert(header::ETAG, asset.etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The entry module, whose version the caching tests use.
    fn app_js() -> &'static Asset {
        file("app.js").expect("app.js is served")
    }

    #[test]
    fn each_file_has_its_content_type_a_policy_and_a_validator() {
        let files = FILES.iter().map(|(name, asset)| (*name, asset));
        for (name, asset) in [("index.html", &*INDEX)].into_iter().chain(files) {
            let kind = match name.rsplit_once('.').map(|(_, extension)| extension) {
                Some("html") => "text/html",
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                _ => panic!("{name}: an unexpected kind of file"),
            };
            let response = serve(asset, &HeaderMap::new());
            assert_eq!(response.status(), StatusCode::OK);
            assert!(
                header(&response, header::CONTENT_TYPE).starts_with(kind),
                "{name}"
            );
            assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
            assert_eq!(
                header(&response, header::CONTENT_SECURITY_POLICY),
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(header(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            let etag = header(&response, header::ETAG);
            assert_eq!(etag.len(), 34, "{etag}");
        }
        assert_ne!(INDEX.etag, app_js().etag);
    }

    /// The modules `text` imports: what is quoted after `} from` (the end
    /// of an `import { … } from '…'`, on one line or several) or after a
    /// bare `import` at the start of a line.
    fn imports(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|line| {
                let (_, rest) = line.split_once("} from '").or_else(|| {
                    line.split_once("import '")
                        .filter(|(before, _)| before.is_empty())
                })?;
                rest.split('\'').next()
            })
            .collect()
    }

    #[test]
    fn every_module_imported_is_served_and_every_module_served_is_imported() {
        let mut reached = vec!["app.js"];
        let mut next = 0;
        while let Some(&name) = reached.get(next) {
            next += 1;
            let Some(module) = file(name) else {
                panic!("{name} is imported but not served");
            };
            for specifier in imports(module.body) {
                let Some(imported) = specifier.strip_prefix("./") else {
                    panic!("{name} imports {specifier}, not a sibling module");
                };
                if !reached.contains(&imported) {
                    reached.push(imported);
                }
            }
        }
        assert!(reached.len() > 10, "{reached:?}");
        for (name, _) in FILES.iter().filter(|(name, _)| name.ends_with(".js")) {
            assert!(
                reached.contains(name),
                "{name} is served but never imported"
            );
        }
    }

    #[test]
    fn a_name_outside_the_table_is_not_found() {
        let request = HeaderMap::new();
        let status = |path: &str| {
            let uri: Uri = path.parse().expect("a URI");
            serve_file(&uri, &request).status()
        };
        assert_eq!(status("/dashboard/app.js"), StatusCode::OK);
        assert_eq!(status("/dashboard/format.js"), StatusCode::OK);
        for unknown in [
            "/dashboard/nope.js",
            "/dashboard/index.html",
            "/dashboard/../dashboard.rs",
            "/dashboard/%2e%2e/dashboard.rs",
            "/dashboard/%61pp.js",
            "/dashboard/APP.JS",
        ] {
            assert_eq!(status(unknown), StatusCode::NOT_FOUND, "{unknown}");
        }
    }

    #[test]
    fn a_known_version_is_answered_304_and_another_in_full() {
        let script = app_js();
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, script.etag.clone());
        let response = serve(script, &request);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&response, header::ETAG), script.etag);

        let list = format!("\"old\", W/{}", script.etag.to_str().unwrap_or(""));
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&list).expect("header value"),
        );
        assert_eq!(serve(script, &request).status(), StatusCode::NOT_MODIFIED);

        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"old\""));
        assert_eq!(serve(script, &request).status(), StatusCode::OK);
        request.insert(header::IF_NONE_MATCH, INDEX.etag.clone());
        assert_eq!(serve(script, &request).status(), StatusCode::OK);
    }

    /// Whether an HTML tag has an `on…=` attribute.
    fn has_event_handler(html: &str) -> bool {
        html.split('<').skip(1).any(|tag| {
            let tag = tag.split('>').next().unwrap_or("");
            tag.split_whitespace().skip(1).any(|attribute| {
                let name = attribute.split('=').next().unwrap_or("");
                name.len() > 2
                    && name.starts_with("on")
                    && name.bytes().all(|b| b.is_ascii_lowercase())
            })
        })
    }

    #[test]
    fn the_page_has_no_inline_code_and_no_outside_resources() {
        let html = INDEX.body;
        assert!(!html.contains("<style"), "inline <style>");
        assert!(!html.contains(" style="), "inline style attribute");
        assert!(!has_event_handler(html), "inline event handler");
        for script in html.split("<script").skip(1) {
            let tag = script.split('>').next().unwrap_or("");
            assert!(tag.contains("src=\"/dashboard/"), "inline script: {tag}");
        }
        let files = FILES.iter().map(|(_, asset)| asset.body);
        for text in [INDEX.body].into_iter().chain(files) {
            // The SVG namespace is a name, not something fetched.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("@import") && !text.contains("url(http"));
        }
        assert!(html.contains("href=\"/dashboard/style.css\""));
        assert!(html.contains("<script type=\"module\" src=\"/dashboard/app.js\">"));
    }
}
