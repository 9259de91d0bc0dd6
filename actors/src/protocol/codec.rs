//! JSON and MessagePack codecs. The same serde types serve both encodings; a frame is encoded
//! once per encoding and the bytes are shared by every connection that receives it.

use std::sync::OnceLock;

use actix_http::ws::{OpCode, Parser};
use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{ErrorCode, KaiwaError};
use super::frames::{Event, Head, Op, Request};

/// The encoding of a frame: JSON in WebSocket text frames, MessagePack (maps with named fields)
/// in binary frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    MsgPack,
}

/// One outbound WebSocket data frame, encoded and framed once: `wire` holds the frame header and
/// the payload, ready for the socket. Cloning shares the bytes, so a fan-out to a thousand
/// connections writes the same buffer a thousand times and copies nothing.
#[derive(Debug, Clone)]
pub struct OutFrame {
    /// The whole WebSocket frame (server frames are never masked).
    pub wire: Bytes,
    /// Length of the frame header: the payload starts here in `wire`.
    head: u8,
    /// Binary (MessagePack) or text (JSON) frame.
    pub binary: bool,
}

impl OutFrame {
    /// Frames an encoded payload as one final text or binary WebSocket frame.
    pub fn new(payload: &[u8], binary: bool) -> Self {
        let op = if binary { OpCode::Binary } else { OpCode::Text };
        let mut buf = BytesMut::with_capacity(payload.len() + 10);
        Parser::write_message(&mut buf, payload, op, true, false);
        let head = (buf.len() - payload.len()) as u8;
        OutFrame {
            wire: buf.freeze(),
            head,
            binary,
        }
    }

    /// The encoded payload, without the frame header (shares the bytes).
    pub fn payload(&self) -> Bytes {
        self.wire.slice(self.head as usize..)
    }
}

/// Encodes a value in the given format.
pub fn encode<T: Serialize>(format: Format, value: &T) -> OutFrame {
    let encoded = match format {
        Format::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        Format::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
    };
    match encoded {
        Ok(v) => OutFrame::new(&v, format == Format::MsgPack),
        Err(e) => {
            tracing::error!("frame failed to encode: {e}");
            reply_err(
                format,
                None,
                &KaiwaError::internal("frame failed to encode"),
            )
        }
    }
}

#[derive(Serialize)]
struct OkReply<'a, T> {
    re: u64,
    ok: &'a T,
}

#[derive(Serialize)]
struct ErrReply<'a> {
    re: Option<u64>,
    err: &'a KaiwaError,
}

/// `{"re": id, "ok": value}`.
pub fn reply_ok<T: Serialize>(format: Format, re: u64, ok: &T) -> OutFrame {
    encode(format, &OkReply { re, ok })
}

/// `{"re": id|null, "err": {"code", "message"}}`.
pub fn reply_err(format: Format, re: Option<u64>, err: &KaiwaError) -> OutFrame {
    let value = ErrReply { re, err };
    let encoded = match format {
        Format::Json => serde_json::to_vec(&value).ok(),
        Format::MsgPack => rmp_serde::to_vec_named(&value).ok(),
    };
    OutFrame::new(&encoded.unwrap_or_default(), format == Format::MsgPack)
}

fn parse<T: DeserializeOwned>(format: Format, bytes: &[u8]) -> Result<T, String> {
    match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Format::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

/// A request that could not be decoded: the id to answer (when it was readable) and why.
pub type DecodeError = (Option<u64>, KaiwaError);

/// Reads only the request id of a frame, to answer a frame that is refused unread (too large).
pub fn decode_head(format: Format, bytes: &[u8]) -> Option<u64> {
    parse::<Head>(format, bytes).ok()?.id
}

/// Decodes a request frame. Errors carry the request id when it could be read, so that a
/// missing field is answered to its request while an unreadable frame gets `re: null`.
pub fn decode_request(format: Format, bytes: &[u8]) -> Result<Request, DecodeError> {
    let head: Head = parse(format, bytes).map_err(|e| {
        (
            None,
            KaiwaError::bad_frame(format!("unreadable frame: {e}")),
        )
    })?;
    let Some(id) = head.id else {
        return Err((None, KaiwaError::bad_frame("missing field `id`")));
    };
    let Some(op) = head.op else {
        return Err((Some(id), KaiwaError::bad_frame("missing field `op`")));
    };
    let bad = |e: String| (Some(id), KaiwaError::bad_frame(e));
    let op = match op.as_str() {
        "chat.open" => Op::ChatOpen(parse(format, bytes).map_err(bad)?),
        "group.create" => Op::GroupCreate(parse(format, bytes).map_err(bad)?),
        "group.add" => Op::GroupAdd(parse(format, bytes).map_err(bad)?),
        "group.remove" => Op::GroupRemove(parse(format, bytes).map_err(bad)?),
        "group.members" => Op::GroupMembers(parse(format, bytes).map_err(bad)?),
        "send" => Op::Send(parse(format, bytes).map_err(bad)?),
        "sync" => Op::Sync(parse(format, bytes).map_err(bad)?),
        "group.children" => Op::GroupChildren(parse(format, bytes).map_err(bad)?),
        "group.link" => Op::GroupLink(parse(format, bytes).map_err(bad)?),
        "group.unlink" => Op::GroupUnlink(parse(format, bytes).map_err(bad)?),
        "action.respond" => Op::ActionRespond(parse(format, bytes).map_err(bad)?),
        "action.results" => Op::ActionResults(parse(format, bytes).map_err(bad)?),
        "like" => Op::Like(parse(format, bytes).map_err(bad)?),
        "convs" => Op::Convs,
        "ping" => Op::Ping,
        other => {
            return Err((
                Some(id),
                KaiwaError::new(ErrorCode::UnknownOp, format!("unknown op `{other}`")),
            ))
        }
    };
    Ok(Request { id, op })
}

/// An event encoded lazily, at most once per format, then shared by every receiver.
#[derive(Debug)]
pub struct SharedEvent {
    event: Event,
    json: OnceLock<OutFrame>,
    msgpack: OnceLock<OutFrame>,
}

impl SharedEvent {
    /// Wraps an event; nothing is encoded until a receiver asks for a format.
    pub fn new(event: Event) -> Self {
        SharedEvent {
            event,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        }
    }

    /// The event itself.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The encoded frame for a format; encodes on first use.
    pub fn frame(&self, format: Format) -> OutFrame {
        let cell = match format {
            Format::Json => &self.json,
            Format::MsgPack => &self.msgpack,
        };
        cell.get_or_init(|| encode(format, &self.event)).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Body, Message};

    #[test]
    fn decodes_send_in_both_formats() {
        let json = br#"{"id":7,"op":"send","conv":"g1","client_msg_id":"a","body":{"text":"hi"}}"#;
        let r = decode_request(Format::Json, json).unwrap();
        assert_eq!(r.id, 7);
        let Op::Send(s) = r.op else {
            panic!("not a send")
        };
        assert_eq!(s.body, Body::Text("hi".into()));

        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        let mp = rmp_serde::to_vec_named(&v).unwrap();
        let r = decode_request(Format::MsgPack, &mp).unwrap();
        assert!(matches!(r.op, Op::Send(_)));
    }

    #[test]
    fn errors_name_the_request_when_they_can() {
        let (re, e) = decode_request(Format::Json, b"{nope").unwrap_err();
        assert_eq!((re, e.code), (None, ErrorCode::BadFrame));
        let (re, e) = decode_request(Format::Json, br#"{"id":3,"op":"dance"}"#).unwrap_err();
        assert_eq!((re, e.code), (Some(3), ErrorCode::UnknownOp));
        let (re, e) =
            decode_request(Format::Json, br#"{"id":4,"op":"send","conv":"x"}"#).unwrap_err();
        assert_eq!((re, e.code), (Some(4), ErrorCode::BadFrame));
    }

    #[test]
    fn events_carry_their_tag_in_both_formats() {
        let ev = SharedEvent::new(Event::Message(Message {
            conv: "c".into(),
            seq: 1,
            msg_id: "m".into(),
            from: "u".into(),
            ts: 5,
            body: Body::Text("hey".into()),
            thread: None,
            origin: None,
        }));
        let j: serde_json::Value =
            serde_json::from_slice(&ev.frame(Format::Json).payload()).unwrap();
        assert_eq!(j["ev"], "message");
        assert_eq!(j["body"]["text"], "hey");
        let m = ev.frame(Format::MsgPack);
        assert!(m.binary);
        let back: serde_json::Value = rmp_serde::from_slice(&m.payload()).unwrap();
        assert_eq!(back, j);
    }
}
