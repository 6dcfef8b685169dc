//! The chat page at `/` (off with `--no-ui`): static files embedded in the binary from
//! `server/ui/` (no CDN, nothing fetched at run time), served with a strict
//! Content-Security-Policy. The page loads without an API key; its calls need one.
//!
//! Why the CSP has no `'unsafe-inline'`: model output is rendered as Markdown, and even if
//! a sanitiser missed something, inline script and event-handler attributes would not run.

use salvo::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use salvo::prelude::*;

use super::error::ApiError;

/// The page's policy: its own scripts, styles and socket only; no framing, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../../ui/index.html");

/// `/ui/{file}`: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../ui/app.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../ui/style.css")),
    ("vendor/marked.umd.js", "text/javascript; charset=utf-8", include_str!("../../ui/vendor/marked.umd.js")),
    ("vendor/purify.min.js", "text/javascript; charset=utf-8", include_str!("../../ui/vendor/purify.min.js")),
];

fn send(res: &mut Response, content_type: &'static str, body: &'static str) {
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(HeaderName::from_static("content-security-policy"), HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff"));
    headers.insert(HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer"));
    headers.insert(HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY"));
    // Revalidate, so that a new binary's page is not mixed with an old cached script.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res.write_body(body).ok();
}

/// `GET /`: the page.
#[handler]
pub async fn page(res: &mut Response) {
    send(res, "text/html; charset=utf-8", INDEX_HTML);
}

/// `GET /ui/{file}`: a script or style sheet of the page.
#[handler]
pub async fn asset(req: &mut Request, res: &mut Response) -> Result<(), ApiError> {
    let name = req.param::<String>("file").unwrap_or_default();
    let (_, content_type, body) =
        ASSETS.iter().find(|(n, _, _)| *n == name).ok_or_else(|| ApiError::RouteNotFound(req.uri().path().to_string()))?;
    send(res, content_type, body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_embedded_files() {
        // Every script and style the page names is embedded, and nothing comes from elsewhere.
        for (attr, prefix) in [("src=\"", "/ui/"), ("href=\"", "/ui/")] {
            for (at, _) in INDEX_HTML.match_indices(attr) {
                let url: String = INDEX_HTML[at + attr.len()..].chars().take_while(|c| *c != '"').collect();
                if url.starts_with("data:") {
                    continue;
                }
                let name = url.strip_prefix(prefix).unwrap_or_else(|| panic!("{url} is not an embedded asset"));
                assert!(ASSETS.iter().any(|(n, _, _)| *n == name), "{name} is not embedded");
            }
        }
        assert!(!INDEX_HTML.contains("<script>"), "no inline script (the CSP forbids it)");
        for handler in ["onclick=", "onload=", "onerror=", "onsubmit=", "oninput=", "onkeydown="] {
            assert!(!INDEX_HTML.contains(handler), "no inline event handlers");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
