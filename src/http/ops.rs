//! Health and metrics endpoints for operators and load balancers.

use actix_web::{web, HttpResponse};

use super::AppState;

/// `GET /healthz`: 200 `{"status":"ok"}` while the node serves; in a cluster, 503
/// `{"status":"degraded"}` while Redis (store and bus) is unreachable, so that a load balancer
/// can steer new connections to healthy nodes.
pub async fn healthz(st: web::Data<AppState>) -> HttpResponse {
    match st.engine.cluster() {
        Some(c) if !c.healthy() => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "degraded", "node": c.node })),
        Some(c) => HttpResponse::Ok().json(serde_json::json!({ "status": "ok", "node": c.node })),
        None => HttpResponse::Ok().json(serde_json::json!({ "status": "ok" })),
    }
}

/// `GET /metrics`: Prometheus text, process metrics (resident memory, fds) included.
pub async fn metrics(st: web::Data<AppState>) -> HttpResponse {
    st.process.collect();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(st.prometheus.render())
}
