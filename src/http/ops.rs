//! Health and metrics endpoints for operators and load balancers.

use actix_web::{web, HttpResponse};

use super::AppState;

/// `GET /healthz`: 200 while the node serves.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /metrics`: Prometheus text, process metrics (resident memory, fds) included.
pub async fn metrics(st: web::Data<AppState>) -> HttpResponse {
    st.process.collect();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(st.prometheus.render())
}
