//! The admin listener (plain HTTP on 127.0.0.1): counters, revocation and faults for curl and
//! Python users and for tests that cannot call the Rust API.
//!
//! - `GET /counters` → [`crate::Counters`] as JSON
//! - `POST /revoke-all` → 204
//! - `PUT /dp-fault`, `PUT /as-fault` with the JSON form of [`crate::DpFault`] / [`crate::AsFault`] → 204;
//!   `DELETE` on the same paths clears → 204

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

use crate::faults::{AsFault, DpFault};
use crate::state::{Counters, Shared};

type St = State<Arc<Shared>>;

/// The admin router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/counters", get(counters))
        .route("/revoke-all", post(revoke_all))
        .route("/dp-fault", put(put_dp_fault).delete(clear_dp_fault))
        .route("/as-fault", put(put_as_fault).delete(clear_as_fault))
        .with_state(shared)
}

async fn counters(State(s): St) -> Json<Counters> {
    Json(s.snapshot())
}

async fn revoke_all(State(s): St) -> StatusCode {
    s.revoke_all();
    StatusCode::NO_CONTENT
}

fn rejected(e: &JsonRejection) -> Response {
    (StatusCode::BAD_REQUEST, e.body_text()).into_response()
}

async fn put_dp_fault(State(s): St, body: Result<Json<DpFault>, JsonRejection>) -> Response {
    match body {
        Ok(Json(f)) => {
            s.set_dp_fault(Some(f));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => rejected(&e),
    }
}

async fn clear_dp_fault(State(s): St) -> StatusCode {
    s.set_dp_fault(None);
    StatusCode::NO_CONTENT
}

async fn put_as_fault(State(s): St, body: Result<Json<AsFault>, JsonRejection>) -> Response {
    match body {
        Ok(Json(f)) => {
            s.set_as_fault(Some(f));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => rejected(&e),
    }
}

async fn clear_as_fault(State(s): St) -> StatusCode {
    s.set_as_fault(None);
    StatusCode::NO_CONTENT
}
