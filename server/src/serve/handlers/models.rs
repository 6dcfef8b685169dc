//! `GET /v1/models` (every model the server offers, loaded or not), `GET /v1/models/{id}`,
//! and the admin actions `POST /v1/models/{id}/load` and `POST /v1/models/{id}/unload`
//! (behind the API key like the rest of `/v1`).

use salvo::oapi::endpoint;
use salvo::prelude::*;

use crate::serve::error::ApiError;
use crate::serve::protocol::{ModelCard, ModelList};
use crate::serve::registry::{LoadState, ModelStatus};
use crate::serve::state::AppState;

fn card(state: &AppState, status: ModelStatus) -> ModelCard {
    ModelCard {
        id: status.id,
        object: "model".into(),
        created: state.started,
        owned_by: "stellarchat".into(),
        max_model_len: status.max_model_len,
        loaded: status.state == LoadState::Loaded,
        state: status.state.as_str().into(),
        pinned: status.pinned,
        aliases: status.aliases,
    }
}

/// The card of the model `name` (an id or alias).
fn card_of(state: &AppState, name: &str) -> Result<ModelCard, ApiError> {
    let index = state.models.resolve(name).ok_or_else(|| ApiError::ModelNotFound(name.to_string()))?;
    let status = state.models.statuses().swap_remove(index);
    Ok(card(state, status))
}

/// Lists every model the server offers, with whether each is loaded.
#[endpoint(tags("models"), responses((status_code = 200, body = ModelList)))]
pub async fn list_models(depot: &mut Depot) -> Result<Json<ModelList>, ApiError> {
    let state = AppState::from_depot(depot)?;
    let data = state.models.statuses().into_iter().map(|s| card(&state, s)).collect();
    Ok(Json(ModelList { object: "list".into(), data }))
}

/// Describes one model; 404 `model_not_found` for any other id.
#[endpoint(tags("models"), responses((status_code = 200, body = ModelCard)))]
pub async fn get_model(req: &mut Request, depot: &mut Depot) -> Result<Json<ModelCard>, ApiError> {
    let state = AppState::from_depot(depot)?;
    let id: String = req.param::<String>("id").unwrap_or_default();
    Ok(Json(card_of(&state, &id)?))
}

/// `POST /v1/models/{id}/load` loads the model (and answers once it is ready);
/// `POST /v1/models/{id}/unload` unloads it (requests still running on it finish first).
/// Both answer the model's card. Ids may contain `/`, hence one handler on the
/// rest-of-path route, split at the last `/`. Not in `/openapi.json`: an admin API.
#[handler]
pub async fn model_action(req: &mut Request, depot: &mut Depot) -> Result<Json<ModelCard>, ApiError> {
    let state = AppState::from_depot(depot)?;
    let path: String = req.param::<String>("id").unwrap_or_default();
    let (id, action) = path.rsplit_once('/').unwrap_or((path.as_str(), ""));
    match action {
        "load" => {
            let lease = state.model(id).await?;
            let id = lease.id.clone();
            drop(lease);
            tracing::info!(model = %id, "loaded on request of an admin");
            Ok(Json(card_of(&state, &id)?))
        }
        "unload" => {
            let was_loaded = state.models.unload(id)?;
            tracing::info!(model = %id, was_loaded, "unloaded on request of an admin");
            Ok(Json(card_of(&state, id)?))
        }
        // A model's own path takes only GET.
        _ => Err(ApiError::MethodNotAllowed),
    }
}
