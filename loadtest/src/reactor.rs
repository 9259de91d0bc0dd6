//! The receiving side at scale: one thread reads every pure receiver of this process, with epoll
//! and one shared read buffer.
//!
//! A fan-out to 10,000 members hands the tool 10,000 frames within a few tens of ms. Read by a
//! task per connection (a wake-up, an 8 KiB buffer, a lock and a map per connection), each
//! delivery cost the tool ~6 µs of its core, 2.5 times what the kernel itself needs
//! (`kaiwa-loadtest floor`), and the tool's own lag showed up in the latency figures. Here a
//! delivery touches its connection's slot and state shared by all: the buffer, the table of
//! conversations, one histogram.
//!
//! Pure receivers only read during the run: they answer pings and close frames, and count
//! `message` events. When the run ends, [`Reactor::finish`] hands each socket back, with any
//! bytes of a frame not yet complete, so that a regular [`crate::Client`] can `sync` on it.
//! Connections that send during the run (chat) keep a client of their own throughout.

use std::io::{Cursor, ErrorKind, Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;
use serde_json::Value;
use tungstenite::protocol::frame::coding::{Control, Data as DataCode, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::client::{decode_frame, Data, RawConn};
use crate::clock;
use crate::live::Live;
use crate::receivers::{body_stamp, peek, Seen};
use crate::stats::{Latency, SeqSet};

/// The token that wakes the loop to stop.
const STOP: Token = Token(usize::MAX);
/// The shared read buffer: a read takes all that is queued for one socket, usually one frame.
const READ_BUF: usize = 64 * 1024;
/// A frame larger than this is not Kaiwa's: the connection counts as closed by a bad frame.
const MAX_FRAME: usize = 64 << 20;

/// One connection as the loop holds it: kept small, because a delivery touches it cold.
struct Slot {
    sock: mio::net::TcpStream,
    /// Bytes of an incomplete frame, carried over to the next read (usually empty).
    partial: Vec<u8>,
    /// A fragmented message being gathered: (text?, bytes so far). Kaiwa sends none.
    fragments: Option<Box<(bool, Vec<u8>)>>,
    /// The seqs seen of the first conversation (by index into the loop's table), inline...
    first: Option<(u32, SeqSet)>,
    /// ...and of any others.
    more: Vec<(u32, SeqSet)>,
    deliveries: u64,
    duplicates: u64,
    origin_ns: Option<u64>,
    /// Close code of a connection the server closed ("none" without a close frame).
    closed: Option<String>,
}

impl Slot {
    fn seqs(&mut self, conv: u32) -> &mut SeqSet {
        if self.first.is_none() {
            self.first = Some((conv, SeqSet::default()));
        }
        match &mut self.first {
            Some((c, s)) if *c == conv => s,
            _ => match self.more.iter().position(|(c, _)| *c == conv) {
                Some(i) => &mut self.more[i].1,
                None => {
                    self.more.push((conv, SeqSet::default()));
                    &mut self.more.last_mut().expect("just pushed").1
                }
            },
        }
    }
}

/// What the loop shares between all connections.
struct Shared {
    live: Arc<Live>,
    latency: Latency,
    /// Conversation ids seen, and their index (slots keep the index, not the string).
    convs: FxHashMap<String, u32>,
    names: Vec<String>,
    /// Deliveries not yet added to `live` (added once per batch of events).
    unreported: u64,
}

impl Shared {
    fn conv_index(&mut self, conv: &str) -> u32 {
        if let Some(&i) = self.convs.get(conv) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(conv.to_owned());
        self.convs.insert(conv.to_owned(), i);
        i
    }

    /// Counts one `message` event of `slot`.
    fn record(&mut self, slot: &mut Slot, conv: &str, seq: u64, stamp: Option<u64>, origin: bool) {
        let now = clock::now_ns();
        let conv = self.conv_index(conv);
        if !slot.seqs(conv).insert(seq) {
            slot.duplicates += 1;
            return;
        }
        slot.deliveries += 1;
        self.unreported += 1;
        if let Some(sent) = stamp {
            self.latency.record_ns(now.saturating_sub(sent));
        }
        if origin && slot.origin_ns.is_none() {
            slot.origin_ns = Some(now);
        }
    }

    /// Looks at one whole data message: counts it if it is a `message` event.
    fn message(&mut self, slot: &mut Slot, text: bool, payload: &[u8]) {
        let data = if text {
            match std::str::from_utf8(payload) {
                Ok(t) => Data::Text(t),
                Err(_) => return,
            }
        } else {
            Data::Binary(payload)
        };
        if let Some(p) = peek(data) {
            let stamp = p.body.as_ref().and_then(|b| {
                b.text
                    .as_deref()
                    .or_else(|| b.announcement.as_ref()?.text.as_deref())
                    .and_then(clock::parse_stamp)
            });
            self.record(slot, &p.conv, p.seq, stamp, p.origin.is_some());
            return;
        }
        // A shape the quick look does not know: decode it whole.
        let Ok(ev) = decode_frame(data) else { return };
        if ev.get("ev").and_then(Value::as_str) != Some("message") {
            return;
        }
        let (Some(conv), Some(seq)) = (
            ev.get("conv").and_then(Value::as_str),
            ev.get("seq").and_then(Value::as_u64),
        ) else {
            return;
        };
        let stamp = ev.get("body").and_then(body_stamp);
        let origin = ev.get("origin").is_some_and(|o| !o.is_null());
        self.record(slot, conv, seq, stamp, origin);
    }
}

/// What became of one connection: its socket (None if it was never connected) and what it saw.
pub(crate) struct Finished {
    pub(crate) raw: Option<RawConn>,
    pub(crate) seen: Seen,
}

/// The loop's thread, reading a fixed set of connections until told to stop.
pub struct Reactor {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<std::io::Result<LoopResult>>>,
}

struct LoopResult {
    slots: Vec<Option<Slot>>,
    shared: Shared,
}

impl Reactor {
    /// Starts reading `conns` (None where connecting failed) on a thread of its own.
    pub fn start(conns: Vec<Option<RawConn>>, live: Arc<Live>) -> std::io::Result<Reactor> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), STOP)?);
        let mut slots = Vec::with_capacity(conns.len());
        for (i, c) in conns.into_iter().enumerate() {
            let Some(c) = c else {
                slots.push(None);
                continue;
            };
            let std = c.tcp.into_std()?;
            let mut sock = mio::net::TcpStream::from_std(std);
            poll.registry()
                .register(&mut sock, Token(i), Interest::READABLE)?;
            slots.push(Some(Slot {
                sock,
                partial: c.pending.to_vec(),
                fragments: None,
                first: None,
                more: Vec::new(),
                deliveries: 0,
                duplicates: 0,
                origin_ns: None,
                closed: None,
            }));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let shared = Shared {
            live,
            latency: Latency::default(),
            convs: FxHashMap::default(),
            names: Vec::new(),
            unreported: 0,
        };
        let thread = std::thread::Builder::new()
            .name("receivers".into())
            .spawn(move || run(poll, slots, shared, &stop2))?;
        Ok(Reactor {
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// Stops reading and hands every connection back (to be made a client again inside a tokio
    /// runtime), with what it saw and the latencies of all.
    pub(crate) fn finish(mut self) -> anyhow::Result<(Vec<Finished>, Latency)> {
        self.stop.store(true, Relaxed);
        let _ = self.waker.wake();
        let thread = self.thread.take().expect("finished once");
        let LoopResult { slots, shared } = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the receivers' thread panicked"))??;
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            let Some(s) = slot else {
                out.push(Finished {
                    raw: None,
                    seen: Seen::default(),
                });
                continue;
            };
            let mut seen = Seen {
                deliveries: s.deliveries,
                duplicates: s.duplicates,
                closed: s.closed,
                origin_ns: s.origin_ns,
                ..Default::default()
            };
            for (conv, seqs) in s.first.into_iter().chain(s.more) {
                seen.per_conv
                    .insert(shared.names[conv as usize].clone(), seqs);
            }
            // SAFETY: the descriptor comes straight out of the socket that owned it.
            let std = unsafe { std::net::TcpStream::from_raw_fd(s.sock.into_raw_fd()) };
            let raw = tokio::net::TcpStream::from_std(std)
                .ok()
                .map(|tcp| RawConn {
                    tcp,
                    pending: Bytes::from(s.partial),
                });
            out.push(Finished { raw, seen });
        }
        Ok((out, shared.latency))
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        let _ = self.waker.wake();
    }
}

/// The loop: reads every readable socket until told to stop.
fn run(
    mut poll: Poll,
    mut slots: Vec<Option<Slot>>,
    mut shared: Shared,
    stop: &AtomicBool,
) -> std::io::Result<LoopResult> {
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUF];
    while !stop.load(Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(200))) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            if ev.token() == STOP {
                continue;
            }
            let Some(slot) = slots.get_mut(ev.token().0).and_then(Option::as_mut) else {
                continue;
            };
            // A short read drains the socket, unless its end has come too: an end raises no
            // further event, so it must be read now.
            let ending = ev.is_read_closed();
            read_ready(slot, &mut shared, &mut buf, ending);
            if slot.closed.is_some() {
                let _ = poll.registry().deregister(&mut slot.sock);
            }
        }
        if shared.unreported > 0 {
            shared
                .live
                .deliveries
                .fetch_add(std::mem::take(&mut shared.unreported), Relaxed);
        }
    }
    Ok(LoopResult { slots, shared })
}

/// Reads what `slot`'s socket has and handles every whole frame in it.
fn read_ready(slot: &mut Slot, shared: &mut Shared, buf: &mut [u8], ending: bool) {
    while slot.closed.is_none() {
        let n = match slot.sock.read(buf) {
            Ok(0) => {
                close(slot, shared, "none".into());
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                close(slot, shared, "none".into());
                return;
            }
        };
        if slot.partial.is_empty() {
            let used = frames(slot, shared, &buf[..n]);
            slot.partial.extend_from_slice(&buf[used..n]);
        } else {
            let mut data = std::mem::take(&mut slot.partial);
            data.extend_from_slice(&buf[..n]);
            let used = frames(slot, shared, &data);
            data.drain(..used);
            slot.partial = data;
        }
        if slot.partial.len() > MAX_FRAME {
            close(slot, shared, "frame_too_large".into());
            return;
        }
        if n < buf.len() && !ending {
            return;
        }
    }
}

/// Handles the whole frames at the start of `data`; returns how many bytes they took.
fn frames(slot: &mut Slot, shared: &mut Shared, data: &[u8]) -> usize {
    let mut used = 0;
    while slot.closed.is_none() {
        let mut cur = Cursor::new(&data[used..]);
        let (header, len) = match FrameHeader::parse(&mut cur) {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(_) => {
                close(slot, shared, "bad_frame".into());
                break;
            }
        };
        let start = used + cur.position() as usize;
        let Some(end) = start.checked_add(len as usize).filter(|e| *e <= data.len()) else {
            break;
        };
        used = end;
        frame(slot, shared, &header, &data[start..end]);
    }
    used
}

/// Handles one frame.
fn frame(slot: &mut Slot, shared: &mut Shared, header: &FrameHeader, payload: &[u8]) {
    match header.opcode {
        OpCode::Data(DataCode::Text) | OpCode::Data(DataCode::Binary) => {
            let text = header.opcode == OpCode::Data(DataCode::Text);
            if header.is_final {
                shared.message(slot, text, payload);
            } else {
                slot.fragments = Some(Box::new((text, payload.to_vec())));
            }
        }
        OpCode::Data(DataCode::Continue) => {
            let Some(f) = slot.fragments.as_mut() else {
                return;
            };
            f.1.extend_from_slice(payload);
            if header.is_final {
                let f = slot.fragments.take().expect("checked");
                shared.message(slot, f.0, &f.1);
            }
        }
        OpCode::Control(Control::Ping) => {
            send_control(slot, Control::Pong, payload);
        }
        OpCode::Control(Control::Close) => {
            let code = match payload {
                [a, b, ..] => u16::from_be_bytes([*a, *b]).to_string(),
                _ => "none".into(),
            };
            send_control(slot, Control::Close, payload.get(..2).unwrap_or(&[]));
            close(slot, shared, code);
        }
        _ => {}
    }
}

/// Writes a (masked, as from a client) control frame; a socket too full to take a few bytes
/// gets none, and the server's ping timeout will tell.
fn send_control(slot: &mut Slot, code: Control, payload: &[u8]) {
    let header = FrameHeader {
        opcode: OpCode::Control(code),
        mask: Some(rand::random()),
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(payload.len() + 8);
    let frame = Frame::from_payload(header, Bytes::copy_from_slice(payload));
    if frame.format(&mut out).is_ok() {
        let _ = (&slot.sock).write(&out);
    }
}

fn close(slot: &mut Slot, shared: &mut Shared, code: String) {
    if slot.closed.is_none() {
        slot.closed = Some(code);
        Live::bump(&shared.live.disconnects);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An unmasked frame, as a server sends it.
    fn server_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            is_final: fin,
            opcode,
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        Frame::from_payload(header, Bytes::copy_from_slice(payload))
            .format(&mut out)
            .unwrap();
        out
    }

    fn message(seq: u64) -> Vec<u8> {
        let text = clock::stamped_text(100);
        let ev = serde_json::json!({"ev": "message", "conv": "c1", "seq": seq,
            "from": "u1", "body": {"text": text}});
        serde_json::to_vec(&ev).unwrap()
    }

    const TEXT: OpCode = OpCode::Data(DataCode::Text);

    async fn wait_for(live: &Live, deliveries: u64) {
        for _ in 0..200 {
            if live.deliveries.load(Relaxed) >= deliveries {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {} deliveries", live.deliveries.load(Relaxed));
    }

    #[tokio::test]
    async fn frames_split_anywhere_fragments_pings_and_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let one = server_frame(TEXT, true, &message(1));
        // The handshake read the first 5 bytes of the first frame already.
        let raw = RawConn {
            tcp: client,
            pending: Bytes::copy_from_slice(&one[..5]),
        };
        let live = Arc::new(Live::default());
        let reactor = Reactor::start(vec![None, Some(raw)], live.clone()).unwrap();
        server.write_all(&one[5..]).await.unwrap();
        // The second frame arrives in two pieces, its header cut in the middle.
        let two = server_frame(TEXT, true, &message(2));
        server.write_all(&two[..1]).await.unwrap();
        wait_for(&live, 1).await;
        server.write_all(&two[1..]).await.unwrap();
        wait_for(&live, 2).await;
        // A ping is answered with a masked pong carrying its payload.
        server
            .write_all(&server_frame(OpCode::Control(Control::Ping), true, b"hi"))
            .await
            .unwrap();
        let mut pong = [0u8; 8];
        server.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong[0], 0x8A, "a final pong");
        assert_eq!(pong[1], 0x80 | 2, "masked, 2 bytes");
        let mask = &pong[2..6];
        assert_eq!([pong[6] ^ mask[0], pong[7] ^ mask[1]], *b"hi");
        // A fragmented message, a duplicate, then a close with a code.
        let three = message(3);
        let mut rest = server_frame(TEXT, false, &three[..10]);
        rest.extend(server_frame(
            OpCode::Data(DataCode::Continue),
            true,
            &three[10..],
        ));
        rest.extend(server_frame(TEXT, true, &message(1)));
        rest.extend(server_frame(
            OpCode::Control(Control::Close),
            true,
            &4008u16.to_be_bytes(),
        ));
        server.write_all(&rest).await.unwrap();
        let mut close = [0u8; 8];
        server.read_exact(&mut close).await.unwrap();
        assert_eq!(close[0], 0x88, "the close is echoed");
        wait_for(&live, 3).await;
        for _ in 0..200 {
            if live.disconnects.load(Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let (finished, latency) = reactor.finish().unwrap();
        assert_eq!(finished.len(), 2);
        assert!(finished[0].raw.is_none());
        let seen = &finished[1].seen;
        assert_eq!((seen.deliveries, seen.duplicates), (3, 1));
        assert_eq!(seen.closed.as_deref(), Some("4008"));
        let seqs = &seen.per_conv["c1"];
        assert!(seqs.contains(1) && seqs.contains(2) && seqs.contains(3));
        assert_eq!(latency.percentiles().count, 3);
        assert!(finished[1].raw.as_ref().unwrap().pending.is_empty());
    }

    #[tokio::test]
    async fn a_frame_cut_at_the_end_goes_back_with_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let live = Arc::new(Live::default());
        let raw = RawConn {
            tcp: client,
            pending: Bytes::new(),
        };
        let reactor = Reactor::start(vec![Some(raw)], live.clone()).unwrap();
        let one = server_frame(TEXT, true, &message(1));
        let two = server_frame(TEXT, true, &message(2));
        let mut data = one.clone();
        data.extend_from_slice(&two[..20]);
        server.write_all(&data).await.unwrap();
        wait_for(&live, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (mut finished, _) = reactor.finish().unwrap();
        let f = finished.pop().unwrap();
        assert_eq!(f.seen.deliveries, 1);
        let raw = f.raw.unwrap();
        assert_eq!(&raw.pending[..], &two[..20], "the cut frame's head is kept");
        // A client made of it reads the rest of that frame as one event.
        let client = crate::Client::from_raw(raw, crate::WireFormat::Json, None);
        server.write_all(&two[20..]).await.unwrap();
        match client.next(Duration::from_secs(5)).await {
            Some(crate::Incoming::Event(ev)) => assert_eq!(ev["seq"], 2),
            other => panic!("expected the second message, got {other:?}"),
        }
    }
}
