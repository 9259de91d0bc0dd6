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
    metrics::gauge!("kaiwa_process_cpu_seconds").set(cpu_seconds());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(st.prometheus.render())
}

/// CPU time (user + system) of the node so far, in seconds to the microsecond.
/// `process_cpu_seconds_total` counts whole seconds, too coarse to tell how busy a node was over
/// a ten-second load run.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}
