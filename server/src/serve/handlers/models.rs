//! `GET /v1/models` and `GET /v1/models/{id}`: the one model this server serves.

use salvo::oapi::endpoint;
use salvo::prelude::*;

use crate::serve::error::ApiError;
use crate::serve::protocol::{ModelCard, ModelList};
use crate::serve::state::AppState;

fn card(state: &AppState) -> ModelCard {
    ModelCard {
        id: state.served_model_name.clone(),
        object: "model".into(),
        created: state.started,
        owned_by: "stellarchat".into(),
        max_model_len: state.limits.max_model_len,
    }
}

/// Lists the served model.
#[endpoint(tags("models"), responses((status_code = 200, body = ModelList)))]
pub async fn list_models(depot: &mut Depot) -> Result<Json<ModelList>, ApiError> {
    let state = AppState::from_depot(depot)?;
    Ok(Json(ModelList { object: "list".into(), data: vec![card(&state)] }))
}

/// Describes one model; 404 `model_not_found` for any other id.
#[endpoint(tags("models"), responses((status_code = 200, body = ModelCard)))]
pub async fn get_model(req: &mut Request, depot: &mut Depot) -> Result<Json<ModelCard>, ApiError> {
    let state = AppState::from_depot(depot)?;
    let id: String = req.param::<String>("id").unwrap_or_default();
    if id != state.served_model_name {
        return Err(ApiError::ModelNotFound(id));
    }
    Ok(Json(card(&state)))
}
