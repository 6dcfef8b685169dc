//! The server layer's one error type, [`ApiError`], and the ONE place where errors become
//! HTTP: [`ApiError::status`] / [`ApiError::to_body`] (OpenAI's error object) and the
//! [`Writer`] impl that handlers return through.
//!
//! Every failure — validation, auth, routing (404/405 via [`OpenAiCatcher`]), engine errors,
//! panics — ends up as `{"error":{"message","type","param","code"}}`. Internal errors keep
//! their detail in the log only; the client sees a generic message.

use std::borrow::Cow;

use salvo::http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use salvo::http::{ResBody, StatusCode};
use salvo::prelude::*;
use stellarchat_model::ModelError;

use super::protocol::{ErrorBody, ErrorDetail};

/// Seconds a client should wait after a 429 before retrying.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Everything a request can fail with, above the model crate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// A field has a wrong value, a wrong type, or is missing (`param` names it).
    #[error("{message}")]
    InvalidRequest { message: String, param: Option<String> },
    /// A field we understand but do not implement (e.g. `tools`); `param` names it.
    #[error("{param}: {message}")]
    Unsupported { param: String, message: String },
    /// A field we do not know at all (OpenAI rejects those too).
    #[error("Unrecognized request argument supplied: {0}")]
    UnknownField(String),
    /// The body is not JSON, or not UTF-8.
    #[error("{0}")]
    InvalidJson(String),
    /// Prompt plus requested tokens do not fit the context window.
    #[error("{message}")]
    ContextLengthExceeded { message: String, param: Option<String> },
    #[error("The model `{0}` does not exist")]
    ModelNotFound(String),
    #[error("Route not found: {0}")]
    RouteNotFound(String),
    /// A stored `/v1/responses` response that does not exist (or is another key's).
    #[error("Response with id '{0}' not found.")]
    ResponseNotFound(String),
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("Incorrect API key provided")]
    InvalidApiKey,
    /// A JSON route posted with a `Content-Type` other than `application/json` (or none):
    /// refused so that a browser's CORS "simple request" (text/plain, form types) cannot
    /// reach the API without a preflight.
    #[error("Content-Type must be application/json, got {0:?}")]
    UnsupportedMediaType(String),
    /// The body did not arrive within `--body-timeout` (a slow or stalled client).
    #[error("The request body did not arrive within {seconds} seconds")]
    BodyTimeout { seconds: u64 },
    #[error("Request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("The server is overloaded: {0}")]
    Overloaded(String),
    #[error("The model is still loading")]
    NotReady,
    #[error("The server is shutting down")]
    ShuttingDown,
    /// Something broke inside. The string is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// The engine failed while running this request (a step panicked, or the engine gave
    /// up); the request may be retried. The string is logged, never sent.
    #[error("engine fault: {0}")]
    EngineFault(String),
    /// A model named by the request could not be loaded (a bad file, no room on the
    /// device, a broken chat template). The reason names the file or key; other models
    /// keep serving.
    #[error("The model `{model}` could not be loaded: {reason}")]
    ModelLoadFailed { model: String, reason: String },
}

/// One row of [`ERROR_TABLE`]: what the API says about one kind of error.
#[derive(Debug)]
pub struct ErrorClass {
    /// [`ApiError::kind`]: metrics label, log field, and `error.code` when sent.
    pub kind: &'static str,
    pub status: StatusCode,
    /// OpenAI's `error.type`.
    pub error_type: &'static str,
    /// Whether `error.code` carries the kind (OpenAI sends none for plain validation errors).
    pub sends_code: bool,
    /// Whether the catcher uses this row for a bare status of salvo's (see [`ApiError::for_status`]).
    pub catches: bool,
    /// For `/openapi.json`.
    pub summary: &'static str,
}

const fn class(
    kind: &'static str,
    status: StatusCode,
    error_type: &'static str,
    sends_code: bool,
    catches: bool,
    summary: &'static str,
) -> ErrorClass {
    ErrorClass { kind, status, error_type, sends_code, catches, summary }
}

const INVALID: &str = "invalid_request_error";
const INTERNAL_ROW: usize = 11;

/// Every error the API answers, one row per [`ApiError`] variant (see [`ApiError::class`]). Status, `error.type`, `error.code`, the catcher's choice for a bare
/// status, the access log's kind and the OpenAPI error responses all come from here.
pub const ERROR_TABLE: &[ErrorClass] = &[
    class("invalid_request", StatusCode::BAD_REQUEST, INVALID, false, false, "A field has a wrong value or type, or is missing"),
    class("unsupported_parameter", StatusCode::BAD_REQUEST, INVALID, true, false, "A field we do not implement"),
    class("unknown_parameter", StatusCode::BAD_REQUEST, INVALID, true, false, "A field unknown to the API"),
    class("invalid_json", StatusCode::BAD_REQUEST, INVALID, false, false, "The body is not JSON"),
    class("context_length_exceeded", StatusCode::BAD_REQUEST, INVALID, true, false, "Prompt and max tokens exceed the context"),
    class("invalid_api_key", StatusCode::UNAUTHORIZED, "authentication_error", true, true, "Missing or wrong API key"),
    class("model_not_found", StatusCode::NOT_FOUND, INVALID, true, false, "Unknown model"),
    class("route_not_found", StatusCode::NOT_FOUND, INVALID, true, true, "Unknown route"),
    class("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED, INVALID, true, true, "Method not allowed"),
    class("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE, INVALID, true, true, "Request body too large"),
    class("overloaded", StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", true, true, "Queue full; see Retry-After"),
    class("internal", StatusCode::INTERNAL_SERVER_ERROR, "server_error", false, false, "Internal error"),
    class("not_ready", StatusCode::SERVICE_UNAVAILABLE, "service_unavailable_error", true, true, "Model loading"),
    class("shutting_down", StatusCode::SERVICE_UNAVAILABLE, "service_unavailable_error", true, false, "Server shutting down"),
    class("response_not_found", StatusCode::NOT_FOUND, INVALID, false, false, "Unknown stored response"),
    class("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID, true, false, "Content-Type is not application/json"),
    class("body_timeout", StatusCode::REQUEST_TIMEOUT, INVALID, true, false, "Request body too slow"),
    class("internal_error", StatusCode::INTERNAL_SERVER_ERROR, "server_error", true, false, "The engine failed during the request"),
    class("model_load_failed", StatusCode::INTERNAL_SERVER_ERROR, "server_error", true, false, "The model could not be loaded"),
];

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest { message: message.into(), param: Some(param.into()) }
    }

    pub fn invalid_no_param(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest { message: message.into(), param: None }
    }

    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Unsupported { param: param.into(), message: message.into() }
    }

    /// A stable, low-cardinality name: the metrics label, the log field, and the key of the
    /// variant's row in [`ERROR_TABLE`].
    pub fn kind(&self) -> &'static str {
        self.class().kind
    }

    /// The variant's row in [`ERROR_TABLE`]: the one place status, `error.type` and
    /// `error.code` are decided.
    pub fn class(&self) -> &'static ErrorClass {
        let kind = match self {
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::Unsupported { .. } => "unsupported_parameter",
            ApiError::UnknownField(_) => "unknown_parameter",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::ContextLengthExceeded { .. } => "context_length_exceeded",
            ApiError::InvalidApiKey => "invalid_api_key",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::RouteNotFound(_) => "route_not_found",
            ApiError::ResponseNotFound(_) => "response_not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Internal(_) => "internal",
            ApiError::NotReady => "not_ready",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::EngineFault(_) => "internal_error",
            ApiError::ModelLoadFailed { .. } => "model_load_failed",
        };
        // Every kind has its row: `every_variant_has_one_row` below checks the table.
        ERROR_TABLE.iter().find(|c| c.kind == kind).unwrap_or(&ERROR_TABLE[INTERNAL_ROW])
    }

    /// The HTTP status, from [`ERROR_TABLE`].
    pub fn status(&self) -> StatusCode {
        self.class().status
    }

    /// OpenAI's `error.type`, from [`ERROR_TABLE`].
    pub fn error_type(&self) -> &'static str {
        self.class().error_type
    }

    /// OpenAI's `error.code`, from [`ERROR_TABLE`]: the kind, except where OpenAI's clients
    /// expect none.
    pub fn code(&self) -> Option<&'static str> {
        let class = self.class();
        class.sends_code.then_some(class.kind)
    }

    /// The error for a bare status that salvo produced without one of ours (unmatched
    /// route, 405, a failed WebSocket handshake, a caught panic): the table row that
    /// catches that status, or the generic client or server error.
    pub fn for_status(status: StatusCode, path: &str, brief: Option<String>) -> ApiError {
        let caught = ERROR_TABLE.iter().find(|c| c.catches && c.status == status).map(|c| c.kind);
        match caught {
            Some("route_not_found") => ApiError::RouteNotFound(path.to_string()),
            Some("method_not_allowed") => ApiError::MethodNotAllowed,
            Some("payload_too_large") => ApiError::PayloadTooLarge { limit: 0 },
            Some("invalid_api_key") => ApiError::InvalidApiKey,
            Some("overloaded") => ApiError::Overloaded("too many requests".into()),
            Some("not_ready") => ApiError::NotReady,
            _ if status.is_client_error() => ApiError::invalid_no_param(
                brief.unwrap_or_else(|| status.canonical_reason().unwrap_or("Bad request").to_string()),
            ),
            _ => ApiError::Internal(format!("unhandled status {status}")),
        }
    }

    pub fn param(&self) -> Option<String> {
        match self {
            ApiError::InvalidRequest { param, .. } | ApiError::ContextLengthExceeded { param, .. } => param.clone(),
            ApiError::Unsupported { param, .. } => Some(param.clone()),
            ApiError::UnknownField(name) => Some(name.clone()),
            ApiError::ModelNotFound(_) | ApiError::ModelLoadFailed { .. } => Some("model".into()),
            _ => None,
        }
    }

    /// What the client may read. Internal errors never carry their detail out.
    pub fn public_message(&self) -> Cow<'static, str> {
        match self {
            ApiError::Internal(_) => Cow::Borrowed("The server had an error while processing your request."),
            ApiError::EngineFault(_) => {
                Cow::Borrowed("The model engine failed while generating this response; the request may be retried.")
            }
            other => Cow::Owned(other.to_string()),
        }
    }

    /// OpenAI's error object.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.public_message().into_owned(),
                r#type: self.error_type().to_string(),
                param: self.param(),
                code: self.code().map(str::to_string),
            },
        }
    }

    /// Writes status, headers and body. Every error response in the server goes through here.
    pub fn render_into(&self, res: &mut Response) {
        if let ApiError::Internal(detail) | ApiError::EngineFault(detail) = self {
            tracing::error!(error = %detail, kind = self.kind(), "internal error");
        }
        res.status_code(self.status());
        add_status_headers(self.status(), res);
        res.render(Json(self.to_body()));
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Overloaded(m) => ApiError::Overloaded(m),
            ModelError::ContextLengthExceeded { .. } => {
                ApiError::ContextLengthExceeded { message: e.to_string(), param: Some("messages".into()) }
            }
            ModelError::InvalidRequest(m) => ApiError::InvalidRequest { message: m, param: None },
            // Handlers that know which field held the schema name it; this is the fallback.
            ModelError::InvalidGrammar(m) => ApiError::InvalidRequest { message: format!("Invalid grammar: {m}"), param: None },
            // A template that raises (e.g. "roles must alternate") is the caller's mistake.
            ModelError::ChatTemplate(m) => ApiError::invalid("messages", m),
            ModelError::NotReady => ApiError::NotReady,
            ModelError::EngineStopped => ApiError::ShuttingDown,
            ModelError::StepFailed(_) | ModelError::EngineFailed { .. } => ApiError::EngineFault(e.to_string()),
            other => ApiError::Internal(format!("{} ({})", other, other.kind())),
        }
    }
}

#[async_trait]
impl Writer for ApiError {
    async fn write(self, _req: &mut Request, depot: &mut Depot, res: &mut Response) {
        depot.insert(ERROR_KIND_KEY, self.kind());
        self.render_into(res);
    }
}

/// Headers a status requires: `Retry-After` on 429, `WWW-Authenticate: Bearer` on 401
/// (RFC 9110 requires the challenge on every 401).
fn add_status_headers(status: StatusCode, res: &mut Response) {
    if status == StatusCode::TOO_MANY_REQUESTS {
        res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
}

/// Depot key under which the error kind of a failed request is left for the access log.
pub const ERROR_KIND_KEY: &str = "stellarchat.error_kind";

/// The service's catcher: any error status without a body (unmatched route, 405, a
/// `StatusError` from salvo itself such as a failed WebSocket handshake or a caught panic)
/// becomes an OpenAI error object.
pub struct OpenAiCatcher;

#[async_trait]
impl Handler for OpenAiCatcher {
    async fn handle(&self, req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
        let status = res.status_code.unwrap_or(StatusCode::NOT_FOUND);
        // salvo's own errors carry a short, safe `brief` (e.g. "missing connection upgrade").
        let brief = match &res.body {
            ResBody::Error(e) if status.is_client_error() => Some(e.brief.clone()),
            _ => None,
        };
        let error = ApiError::for_status(status, req.uri().path(), brief);
        depot.insert(ERROR_KIND_KEY, error.kind());
        let mut body = error.to_body();
        if let ApiError::PayloadTooLarge { .. } = error {
            body.error.message = "Request body too large".into();
        }
        // Keep the original status (e.g. 403 from a WebSocket origin check).
        res.status_code(status);
        add_status_headers(status, res);
        res.render(Json(body));
        ctrl.skip_rest();
    }
}

/// Describes the error responses of every endpoint that returns `Result<_, ApiError>` in
/// `/openapi.json`.
impl salvo::oapi::EndpointOutRegister for ApiError {
    fn register(components: &mut salvo::oapi::Components, operation: &mut salvo::oapi::Operation) {
        let schema = <ErrorBody as salvo::oapi::ToSchema>::to_schema(components);
        let mut statuses: Vec<StatusCode> = ERROR_TABLE.iter().map(|c| c.status).collect();
        statuses.sort_by_key(|s| s.as_u16());
        statuses.dedup();
        for status in statuses {
            let description =
                ERROR_TABLE.iter().filter(|c| c.status == status).map(|c| c.summary).collect::<Vec<_>>().join("; ");
            let code = status.as_str();
            operation.responses.insert(
                code,
                salvo::oapi::Response::new(description.as_str())
                    .add_content("application/json", salvo::oapi::Content::new(schema.clone())),
            );
        }
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;

    fn one_of_each() -> Vec<ApiError> {
        vec![
            ApiError::invalid("x", "y"),
            ApiError::unsupported("x", "y"),
            ApiError::UnknownField("x".into()),
            ApiError::InvalidJson("x".into()),
            ApiError::ContextLengthExceeded { message: "x".into(), param: None },
            ApiError::InvalidApiKey,
            ApiError::ModelNotFound("x".into()),
            ApiError::RouteNotFound("/x".into()),
            ApiError::MethodNotAllowed,
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::Overloaded("x".into()),
            ApiError::Internal("x".into()),
            ApiError::NotReady,
            ApiError::ShuttingDown,
            ApiError::ResponseNotFound("resp_x".into()),
            ApiError::UnsupportedMediaType("text/plain".into()),
            ApiError::BodyTimeout { seconds: 1 },
            ApiError::EngineFault("x".into()),
            ApiError::ModelLoadFailed { model: "m".into(), reason: "x".into() },
        ]
    }

    #[test]
    fn every_variant_has_one_row() {
        let errors = one_of_each();
        assert_eq!(errors.len(), ERROR_TABLE.len());
        for (error, row) in errors.iter().zip(ERROR_TABLE) {
            assert_eq!(error.kind(), row.kind, "{error:?} is not on its own row");
        }
        assert_eq!(ERROR_TABLE[INTERNAL_ROW].kind, "internal");
    }

    #[test]
    fn bare_statuses_map_to_their_catching_rows() {
        for row in ERROR_TABLE.iter().filter(|c| c.catches) {
            assert_eq!(ApiError::for_status(row.status, "/p", None).kind(), row.kind);
        }
        assert_eq!(ApiError::for_status(StatusCode::FORBIDDEN, "/p", None).kind(), "invalid_request");
        assert_eq!(ApiError::for_status(StatusCode::BAD_GATEWAY, "/p", None).kind(), "internal");
    }
}
