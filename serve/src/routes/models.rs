//! `GET /v1/models`, `GET /v1/models/{id}`.

use crate::api::{ErrorResponse, ModelCard, ModelList};
use crate::error::ApiError;
use crate::state::Shared;
use axum::extract::{Path, State};
use axum::Json;

fn card(st: &Shared) -> ModelCard {
    ModelCard {
        id: st.cfg.served_model_name.clone(),
        object: "model".into(),
        created: st.started,
        owned_by: "safeloop".into(),
        version: st.policy().ok().map(|p| p.version.clone()),
    }
}

/// Lists the served model.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList), (status = 401, body = ErrorResponse)))]
pub async fn list(State(st): State<Shared>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![card(&st)],
    })
}

/// Describes one model.
#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "model id")),
    responses((status = 200, body = ModelCard), (status = 404, body = ErrorResponse)))]
pub async fn get(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    st.check_model(&id)?;
    Ok(Json(card(&st)))
}
