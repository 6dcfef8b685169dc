//! The server layer's one error type, [`ApiError`], and the ONE place where errors become
//! HTTP: [`ApiError::status`] / [`ApiError::to_body`] (OpenAI's error object) and the
//! [`Writer`] impl that handlers return through.
//!
//! Every failure — validation, auth, routing (404/405 via [`OpenAiCatcher`]), engine errors,
//! panics — ends up as `{"error":{"message","type","param","code"}}`. Internal errors keep
//! their detail in the log only; the client sees a generic message.

use std::borrow::Cow;

use salvo::http::header::{HeaderValue, RETRY_AFTER};
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
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("Incorrect API key provided")]
    InvalidApiKey,
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
}

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

    /// A stable, low-cardinality name: the metrics label, the log field, and the key from
    /// which status, `error.type` and `error.code` are derived below.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::Unsupported { .. } => "unsupported_parameter",
            ApiError::UnknownField(_) => "unknown_parameter",
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::ContextLengthExceeded { .. } => "context_length_exceeded",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::RouteNotFound(_) => "route_not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::InvalidApiKey => "invalid_api_key",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::NotReady => "not_ready",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The HTTP status, from [`ApiError::kind`]. The only status table in the server.
    pub fn status(&self) -> StatusCode {
        match self.kind() {
            "invalid_request"
            | "unsupported_parameter"
            | "unknown_parameter"
            | "invalid_json"
            | "context_length_exceeded" => StatusCode::BAD_REQUEST,
            "invalid_api_key" => StatusCode::UNAUTHORIZED,
            "model_not_found" | "route_not_found" => StatusCode::NOT_FOUND,
            "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
            "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "overloaded" => StatusCode::TOO_MANY_REQUESTS,
            "not_ready" | "shutting_down" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`, from the status class as OpenAI and vLLM use it.
    pub fn error_type(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable_error",
            StatusCode::INTERNAL_SERVER_ERROR => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// OpenAI's `error.code`: the kind, except where OpenAI's clients expect nothing.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::InvalidJson(_) | ApiError::Internal(_) => None,
            other => Some(other.kind()),
        }
    }

    pub fn param(&self) -> Option<String> {
        match self {
            ApiError::InvalidRequest { param, .. } | ApiError::ContextLengthExceeded { param, .. } => param.clone(),
            ApiError::Unsupported { param, .. } => Some(param.clone()),
            ApiError::UnknownField(name) => Some(name.clone()),
            ApiError::ModelNotFound(_) => Some("model".into()),
            _ => None,
        }
    }

    /// What the client may read. Internal errors never carry their detail out.
    pub fn public_message(&self) -> Cow<'static, str> {
        match self {
            ApiError::Internal(_) => Cow::Borrowed("The server had an error while processing your request."),
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
        if let ApiError::Internal(detail) = self {
            tracing::error!(error = %detail, "internal error");
        }
        res.status_code(self.status());
        if self.status() == StatusCode::TOO_MANY_REQUESTS {
            res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
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
            // A template that raises (e.g. "roles must alternate") is the caller's mistake.
            ModelError::ChatTemplate(m) => ApiError::invalid("messages", m),
            ModelError::NotReady => ApiError::NotReady,
            ModelError::EngineStopped => ApiError::ShuttingDown,
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
        let error = match status {
            StatusCode::NOT_FOUND => ApiError::RouteNotFound(req.uri().path().to_string()),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit: 0 },
            StatusCode::UNAUTHORIZED => ApiError::InvalidApiKey,
            StatusCode::TOO_MANY_REQUESTS => ApiError::Overloaded("too many requests".into()),
            StatusCode::SERVICE_UNAVAILABLE => ApiError::NotReady,
            s if s.is_client_error() => ApiError::invalid_no_param(
                brief.unwrap_or_else(|| s.canonical_reason().unwrap_or("Bad request").to_string()),
            ),
            s => ApiError::Internal(format!("unhandled status {s}")),
        };
        depot.insert(ERROR_KIND_KEY, error.kind());
        let mut body = error.to_body();
        if let ApiError::PayloadTooLarge { .. } = error {
            body.error.message = "Request body too large".into();
        }
        // Keep the original status (e.g. 403 from a WebSocket origin check).
        res.status_code(status);
        res.render(Json(body));
        ctrl.skip_rest();
    }
}

/// Describes the error responses of every endpoint that returns `Result<_, ApiError>` in
/// `/openapi.json`.
impl salvo::oapi::EndpointOutRegister for ApiError {
    fn register(components: &mut salvo::oapi::Components, operation: &mut salvo::oapi::Operation) {
        let schema = <ErrorBody as salvo::oapi::ToSchema>::to_schema(components);
        for (code, description) in [
            ("400", "Invalid request (validation, unsupported field, context too long)"),
            ("401", "Missing or wrong API key"),
            ("404", "Unknown model"),
            ("413", "Request body too large"),
            ("429", "Queue full; see Retry-After"),
            ("500", "Internal error"),
            ("503", "Model loading or server shutting down"),
        ] {
            operation.responses.insert(
                code,
                salvo::oapi::Response::new(description)
                    .add_content("application/json", salvo::oapi::Content::new(schema.clone())),
            );
        }
    }
}
