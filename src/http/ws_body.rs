//! The response body of a WebSocket connection: it drains the connection's outbox and encodes
//! everything queued into one buffer, so a burst of deliveries costs one socket write.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use actix_web::body::{BodySize, BoxBody, MessageBody};
use bytes::{Bytes, BytesMut};
use kaiwa_actors::hub::Conn;
use kaiwa_actors::outbox::Outgoing;

/// Streams a connection's outbox to the socket as WebSocket frames.
pub struct OutboundBody {
    conn: Arc<Conn>,
    /// The body the WebSocket handshake produced, kept (never polled): dropping it with this
    /// body tells the inbound stream that the connection is gone.
    _transport: BoxBody,
    done: bool,
    /// The frames of the current turn; swapped with the outbox's queue, so both keep storage.
    batch: VecDeque<Outgoing>,
    frames_out: metrics::Counter,
}

impl OutboundBody {
    /// The body of `conn`; `transport` is the body the WebSocket handshake produced.
    pub fn new(conn: Arc<Conn>, transport: BoxBody) -> Self {
        OutboundBody {
            conn,
            _transport: transport,
            done: false,
            batch: VecDeque::new(),
            frames_out: metrics::counter!("kaiwa_frames_out_total"),
        }
    }
}

/// Header bytes of a server frame of `len` payload bytes (unmasked).
fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

impl MessageBody for OutboundBody {
    type Error = actix_web::Error;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let drained = match this.conn.outbox.poll_drain(cx, &mut this.batch) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(d)) => d,
        };
        let size: usize = this
            .batch
            .iter()
            .map(|f| match f {
                Outgoing::Data(d) => d.data.len() + header_len(d.data.len()),
                Outgoing::Pong(b) => b.len() + 2,
                Outgoing::Ping => 2,
            })
            .sum();
        let mut buf = BytesMut::with_capacity(size + 128);
        let mut data = 0u64;
        for f in this.batch.drain(..) {
            match f {
                Outgoing::Data(d) => {
                    let op = if d.binary {
                        OpCode::Binary
                    } else {
                        OpCode::Text
                    };
                    Parser::write_message(&mut buf, &d.data, op, true, false);
                    data += 1;
                }
                Outgoing::Ping => Parser::write_message(&mut buf, b"", OpCode::Ping, true, false),
                Outgoing::Pong(b) => Parser::write_message(
                    &mut buf,
                    &b[..b.len().min(125)],
                    OpCode::Pong,
                    true,
                    false,
                ),
            }
        }
        this.frames_out.increment(data);
        if let Some(c) = drained.close {
            let mut reason = c.reason;
            reason.truncate(120);
            let reason = CloseReason {
                code: CloseCode::from(c.code),
                description: Some(reason),
            };
            Parser::write_close(&mut buf, Some(reason), false);
            this.done = true;
        }
        Poll::Ready(Some(Ok(buf.freeze())))
    }
}
