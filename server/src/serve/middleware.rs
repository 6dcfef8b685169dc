//! Middleware ("hoops"): the access log (which also assigns the request id, injects the
//! shared state and records the HTTP metrics), API-key auth, the JSON content-type check,
//! the body read timeout, and CORS.
//!
//! One log line per request: for streams the [`RequestLog`] travels with the stream and
//! is written when it ends (or the client goes away), so the line carries the real
//! duration and token counts. Prompts, completions and keys are never logged unless
//! `--log-content`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use salvo::cors::{AllowHeaders, AllowMethods, AllowOrigin, Cors, CorsHandler, ExposeHeaders};
use salvo::http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use salvo::http::{Method, StatusCode};
use salvo::prelude::*;
use subtle::ConstantTimeEq;

use super::error::{ApiError, ERROR_KIND_KEY};
use super::routes;
use super::state::AppState;

pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current request (from `X-Request-Id`, or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A client's `X-Request-Id` is kept when it is short and printable; otherwise replaced.
fn accept_request_id(value: Option<&HeaderValue>) -> Option<String> {
    let s = value?.to_str().ok()?;
    let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_string())
}

/// The record of one request, logged (and counted in the metrics) when dropped.
pub struct RequestLog {
    state: Arc<AppState>,
    pub request_id: String,
    method: String,
    route: &'static str,
    start: Instant,
    pub status: u16,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub error_kind: Option<&'static str>,
    /// Set by streams that ran to their end; a stream dropped before is a disconnect.
    pub completed: bool,
    is_stream: bool,
    /// Only with `--log-content`.
    pub prompt: Option<String>,
    pub completion: Option<String>,
}

impl RequestLog {
    pub fn new(state: Arc<AppState>, request_id: String, method: &str, route: &'static str) -> Self {
        RequestLog {
            state,
            request_id,
            method: method.to_string(),
            route,
            start: Instant::now(),
            status: 200,
            prompt_tokens: 0,
            completion_tokens: 0,
            error_kind: None,
            completed: true,
            is_stream: false,
            prompt: None,
            completion: None,
        }
    }

    /// The log now belongs to a stream: it is written when the stream ends.
    pub fn into_stream(mut self) -> Self {
        self.is_stream = true;
        self.completed = false;
        self
    }

    /// The stream ran to its end (not a client disconnect).
    pub fn mark_completed(&mut self) {
        self.completed = true;
    }

    pub fn log_content(&self) -> bool {
        self.state.log_content
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let seconds = self.start.elapsed().as_secs_f64();
        self.state.metrics.observe_request(self.route, self.status, seconds, self.error_kind);
        let disconnected = self.is_stream && !self.completed;
        let duration_ms = (seconds * 1000.0 * 10.0).round() / 10.0;
        if self.state.log_content {
            tracing::info!(
                target: "stellarchat::access",
                request_id = %self.request_id,
                method = %self.method,
                route = self.route,
                status = self.status,
                duration_ms,
                prompt_tokens = self.prompt_tokens,
                completion_tokens = self.completion_tokens,
                error = self.error_kind.unwrap_or(""),
                stream = self.is_stream,
                disconnected,
                prompt = self.prompt.as_deref().unwrap_or(""),
                completion = self.completion.as_deref().unwrap_or(""),
                "request"
            );
        } else {
            tracing::info!(
                target: "stellarchat::access",
                request_id = %self.request_id,
                method = %self.method,
                route = self.route,
                status = self.status,
                duration_ms,
                prompt_tokens = self.prompt_tokens,
                completion_tokens = self.completion_tokens,
                error = self.error_kind.unwrap_or(""),
                stream = self.is_stream,
                disconnected,
                "request"
            );
        }
    }
}

/// The outermost hoop: request id, state injection, and the request's log record.
pub struct AccessLog {
    pub state: Arc<AppState>,
}

#[async_trait]
impl Handler for AccessLog {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        let id = accept_request_id(req.headers().get(&REQUEST_ID_HEADER))
            .unwrap_or_else(|| ulid::Ulid::generate().to_string().to_ascii_lowercase());
        if let Ok(value) = HeaderValue::from_str(&id) {
            res.headers_mut().insert(REQUEST_ID_HEADER.clone(), value);
        }
        let route = routes::route_label(req.matched_path());
        depot.insert_typed(self.state.clone());
        depot.insert_typed(RequestId(id.clone()));
        depot.insert_typed(RequestLog::new(self.state.clone(), id, req.method().as_str(), route));

        ctrl.call_next(req, depot, res).await;

        // Streams took their record with them; everything else is logged now.
        if let Ok(mut log) = depot.remove_typed::<RequestLog>() {
            let status = res.status_code.unwrap_or(StatusCode::NOT_FOUND);
            log.status = status.as_u16();
            log.error_kind =
                depot.get::<&'static str>(ERROR_KIND_KEY).ok().copied().or_else(|| {
                    (status.is_client_error() || status.is_server_error()).then(|| kind_for_status(status))
                });
        }
    }
}

/// For errors rendered later by the catcher (unmatched routes, salvo's own errors): the
/// kind the catcher will choose.
fn kind_for_status(status: StatusCode) -> &'static str {
    ApiError::for_status(status, "", None).kind()
}

/// `Authorization: Bearer <key>` against `--api-key`s, in constant time per key. Every
/// key is compared (no early exit) so timing does not tell which one nearly matched.
pub fn key_matches(presented: &[u8], keys: &[String]) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for key in keys {
        ok |= presented.ct_eq(key.as_bytes());
    }
    bool::from(ok)
}

fn bearer(req: &Request) -> Option<&[u8]> {
    let value = req.headers().get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

/// Guards `/v1/*`, `/tokenize`, `/detokenize`, `/v1/chat/ws` (and `/metrics` with
/// `--metrics-api-key`).
#[derive(Clone)]
pub struct ApiKeyAuth {
    pub keys: Arc<Vec<String>>,
}

#[async_trait]
impl Handler for ApiKeyAuth {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        if self.keys.is_empty() {
            return;
        }
        let ok = bearer(req).is_some_and(|presented| key_matches(presented, &self.keys));
        if !ok {
            let error = ApiError::InvalidApiKey;
            depot.insert(ERROR_KIND_KEY, error.kind());
            error.render_into(res);
            ctrl.skip_rest();
        }
    }
}

/// Whether a `Content-Type` value is JSON: `application/json`, any case, with or without
/// parameters such as `; charset=utf-8`.
pub fn is_json_content_type(value: Option<&HeaderValue>) -> bool {
    let Some(Ok(value)) = value.map(HeaderValue::to_str) else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Refuses a POST whose body is not declared JSON with 415 (a missing `Content-Type`
/// too). Browsers send text/plain and form bodies cross-origin without a CORS preflight;
/// demanding JSON makes every such request preflighted, so `--cors-origin` decides.
pub struct RequireJson;

#[async_trait]
impl Handler for RequireJson {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        if req.method() != Method::POST {
            return;
        }
        let content_type = req.headers().get(salvo::http::header::CONTENT_TYPE);
        if !is_json_content_type(content_type) {
            let shown = content_type.and_then(|v| v.to_str().ok()).unwrap_or("none").chars().take(100).collect();
            let error = ApiError::UnsupportedMediaType(shown);
            depot.insert(ERROR_KIND_KEY, error.kind());
            error.render_into(res);
            ctrl.skip_rest();
        }
    }
}

/// Reads a POST body before the handler, within `--body-timeout` and `--max-body-bytes`:
/// a client that trickles (or stalls) its body gets 408 instead of holding a worker and a
/// connection forever. The body is cached in the request, so the handler's read is free.
pub struct ReadBodyWithin {
    pub timeout: Duration,
    pub limit: usize,
}

#[async_trait]
impl Handler for ReadBodyWithin {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        if req.method() != Method::POST {
            return;
        }
        let declared = req
            .headers()
            .get(salvo::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let outcome = if declared.is_some_and(|len| len > self.limit as u64) {
            Err(ApiError::PayloadTooLarge { limit: self.limit })
        } else {
            match tokio::time::timeout(self.timeout, req.payload_with_max_size(self.limit)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(salvo::http::ParseError::PayloadTooLarge)) => Err(ApiError::PayloadTooLarge { limit: self.limit }),
                Ok(Err(e)) => Err(ApiError::invalid_no_param(format!("Could not read the request body: {e}"))),
                Err(_) => Err(ApiError::BodyTimeout { seconds: self.timeout.as_secs() }),
            }
        };
        if let Err(error) = outcome {
            depot.insert(ERROR_KIND_KEY, error.kind());
            error.render_into(res);
            if let ApiError::BodyTimeout { .. } = error {
                // The rest of a stalled body will not be read: close rather than keep it alive.
                res.headers_mut().insert(salvo::http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            ctrl.skip_rest();
        }
    }
}

/// CORS for the configured origins (`*` = any). `None` when no origin is configured.
pub fn cors(origins: &[String]) -> Option<CorsHandler> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        Cors::new()
            .allow_origin(allow_origin)
            .allow_methods(AllowMethods::list([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS]))
            .allow_headers(AllowHeaders::list([
                AUTHORIZATION,
                salvo::http::header::CONTENT_TYPE,
                REQUEST_ID_HEADER.clone(),
            ]))
            .expose_headers(ExposeHeaders::list([REQUEST_ID_HEADER.clone(), salvo::http::header::RETRY_AFTER]))
            .max_age(600)
            .into_handler(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        let keys = vec!["sk-one".to_string(), "sk-two".to_string()];
        assert!(key_matches(b"sk-one", &keys));
        assert!(key_matches(b"sk-two", &keys));
        assert!(!key_matches(b"sk-on", &keys));
        assert!(!key_matches(b"sk-one ", &keys));
        assert!(!key_matches(b"", &keys));
    }

    #[test]
    fn only_json_content_types_pass() {
        let ok = |v: &'static str| is_json_content_type(Some(&HeaderValue::from_static(v)));
        assert!(ok("application/json"));
        assert!(ok("application/json; charset=utf-8"));
        assert!(ok("Application/JSON ;charset=UTF-8"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/x-www-form-urlencoded"));
        assert!(!ok("multipart/form-data; boundary=x"));
        assert!(!ok("application/jsonx"));
        assert!(!ok(""));
        assert!(!is_json_content_type(None));
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        assert_eq!(accept_request_id(Some(&HeaderValue::from_static("abc-123"))), Some("abc-123".into()));
        assert_eq!(accept_request_id(Some(&HeaderValue::from_static("has space"))), None);
        assert_eq!(accept_request_id(Some(&HeaderValue::from_str(&"x".repeat(200)).unwrap())), None);
        assert_eq!(accept_request_id(None), None);
    }
}
