//! `GET /ws`: the WebSocket endpoint.
//!
//! Upgrade requests leave actix-http's HTTP/1 dispatcher before any WebSocket traffic: the
//! dispatcher hands the socket to [`upgrade`], which authenticates (401 bad token, 403 suspended
//! or deleted user), answers the handshake (actix-http's `ws::handshake`), and then runs the
//! connection itself: a [`FrameReader`] feeding the session actor, and the outbox writing to the
//! socket. The dispatcher, its read and write buffers (8 KiB each) and the request are gone at
//! that point: an idle authenticated connection costs about 3.3 KiB of the node's memory, all
//! told, where keeping the dispatcher cost 15.8 KiB (BENCHMARKS.md).

use std::io;
use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::h1::{self, Message};
use actix_http::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use actix_http::{ws as ws_proto, ConnectionType, HttpMessage, Request, Response, StatusCode};
use actix_web::{web, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use kaiwa_actors::protocol::{ErrorCode, Format, KaiwaError};
use kaiwa_actors::session::Session;
use serde::Deserialize;
use tokio::net::TcpStream;

use super::ws_reader::FrameReader;
use super::ws_wire::{run_writer, TcpWire};
use super::{error_response, status_of, AppState};

/// The connection as the HTTP/1 dispatcher hands it over: the socket, with the request head
/// read from it.
pub type H1Framed = Framed<TcpStream, h1::Codec>;

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

fn bearer(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(AUTHORIZATION)?.to_str().ok()?;
    h.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

/// Who connects, and in which encoding: checks the token and the format asked for.
fn authorize(
    st: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(String, Option<Format>), KaiwaError> {
    let q = web::Query::<WsQuery>::from_query(query.unwrap_or(""))
        .map_err(|e| KaiwaError::bad_frame(format!("bad query: {e}")))?
        .into_inner();
    let unauthorized = |m: String| KaiwaError::new(ErrorCode::Unauthorized, m);
    let token = q
        .token
        .or_else(|| bearer(headers))
        .ok_or_else(|| unauthorized("missing token".into()))?;
    let claims = st
        .auth
        .verify(&token)
        .map_err(|e| unauthorized(format!("bad token: {e}")))?;
    let format = match q.format.as_deref() {
        None => None,
        Some("json") => Some(Format::Json),
        Some("msgpack") => Some(Format::MsgPack),
        Some(_) => return Err(KaiwaError::bad_frame("format is json or msgpack")),
    };
    Ok((claims.sub, format))
}

/// Answers a refused upgrade with `{"error": {..}}` and the status of its code, then closes.
async fn refuse(framed: &mut H1Framed, e: &KaiwaError) -> io::Result<()> {
    metrics::counter!("kaiwa_errors_total", "code" => e.code.as_str()).increment(1);
    let body = Bytes::from(serde_json::to_vec(&serde_json::json!({ "error": e }))?);
    let mut res = Response::with_body(status_of(e.code), ());
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.head_mut().set_connection_type(ConnectionType::Close);
    let size = BodySize::Sized(body.len() as u64);
    let send = async {
        framed.send(Message::Item((res, size))).await?;
        framed.send(Message::Chunk(Some(body))).await?;
        framed.send(Message::Chunk(None)).await
    };
    send.await.map_err(io::Error::other)
}

/// The upgrade service: every request that asks for an upgrade comes here with its socket.
pub async fn upgrade(
    st: web::Data<AppState>,
    req: Request,
    mut framed: H1Framed,
) -> io::Result<()> {
    if req.path() != "/ws" {
        return refuse(
            &mut framed,
            &KaiwaError::not_found("no WebSocket endpoint here"),
        )
        .await;
    }
    let (user, format) = match authorize(&st, req.uri().query(), req.headers()) {
        Ok(v) => v,
        Err(e) => return refuse(&mut framed, &e).await,
    };
    if let Err(e) = kaiwa_actors::user::admit(&st.engine, &user).await {
        return refuse(&mut framed, &e).await;
    }
    let res = match ws_proto::handshake(req.head()) {
        Ok(mut b) => b.finish().drop_body(),
        Err(e) => {
            let e = KaiwaError::bad_frame(format!("bad WebSocket handshake: {e}"));
            return refuse(&mut framed, &e).await;
        }
    };
    // The request's headers share the dispatcher's 8 KiB read buffer: let both go now.
    drop(req);
    framed
        .send(Message::Item((res, BodySize::None)))
        .await
        .map_err(io::Error::other)?;

    // From here on the connection is ours: keep only what the client sent after its handshake
    // (in a buffer of its size), and let the dispatcher's buffers go.
    let parts = framed.into_parts();
    let leftover = if parts.read_buf.is_empty() {
        BytesMut::new()
    } else {
        BytesMut::from(&parts.read_buf[..])
    };
    let sock = Arc::new(parts.io);
    // Not a partial move: the buffers must go now, not when the connection ends.
    drop((parts.read_buf, parts.write_buf, parts.codec));
    // Replies and events are small writes; Nagle would hold one back until the previous one is
    // acknowledged (tens of ms with delayed ACKs).
    sock.set_nodelay(true)?;
    let conn = st
        .engine
        .new_conn(&user, format, Box::new(TcpWire::new(sock.clone())));
    let reader = FrameReader::new(
        sock.clone(),
        leftover,
        hard_limit(st.engine.limits.max_frame),
    );
    let (engine, session_conn) = (st.engine.clone(), conn.clone());
    Session::create(move |ctx| {
        ctx.add_stream(reader);
        Session::new(engine, session_conn)
    });
    // The writer gets a task of its own, a small one: this future (and the dispatcher task
    // that runs it, ~2.7 KiB) ends here.
    let outbox = conn.outbox.clone();
    drop(conn);
    actix_web::rt::spawn(async move { run_writer(&sock, &outbox).await });
    Ok(())
}

/// `GET /ws` without the upgrade headers.
pub async fn not_upgraded() -> HttpResponse {
    let e = KaiwaError::bad_frame("expected a WebSocket upgrade");
    let mut res = error_response(&e);
    *res.status_mut() = StatusCode::UPGRADE_REQUIRED;
    res
}
