//! The admin API (`/admin/v1/...`, only with `--admin-key`): which version each model
//! serves, and reload / swap / rollback of versions while the server runs.

use crate::api::ErrorResponse;
use crate::error::ApiError;
use crate::state::Shared;
use crate::swap::{self, Outcome, RoleStatus, Slot, SwapError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// One model role and its registry aliases.
#[derive(Serialize, ToSchema)]
pub struct AdminModel {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub status: RoleStatus,
    /// alias → version in the registry (registry models only; null otherwise).
    #[schema(value_type = Option<Object>)]
    pub aliases: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct AdminModels {
    pub object: String,
    pub data: Vec<AdminModel>,
}

/// The result of a reload, swap or rollback.
#[derive(Serialize, ToSchema)]
pub struct AdminResult {
    #[schema(value_type = Object)]
    pub result: Outcome,
    pub model: AdminModel,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct SwapRequest {
    /// A version id (or unique prefix) or an alias of the model's registry entry.
    pub version: String,
}

crate::api::object_only!(SwapRequest);

fn describe(slot: &Slot) -> AdminModel {
    AdminModel {
        status: slot.status(),
        aliases: swap::aliases(slot),
    }
}

async fn described(slot: Arc<Slot>) -> AdminModel {
    tokio::task::spawn_blocking(move || describe(&slot))
        .await
        .expect("describe task")
}

fn slot(st: &Shared, name: &str) -> Result<Arc<Slot>, ApiError> {
    st.swaps
        .find(name, &st.cfg.served_model_name)
        .ok_or_else(|| {
            ApiError::not_found(
                "model_not_found",
                format!("the server runs no model named `{name}` (use a registry name, the served name, or policy / cost / reward)"),
            )
        })
}

fn swap_error(e: SwapError) -> ApiError {
    match e {
        SwapError::Busy => {
            let mut e = ApiError::bad_request("", "a swap of this model is already in progress");
            e.status = StatusCode::CONFLICT;
            e.code = Some("swap_in_progress");
            e
        }
        SwapError::Refused { version, reason } => {
            let mut e = ApiError::bad_request(
                "version",
                format!("version {version} was refused: {reason}; the serving version stays"),
            );
            e.status = StatusCode::UNPROCESSABLE_ENTITY;
            e.code = Some("version_refused");
            e
        }
        SwapError::Resolve(msg) => {
            let mut e = ApiError::bad_request("version", msg);
            e.code = Some("version_not_found");
            e
        }
    }
}

async fn finish(slot: Arc<Slot>, r: Result<Outcome, SwapError>) -> Response {
    match r {
        Ok(result) => Json(AdminResult {
            result,
            model: described(slot).await,
        })
        .into_response(),
        Err(e) => swap_error(e).into_response(),
    }
}

/// Every model role: serving version, aliases, loads in progress, refusals, draining versions.
#[utoipa::path(get, path = "/admin/v1/models", security(("admin_key" = [])),
    responses((status = 200, body = AdminModels), (status = 401, body = ErrorResponse)))]
pub async fn list(State(st): State<Shared>) -> Json<AdminModels> {
    let mut data = vec![];
    for s in st.swaps.slots.clone() {
        data.push(described(s).await);
    }
    Json(AdminModels {
        object: "list".into(),
        data,
    })
}

/// Follows the model's alias again (ends a pin) and swaps now if it moved.
#[utoipa::path(post, path = "/admin/v1/models/{name}/reload", security(("admin_key" = [])),
    params(("name" = String, Path, description = "registry name, served name, or policy / cost / reward")),
    responses((status = 200, body = AdminResult), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
        (status = 422, body = ErrorResponse)))]
pub async fn reload(State(st): State<Shared>, Path(name): Path<String>) -> Response {
    let slot = match slot(&st, &name) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let r = swap::update(&st, &slot, None, false).await;
    if r.is_ok() {
        slot.status.lock().expect("status lock").pinned = false;
    }
    finish(slot, r).await
}

/// Pins a version (id, unique id prefix, or alias): the model stops following its alias
/// until `/reload`.
#[utoipa::path(post, path = "/admin/v1/models/{name}/swap", security(("admin_key" = [])),
    request_body = SwapRequest,
    params(("name" = String, Path, description = "registry name, served name, or policy / cost / reward")),
    responses((status = 200, body = AdminResult), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn pin(
    State(st): State<Shared>,
    Path(name): Path<String>,
    crate::validate::ApiJson(req): crate::validate::ApiJson<SwapRequest>,
) -> Response {
    let slot = match slot(&st, &name) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if req.version.trim().is_empty() {
        return ApiError::bad_request("version", "`version` must not be empty").into_response();
    }
    let r = swap::update(&st, &slot, Some(req.version), false).await;
    if r.is_ok() {
        slot.status.lock().expect("status lock").pinned = true;
    }
    finish(slot, r).await
}

/// Moves the registry's `champion` back to `previous` and serves it (every replica that
/// follows `champion` does the same at its next poll).
#[utoipa::path(post, path = "/admin/v1/models/{name}/rollback", security(("admin_key" = [])),
    params(("name" = String, Path, description = "registry name, served name, or policy / cost / reward")),
    responses((status = 200, body = AdminResult), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn rollback(State(st): State<Shared>, Path(name): Path<String>) -> Response {
    let slot = match slot(&st, &name) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if slot.busy.try_lock().is_err() {
        return swap_error(SwapError::Busy).into_response();
    }
    let s2 = slot.clone();
    let moved = tokio::task::spawn_blocking(move || swap::registry_rollback(&s2))
        .await
        .expect("rollback task");
    let to = match moved {
        Ok(v) => v,
        Err(msg) => {
            let mut e = ApiError::bad_request("", msg);
            e.code = Some("rollback_failed");
            return e.into_response();
        }
    };
    let r = swap::update(&st, &slot, Some(to), false).await;
    if r.is_ok() {
        slot.status.lock().expect("status lock").pinned = false;
    }
    finish(slot, r).await
}
