//! The top layer of `serve/`: the [`router`] that maps every path of [`super::routes`] to
//! its handler, and the [`service`] that wires routes, middleware, the catcher and the
//! OpenAPI document together.

use std::sync::Arc;

use salvo::catch_panic::CatchPanic;
use salvo::catcher::Catcher;
use salvo::oapi::security::{Http, HttpAuthScheme};
use salvo::oapi::swagger_ui::SwaggerUi;
use salvo::oapi::{OpenApi, SecurityScheme};
use salvo::prelude::*;

use super::error::OpenAiCatcher;
use super::handlers;
use super::middleware::{AccessLog, ApiKeyAuth, ReadBodyWithin, RequireJson, cors};
use super::openapi::{self, OpenApiJson, Served};
use super::routes::*;
use super::state::AppState;
use super::validate::Limits;

fn path(p: &str) -> Router {
    Router::with_path(p.trim_start_matches('/'))
}

/// The router with every route (without service-level middleware).
pub fn router(state: &Arc<AppState>) -> Router {
    let auth = ApiKeyAuth { keys: Arc::new(state.api_keys.clone()) };
    let metrics = path(METRICS).get(handlers::health::metrics);
    let metrics = if state.metrics_api_key { metrics.hoop(auth.clone()) } else { metrics };
    let open = Router::new()
        .push(path(HEALTH).get(handlers::health::health))
        .push(path(READY).get(handlers::health::ready))
        .push(metrics)
        // The socket checks the key itself: a browser cannot set headers on a WebSocket.
        .push(path(CHAT_WS).goal(super::ws::chat_ws));
    // Auth first (a keyless client learns nothing else), then the body checks.
    let protected = Router::new()
        .hoop(auth)
        .hoop(RequireJson)
        .hoop(ReadBodyWithin { timeout: state.body_timeout, limit: state.max_body_bytes })
        .push(path(MODELS).get(handlers::models::list_models))
        .push(path(MODEL).get(handlers::models::get_model).post(handlers::models::model_action))
        .push(path(CHAT_COMPLETIONS).post(handlers::chat::chat_completions))
        .push(path(COMPLETIONS).post(handlers::completions::completions))
        .push(path(RESPONSES).post(handlers::responses::create_response))
        .push(path(RESPONSE).get(handlers::responses::get_response).delete(handlers::responses::delete_response))
        .push(path(TOKENIZE).post(handlers::tokenize::tokenize))
        .push(path(DETOKENIZE).post(handlers::tokenize::detokenize));
    let router = Router::new().push(open).push(protected);
    let router = if state.ui { router.push(path(UI).get(super::ui::page)).push(path(UI_ASSET).get(super::ui::asset)) } else { router };

    let doc = OpenApi::new("StellarChat", env!("CARGO_PKG_VERSION"))
        .add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)))
        .merge_router(&router);
    // The default model is loaded at start-up, so its limits are known here.
    let names: Vec<String> = state.models.specs().flat_map(|s| std::iter::once(s.id.clone()).chain(s.aliases.clone())).collect();
    let default = state.models.default_model();
    let limits = default.as_ref().map(|m| m.limits.clone()).unwrap_or(Limits { max_model_len: 1, max_tokens_limit: 1, max_n: 1, vocab_size: 1 });
    let served = Served {
        models: &names,
        limits: &limits,
        fill_in_the_middle: default.as_ref().is_some_and(|m| handlers::completions::has_fill_in_the_middle(&m.info)),
        api_keys: !state.api_keys.is_empty(),
        metrics_api_key: state.metrics_api_key,
    };
    let (doc, missing) = openapi::document(doc, &served);
    if !missing.is_empty() {
        tracing::warn!(?missing, "/openapi.json: schemas or properties to tighten were not found");
    }
    router
        .push(Router::with_path(OPENAPI).goal(OpenApiJson(Arc::new(doc.to_string()))))
        .push(SwaggerUi::new(OPENAPI).title("StellarChat API").into_router(DOCS))
}

/// The whole HTTP service: router, catcher (every error as an OpenAI error object), and
/// the service-level hoops: access log outermost, then CORS (on the service so that
/// preflights, which match no route, are answered), then panic catching.
pub fn service(state: Arc<AppState>, cors_origins: &[String]) -> Service {
    let mut service =
        Service::new(router(&state)).catcher(Catcher::new(OpenAiCatcher)).hoop(AccessLog { state: state.clone() });
    if let Some(cors) = cors(cors_origins) {
        service = service.hoop(cors);
    }
    service.hoop(CatchPanic::new())
}
