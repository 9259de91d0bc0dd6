//! `GET /ws`: authenticates before the upgrade (401 bad token, 403 suspended or deleted user),
//! then starts the session actor on this worker and the outbound body over its outbox.
//!
//! The handshake and the inbound frames use actix-http's WebSocket codec directly: a connection
//! costs the session actor, its outbox and the two halves below, and no per-connection channel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix::{Actor, AsyncContext};
use actix_http::ws::{OpCode, Parser, ProtocolError};
use actix_web::body::BoxBody;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use kaiwa_actors::protocol::{ErrorCode, Format, KaiwaError};
use kaiwa_actors::session::{Inbound, Session};
use serde::Deserialize;
use tokio::sync::oneshot;

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

/// The client's frames, decoded from the request payload; continuations are joined up to the
/// hard limit. Ends when the payload ends, after a close frame or an error, or when the outbound
/// body is dropped (the connection is gone).
pub struct InboundFrames {
    payload: actix_web::dev::Payload,
    buf: BytesMut,
    hard: usize,
    /// A fragmented message being joined: binary?, bytes so far.
    partial: Option<(bool, BytesMut)>,
    gone: oneshot::Receiver<()>,
    done: bool,
}

impl InboundFrames {
    fn new(payload: actix_web::dev::Payload, hard: usize, gone: oneshot::Receiver<()>) -> Self {
        InboundFrames {
            payload,
            buf: BytesMut::new(),
            hard,
            partial: None,
            gone,
            done: false,
        }
    }

    fn text(b: Bytes) -> Inbound {
        match std::str::from_utf8(&b) {
            Ok(_) => Inbound::Text(b),
            Err(e) => Inbound::Broken(format!("text frame is not UTF-8: {e}")),
        }
    }

    /// One parsed frame as the session sees it; `None` while a fragmented message is open.
    fn frame(&mut self, finished: bool, op: OpCode, payload: Bytes) -> Option<Inbound> {
        let continued = op == OpCode::Continue;
        if finished && !continued {
            if self.partial.is_some() && matches!(op, OpCode::Text | OpCode::Binary) {
                return Some(Inbound::Broken("a fragmented message is still open".into()));
            }
            return Some(match op {
                OpCode::Text => Self::text(payload),
                OpCode::Binary => Inbound::Binary(payload),
                OpCode::Ping => Inbound::Ping(payload),
                OpCode::Pong => Inbound::Pong,
                OpCode::Close => Inbound::Close,
                _ => Inbound::Broken(format!("bad opcode {op:?}")),
            });
        }
        if !continued {
            // The first fragment of a text or binary message.
            if self.partial.is_some() || !matches!(op, OpCode::Text | OpCode::Binary) {
                return Some(Inbound::Broken(format!("bad fragment {op:?}")));
            }
            self.partial = Some((op == OpCode::Binary, BytesMut::new()));
        }
        let Some((binary, acc)) = self.partial.as_mut() else {
            return Some(Inbound::Broken("continuation without a first frame".into()));
        };
        if acc.len() + payload.len() > self.hard {
            return Some(Inbound::TooLarge);
        }
        acc.extend_from_slice(&payload);
        if !finished {
            return None;
        }
        let binary = *binary;
        let (_, acc) = self.partial.take()?;
        let b = acc.freeze();
        Some(if binary {
            Inbound::Binary(b)
        } else {
            Self::text(b)
        })
    }
}

impl Stream for InboundFrames {
    type Item = Inbound;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Parser::parse(&mut this.buf, true, this.hard) {
                Ok(Some((finished, op, payload))) => {
                    let payload = payload.map(BytesMut::freeze).unwrap_or_default();
                    if let Some(item) = this.frame(finished, op, payload) {
                        if matches!(
                            item,
                            Inbound::Close | Inbound::TooLarge | Inbound::Broken(_)
                        ) {
                            this.done = true;
                        }
                        return Poll::Ready(Some(item));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(ProtocolError::Overflow) => {
                    this.done = true;
                    return Poll::Ready(Some(Inbound::TooLarge));
                }
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Inbound::Broken(e.to_string())));
                }
            }
            if Pin::new(&mut this.gone).poll(cx).is_ready() {
                this.done = true;
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    if this.buf.is_empty() {
                        this.buf = BytesMut::from(bytes);
                    } else {
                        this.buf.extend_from_slice(&bytes);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Inbound::Broken(e.to_string())));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
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

    let mut handshake = actix_http::ws::handshake(req.head())?;
    let hard = hard_limit(st.engine.limits.max_frame);
    let (gone_tx, gone_rx) = oneshot::channel();
    let stream = InboundFrames::new(body.into_inner(), hard, gone_rx);
    let conn = st.engine.new_conn(&claims.sub, format);
    let response =
        handshake.message_body(BoxBody::new(OutboundBody::new(conn.clone(), gone_tx)))?;
    let engine = st.engine.clone();
    Session::create(move |ctx| {
        ctx.add_stream(stream);
        Session::new(engine, conn)
    });
    Ok(HttpResponse::from(response))
}
