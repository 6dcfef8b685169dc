//! `GET /health` (liveness), `GET /ready` (readiness: 503 until the model is loaded) and
//! `GET /metrics` (Prometheus text).

use salvo::oapi::endpoint;
use salvo::prelude::*;

use crate::serve::error::ApiError;
use crate::serve::protocol::StatusBody;
use crate::serve::state::AppState;

/// Liveness: 200 whenever the process serves HTTP.
#[endpoint(tags("health"), responses((status_code = 200, body = StatusBody)))]
pub async fn health() -> Json<StatusBody> {
    Json(StatusBody { status: "ok".into() })
}

/// Readiness: 200 once the models loaded at start-up are, 503 (OpenAI error) before, and
/// while shutting down. Models loaded on demand do not make it 503.
#[endpoint(tags("health"), responses((status_code = 200, body = StatusBody)))]
pub async fn ready(depot: &mut Depot) -> Result<Json<StatusBody>, ApiError> {
    let state = AppState::from_depot(depot)?;
    state.check_accepting()?;
    state.models.check_ready()?;
    Ok(Json(StatusBody { status: "ready".into() }))
}

/// Prometheus metrics in the text exposition format.
#[endpoint(tags("health"), responses((status_code = 200, body = String, content_type = "text/plain")))]
pub async fn metrics(depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = AppState::from_depot(depot)?;
    state.metrics.active_generations.set(state.lifecycle.active() as i64);
    let text = state
        .metrics
        .render(&state.models.engine_stats(), state.models.loaded_count())
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    res.headers_mut().insert(
        salvo::http::header::CONTENT_TYPE,
        salvo::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res.write_body(text).map_err(|e| ApiError::Internal(format!("writing metrics: {e}")))?;
    Ok(())
}
