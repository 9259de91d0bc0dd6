//! The HTTP server: one listener for the WebSocket endpoint and every HTTP route.
//!
//! Built from actix-server and actix-http directly rather than through `actix_web::HttpServer`,
//! because only this way does the HTTP/1 dispatcher hand an upgraded connection over (with its
//! socket) instead of keeping it, and its buffers, for the connection's whole life.

use std::io;

use actix_http::HttpService;
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::AppConfig;
use actix_web::{web, App};

use super::{routes, ws, AppState};

/// Where and how to listen.
pub struct Listen<'a> {
    pub host: &'a str,
    pub port: u16,
    pub workers: usize,
}

/// Serves until the process is told to stop (SIGINT/SIGTERM: graceful shutdown).
pub async fn run(state: web::Data<AppState>, at: Listen<'_>) -> io::Result<()> {
    actix_server::Server::build()
        .workers(at.workers)
        .backlog(4096)
        // Nothing in Kaiwa caps connections below what the OS allows.
        .max_concurrent_connections(1_000_000)
        .bind("kaiwa", (at.host, at.port), move || {
            // Entity actors live on the first worker's thread: a request read there is handled
            // there, and the writes it causes are flushed there, without a thread switch.
            state.engine.adopt_arbiter(actix::Arbiter::current());
            let app_state = state.clone();
            let ws_state = state.clone();
            let app = App::new()
                .app_data(app_state)
                .configure(routes)
                .into_factory()
                .map_err(|e| e.error_response());
            HttpService::build()
                .tcp_nodelay(true)
                .upgrade(fn_service(move |(req, framed)| {
                    let st = ws_state.clone();
                    async move {
                        ws::upgrade(st, req, framed)
                            .await
                            .map_err(actix_web::error::ErrorInternalServerError)
                    }
                }))
                .finish(map_config(app, |_| AppConfig::default()))
                .tcp()
        })?
        .run()
        .await
}
