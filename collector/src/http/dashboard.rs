//! The dashboard page at `/`: plain HTML, CSS and JavaScript embedded in the
//! binary (no build step, nothing fetched from elsewhere). The page reads the
//! JSON API and the event stream like any other client.
//!
//! Every file is served with a strict Content-Security-Policy (scripts and
//! styles only from this origin, no inline code), `nosniff`, and
//! `Cache-Control: no-cache` with an `ETag` derived from the content: the
//! browser revalidates each time, so an upgraded collector never runs with
//! the page of the previous version, and an unchanged page costs a 304.

use std::sync::LazyLock;

use axum::{
    Router,
    http::{HeaderMap, HeaderValue, StatusCode, header},
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
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("dashboard/app.js"),
        "text/javascript; charset=utf-8",
    )
});
static STYLE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("dashboard/style.css"),
        "text/css; charset=utf-8",
    )
});

/// `/` and the page's files (open: they hold no data).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve(&INDEX, &headers) }),
        )
        .route(
            "/dashboard/app.js",
            get(|headers: HeaderMap| async move { serve(&SCRIPT, &headers) }),
        )
        .route(
            "/dashboard/style.css",
            get(|headers: HeaderMap| async move { serve(&STYLE, &headers) }),
        )
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

    #[test]
    fn each_file_has_its_content_type_a_policy_and_a_validator() {
        for (asset, kind) in [
            (&*INDEX, "text/html"),
            (&*SCRIPT, "text/javascript"),
            (&*STYLE, "text/css"),
        ] {
            let response = serve(asset, &HeaderMap::new());
            assert_eq!(response.status(), StatusCode::OK);
            assert!(header(&response, header::CONTENT_TYPE).starts_with(kind));
            assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
            assert_eq!(
                header(&response, header::CONTENT_SECURITY_POLICY),
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(header(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            let etag = header(&response, header::ETAG);
            assert_eq!(etag.len(), 34, "{etag}");
        }
        assert_ne!(INDEX.etag, SCRIPT.etag);
    }

    #[test]
    fn a_known_version_is_answered_304_and_another_in_full() {
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, SCRIPT.etag.clone());
        let response = serve(&SCRIPT, &request);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&response, header::ETAG), SCRIPT.etag);

        let list = format!("\"old\", W/{}", SCRIPT.etag.to_str().unwrap_or(""));
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&list).expect("header value"),
        );
        assert_eq!(serve(&SCRIPT, &request).status(), StatusCode::NOT_MODIFIED);

        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"old\""));
        assert_eq!(serve(&SCRIPT, &request).status(), StatusCode::OK);
        request.insert(header::IF_NONE_MATCH, INDEX.etag.clone());
        assert_eq!(serve(&SCRIPT, &request).status(), StatusCode::OK);
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
        for text in [INDEX.body, SCRIPT.body, STYLE.body] {
            // The SVG namespace is a name, not something fetched.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("@import") && !text.contains("url(http"));
        }
        assert!(html.contains("href=\"/dashboard/style.css\""));
    }
}
