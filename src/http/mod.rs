//! HTTP routes: the WebSocket endpoint, the admin API, health and metrics.

pub mod admin;
pub mod ops;
pub mod server;
pub mod ws;
pub mod ws_reader;
pub mod ws_wire;

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use kaiwa_actors::engine::Engine;
use kaiwa_actors::protocol::{ErrorCode, KaiwaError};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::Auth;

/// What every handler shares.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub auth: Auth,
    pub admin_key: String,
    pub prometheus: PrometheusHandle,
    pub process: metrics_process::Collector,
}

/// Mounts every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(ws::not_upgraded))
        .route("/healthz", web::get().to(ops::healthz))
        .route("/metrics", web::get().to(ops::metrics))
        .configure(admin::routes);
}

/// The HTTP status of an error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadFrame | ErrorCode::UnknownOp => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden | ErrorCode::PolicyDenied => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `{"error": {"code", "message"}}` with the matching status.
pub fn error_response(e: &KaiwaError) -> HttpResponse {
    metrics::counter!("kaiwa_errors_total", "code" => e.code.as_str()).increment(1);
    HttpResponse::build(status_of(e.code)).json(serde_json::json!({ "error": e }))
}
