//! `GET /ws`: authenticates before the upgrade (401 bad token, 403 suspended or deleted user),
//! then starts the session actor on this worker and the outbound body over its outbox.
//!
//! actix-ws does the handshake and decodes inbound frames; outbound frames bypass its session
//! channel: the response body drains the connection's outbox (see `ws_body`).

use actix::{Actor, AsyncContext};
use actix_web::body::BoxBody;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::AggregatedMessage;
use futures_util::StreamExt;
use kaiwa_actors::protocol::{ErrorCode, Format, KaiwaError};
use kaiwa_actors::session::{Inbound, Session};
use serde::Deserialize;

use super::ws_body::OutboundBody;
use super::{error_response, AppState};

/// Query of `/ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    pub token: Option<String>,
    pub format: Option<String>,
}

/// Frames past this size are not even buffered: the connection is closed with 1009. Between
/// the configured limit and this, the frame is answered with `too_large` and the connection
/// stays open.
fn hard_limit(max_frame: usize) -> usize {
    (max_frame * 4).max(1 << 20)
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let h = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    h.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

/// What the session needs of a decoded WebSocket message.
fn inbound(m: Result<AggregatedMessage, actix_ws::ProtocolError>) -> Inbound {
    match m {
        Ok(AggregatedMessage::Text(s)) => Inbound::Text(s.into_bytes()),
        Ok(AggregatedMessage::Binary(b)) => Inbound::Binary(b),
        Ok(AggregatedMessage::Ping(b)) => Inbound::Ping(b),
        Ok(AggregatedMessage::Pong(_)) => Inbound::Pong,
        Ok(AggregatedMessage::Close(_)) => Inbound::Close,
        Err(actix_ws::ProtocolError::Overflow) => Inbound::TooLarge,
        Err(e) => Inbound::Broken(e.to_string()),
    }
}

/// The upgrade handler.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    q: web::Query<WsQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let unauthorized = |m: &str| Ok(error_response(&KaiwaError::new(ErrorCode::Unauthorized, m)));
    let Some(token) = q.token.clone().or_else(|| bearer(&req)) else {
        return unauthorized("missing token");
    };
    let claims = match st.auth.verify(&token) {
        Ok(c) => c,
        Err(e) => return unauthorized(&format!("bad token: {e}")),
    };
    let format = match q.format.as_deref() {
        None => None,
        Some("json") => Some(Format::Json),
        Some("msgpack") => Some(Format::MsgPack),
        Some(_) => {
            return Ok(error_response(&KaiwaError::bad_frame(
                "format is json or msgpack",
            )))
        }
    };
    if let Err(e) = kaiwa_actors::user::admit(&st.engine, &claims.sub).await {
        return Ok(error_response(&e));
    }

    // actix-ws does the handshake and decodes the inbound frames (joining continuations up
    // to the hard limit); outbound, the body drains the connection's outbox instead of
    // actix-ws's channel, so deliveries never pass through a per-connection task.
    let (response, _session, stream) = actix_ws::handle(&req, body)?;
    let hard = hard_limit(st.engine.limits.max_frame);
    let stream = stream
        .max_frame_size(hard)
        .aggregate_continuations()
        .max_continuation_size(hard);
    let conn = st.engine.new_conn(&claims.sub, format);
    let (head, transport) = response.into_parts();
    let response = head.set_body(BoxBody::new(OutboundBody::new(conn.clone(), transport)));
    let engine = st.engine.clone();
    Session::create(move |ctx| {
        ctx.add_stream(stream.map(inbound));
        Session::new(engine, conn)
    });
    Ok(response)
}
