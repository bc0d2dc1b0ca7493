//! `POST /v1/moderations`: OpenAI's moderation shape, scored by the cost model. Each input is
//! scored as a user turn; `category_scores.harm = sigmoid(cost)` (0.5 at cost 0), `flagged`
//! when cost exceeds the gate threshold.

use crate::api::*;
use crate::choices::random_id;
use crate::error::ApiError;
use crate::safety::moderation_score;
use crate::state::Shared;
use crate::validate::ApiJson;
use axum::extract::State;
use axum::Json;
use safeloop_shared::ChatMessage;

/// Classifies text with the cost model.
#[utoipa::path(post, path = "/v1/moderations", request_body = ModerationRequest,
    responses((status = 200, body = ModerationResponse), (status = 400, body = ErrorResponse),
              (status = 503, body = ErrorResponse)))]
pub async fn moderations(
    State(st): State<Shared>,
    ApiJson(req): ApiJson<ModerationRequest>,
) -> Result<Json<ModerationResponse>, ApiError> {
    st.policy()?;
    let safety = st.safety();
    let Some(cost) = safety.cost.clone() else {
        let mut e = ApiError::bad_request(
            "",
            "the server has no cost model (start it with --cost-model)",
        );
        e.code = Some("no_cost_model");
        return Err(e);
    };
    let inputs = req.input.into_vec();
    if inputs.is_empty() {
        return Err(ApiError::bad_request("input", "`input` must not be empty"));
    }
    let items = inputs
        .iter()
        .map(|t| (vec![ChatMessage::new("user", t)], None))
        .collect();
    let costs = cost
        .score(items)
        .await
        .map_err(|e| ApiError::internal(format!("scoring failed: {e}")))?;
    Ok(Json(ModerationResponse {
        id: random_id("modr"),
        model: req.model.unwrap_or_else(|| "safeloop-cost".into()),
        results: costs
            .into_iter()
            .map(|c| ModerationResult {
                flagged: c > safety.threshold,
                categories: ModerationCategories {
                    harm: c > safety.threshold,
                },
                category_scores: ModerationScores {
                    harm: moderation_score(c),
                },
                cost: c,
            })
            .collect(),
    }))
}
