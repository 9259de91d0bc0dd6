//! The inbound side of a WebSocket connection: reads the socket and yields whole messages to the
//! session actor (a stream it handles).
//!
//! An idle connection holds no read buffer. Reads go into one scratch buffer per thread; only
//! the bytes of a frame that has not fully arrived are kept per connection, and the buffer is
//! released as soon as it is empty again. Frames are decoded by actix-http's WebSocket codec;
//! fragmented messages are joined here, up to the hard limit.

use std::cell::{Cell, RefCell};
use std::io::{self, Read as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use kaiwa_actors::session::Inbound;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Size of the per-thread scratch buffer one read fills.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// A fragmented message being joined.
struct Fragments {
    binary: bool,
    data: BytesMut,
}

/// Reads whole messages off a connection.
pub struct FrameReader {
    sock: Arc<TcpStream>,
    /// Bytes of a frame not complete yet; empty and unallocated between frames.
    buf: BytesMut,
    codec: Codec,
    fragments: Option<Fragments>,
    /// Frames and joined messages past this are refused unread: the connection closes.
    hard_limit: usize,
    done: bool,
}

impl FrameReader {
    /// A reader of `sock`; `leftover` holds what the client sent right after its handshake.
    pub fn new(sock: Arc<TcpStream>, leftover: BytesMut, hard_limit: usize) -> Self {
        FrameReader {
            sock,
            buf: leftover,
            codec: Codec::new().max_size(hard_limit),
            fragments: None,
            hard_limit,
            done: false,
        }
    }

    /// The payload length a frame header announces, once enough of it is buffered
    /// (RFC 6455 §5.2), so that an oversized frame is refused before it is buffered.
    fn announced_len(buf: &[u8]) -> Option<u64> {
        let short = *buf.get(1)? & 0x7f;
        match short {
            126 => Some(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as u64),
            127 => {
                let b = buf.get(2..10)?;
                Some(u64::from_be_bytes(b.try_into().ok()?))
            }
            n => Some(n as u64),
        }
    }

    /// Decodes the next frame from the buffer into a message, if one is complete.
    fn decode(&mut self) -> Option<Inbound> {
        loop {
            if self.buf.is_empty() {
                return None;
            }
            if Self::announced_len(&self.buf).is_some_and(|n| n > self.hard_limit as u64) {
                return Some(self.end(Inbound::TooLarge));
            }
            let frame = match self.codec.decode(&mut self.buf) {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(ProtocolError::Overflow) => return Some(self.end(Inbound::TooLarge)),
                Err(e) => return Some(self.end(Inbound::Broken(e.to_string()))),
            };
            if self.buf.is_empty() {
                // Frees the read buffer once the frames cut from it are dropped.
                self.buf = BytesMut::new();
            }
            if let Some(m) = self.message(frame) {
                return Some(m);
            }
        }
    }

    /// The message a frame completes, if any.
    fn message(&mut self, frame: Frame) -> Option<Inbound> {
        match frame {
            Frame::Text(b) => Some(Inbound::Text(b)),
            Frame::Binary(b) => Some(Inbound::Binary(b)),
            Frame::Ping(b) => Some(Inbound::Ping(b)),
            Frame::Pong(_) => Some(Inbound::Pong),
            Frame::Close(_) => Some(self.end(Inbound::Close)),
            Frame::Continuation(item) => self.fragment(item),
        }
    }

    fn fragment(&mut self, item: Item) -> Option<Inbound> {
        let (first, binary, part, last) = match item {
            Item::FirstText(b) => (true, false, b, false),
            Item::FirstBinary(b) => (true, true, b, false),
            Item::Continue(b) => (false, false, b, false),
            Item::Last(b) => (false, false, b, true),
        };
        if first {
            self.fragments = Some(Fragments {
                binary,
                data: BytesMut::new(),
            });
        }
        let f = self.fragments.as_mut()?;
        if f.data.len() + part.len() > self.hard_limit {
            self.fragments = None;
            return Some(self.end(Inbound::TooLarge));
        }
        f.data.extend_from_slice(&part);
        if !last {
            return None;
        }
        let f = self.fragments.take()?;
        let data: Bytes = f.data.freeze();
        Some(if f.binary {
            Inbound::Binary(data)
        } else {
            Inbound::Text(data)
        })
    }

    fn end(&mut self, last: Inbound) -> Inbound {
        self.done = true;
        self.buf = BytesMut::new();
        last
    }

    /// Reads what the socket has into the buffer: `Ok(false)` at the end of the stream.
    ///
    /// A read that does not fill the scratch buffer has drained the socket, so it also clears
    /// the runtime's read readiness (as tokio's own `poll_read` does): the next poll waits for
    /// new data instead of trying a read that can only fail. Without this, every message a
    /// client sent cost the node a second `recv` that returned `EAGAIN` (half of all `recv`s
    /// in a chat run). The clearing goes through `try_io`, which clears only the readiness it
    /// saw before the read, so data that arrives after it still wakes the reader.
    fn read(&mut self) -> io::Result<bool> {
        SCRATCH_BUF.with(|s| {
            let mut s = s.borrow_mut();
            let got = Cell::new(0);
            let res = self.sock.try_io(Interest::READABLE, || {
                let n = (&*socket2::SockRef::from(&*self.sock)).read(&mut s[..])?;
                got.set(n);
                if 0 < n && n < s.len() {
                    // Drained: have `try_io` clear the readiness.
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            let n = got.get();
            // An error after bytes were read is the drained signal above, not a failure.
            if let (Err(e), 0) = (res, n) {
                return Err(e);
            }
            self.buf.extend_from_slice(&s[..n]);
            Ok(n > 0)
        })
    }
}

impl Stream for FrameReader {
    type Item = Inbound;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(m) = this.decode() {
                return Poll::Ready(Some(m));
            }
            if let Err(e) = ready!(this.sock.poll_read_ready(cx)) {
                return Poll::Ready(Some(this.end(Inbound::Broken(e.to_string()))));
            }
            match this.read() {
                Ok(true) => {}
                Ok(false) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Some(this.end(Inbound::Broken(e.to_string())))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_length_a_header_announces() {
        assert_eq!(FrameReader::announced_len(&[0x81]), None);
        assert_eq!(FrameReader::announced_len(&[0x81, 0x85]), Some(5));
        assert_eq!(FrameReader::announced_len(&[0x82, 0xfe, 1]), None);
        assert_eq!(FrameReader::announced_len(&[0x82, 0xfe, 1, 0]), Some(256));
        let mut h = vec![0x82, 0xff];
        h.extend_from_slice(&(5u64 << 40).to_be_bytes());
        assert_eq!(FrameReader::announced_len(&h), Some(5 << 40));
    }
}
