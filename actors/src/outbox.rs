//! A connection's bounded outbound queue, and the writes that empty it.
//!
//! Producers (conversation actors, the session, the bus) push frames that are framed already
//! ([`OutFrame::wire`]). A push does not write: it queues the frame and marks the connection dirty
//! on the producer's thread. When the producer's current turn is over, one flush per thread
//! writes every dirty connection straight to its socket, everything queued in one vectored
//! write; a turn that dirties many connections (a fan-out) writes them in batches of 64 as it
//! goes. So a message to a thousand members costs a thousand writes and no task wake-ups, and a
//! burst of messages released together costs one write per member, not one per message.
//!
//! Only when a socket does not take everything (the reader is slow) does the connection's own
//! writer task take over: it waits until the socket is writable and goes on from there. A
//! reader that lets `limit` frames pile up is cut off with [`CLOSE_SLOW_CONSUMER`]; nobody else
//! waits for it. No actor mailbox sits on this path, and the only lock is the connection's own.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;

use crate::protocol::{Format, OutFrame};

/// WebSocket close code sent to a reader too slow to keep its queue under the bound.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code sent when the user was suspended or deleted while connected.
pub const CLOSE_USER_DISABLED: u16 = 4003;
/// Close code sent to a client that stopped answering pings.
pub const CLOSE_PING_TIMEOUT: u16 = 4009;
/// Close code (RFC 6455 "message too big") for a frame past the hard frame limit.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Most buffers handed to one vectored write (Linux takes up to 1,024).
const MAX_IOV: usize = 64;

/// The socket under a connection, as the outbox writes to it. Implemented by the transport;
/// both calls must return at once.
pub trait Wire: Send + Sync + 'static {
    /// Writes as much of `bufs` as the socket takes now; `WouldBlock` when it takes nothing.
    fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Ends the connection in both directions: the peer sees the end of the stream after what
    /// was written, and the local reader sees the end of its input.
    fn shutdown(&self);
}

/// A control frame for the writer.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Ping,
    Pong(Bytes),
}

/// Why the connection is closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: String,
}

/// What a flush achieved; tells the connection's writer what to wait for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued is on the socket.
    Empty,
    /// The socket took less than everything: wait until it is writable.
    Blocked,
    /// The close frame is written (or the socket failed): the connection is over.
    Done,
}

#[derive(Default)]
struct State {
    /// Frames not yet written, in order; the first may be partly written already.
    queue: VecDeque<Bytes>,
    /// The first frame is partly written: it must be finished before anything else.
    partial: bool,
    close: Option<Closing>,
    /// The close frame is queued: nothing more may be.
    close_queued: bool,
    /// The connection is over; the writer has nothing left to do.
    done: bool,
    /// The writer task, sleeping until it is needed.
    writer: Option<Waker>,
}

/// The bounded queue of one connection.
pub struct Outbox {
    state: Mutex<State>,
    limit: usize,
    /// Encoding of pushed events: 0 = not yet chosen (JSON), 1 = JSON, 2 = MessagePack. Kept
    /// here rather than on the connection: a fan-out reads it beside the queue it pushes to.
    format: AtomicU8,
    wire: Option<Box<dyn Wire>>,
    frames_out: metrics::Counter,
}

impl Outbox {
    /// A queue that holds at most `limit` unwritten frames before cutting the reader off and
    /// writes to `wire`; pushed events go in `format` (None: that of the client's first frame).
    /// Without a wire, frames stay queued (tests look at them there).
    pub fn new(limit: usize, format: Option<Format>, wire: Option<Box<dyn Wire>>) -> Arc<Self> {
        let f = match format {
            None => 0,
            Some(Format::Json) => 1,
            Some(Format::MsgPack) => 2,
        };
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            limit: limit.max(1),
            format: AtomicU8::new(f),
            wire,
            frames_out: metrics::counter!("kaiwa_frames_out_total"),
        })
    }

    /// The encoding of pushed events: the one chosen at connect, else that of the client's
    /// first frame, else JSON.
    pub fn event_format(&self) -> Format {
        match self.format.load(Ordering::Relaxed) {
            2 => Format::MsgPack,
            _ => Format::Json,
        }
    }

    /// Records the encoding of a frame the client sent; only the first one counts.
    pub fn saw_client_format(&self, f: Format) {
        let v = if f == Format::MsgPack { 2 } else { 1 };
        let _ = self
            .format
            .compare_exchange(0, v, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Queues a data frame. Returns false when the connection is closing or the queue was full;
    /// a full queue closes the connection with [`CLOSE_SLOW_CONSUMER`] and drops what it held.
    pub fn push(self: &Arc<Self>, frame: OutFrame) -> bool {
        let queued = self.push_all_uncounted(std::iter::once(frame)) == 1;
        if queued {
            self.frames_out.increment(1);
        }
        queued
    }

    /// Queues frames, in order, as one burst: all of them are queued before the connection is
    /// marked dirty, so that no flush writes part of them alone. Returns how many were queued
    /// (fewer than given when the queue filled up and cut the reader off). Not counted in
    /// `kaiwa_frames_out_total`: a fan-out counts all its frames at once (one shared counter
    /// update per message instead of one per member).
    pub fn push_all_uncounted(self: &Arc<Self>, frames: impl IntoIterator<Item = OutFrame>) -> u64 {
        let mut s = self.state.lock();
        if s.close.is_some() {
            return 0;
        }
        let first = s.queue.is_empty();
        let mut queued = 0;
        for frame in frames {
            if s.queue.len() >= self.limit {
                // Drop what is queued, except the rest of a frame the socket has begun.
                let keep = if s.partial { 1 } else { 0 };
                s.queue.truncate(keep);
                metrics::counter!("kaiwa_slow_consumers_total").increment(1);
                self.queue_close(
                    &mut s,
                    CLOSE_SLOW_CONSUMER,
                    "slow consumer: outbound queue full, resync after reconnect".into(),
                );
                return 0;
            }
            s.queue.push_back(frame.wire);
            queued += 1;
        }
        drop(s);
        if first && queued > 0 {
            self.schedule();
        }
        queued
    }

    /// Queues a control frame (ping or pong): these fit even in a full queue.
    pub fn push_control(self: &Arc<Self>, out: Outgoing) {
        let mut buf = BytesMut::with_capacity(16);
        match out {
            Outgoing::Ping => Parser::write_message(&mut buf, b"", OpCode::Ping, true, false),
            Outgoing::Pong(b) => {
                Parser::write_message(&mut buf, &b[..b.len().min(125)], OpCode::Pong, true, false)
            }
        }
        let mut s = self.state.lock();
        if s.close.is_some() {
            return;
        }
        let first = s.queue.is_empty();
        s.queue.push_back(buf.freeze());
        drop(s);
        if first {
            self.schedule();
        }
    }

    /// Writes what is queued, then a close frame, then ends the connection.
    pub fn close(self: &Arc<Self>, code: u16, reason: impl Into<String>) {
        let mut s = self.state.lock();
        if s.close.is_none() {
            self.queue_close(&mut s, code, reason.into());
        }
    }

    /// Queues the close frame and hands the rest to the writer, which ends the connection
    /// once the frame is out. Takes the lock held by the caller.
    fn queue_close(&self, s: &mut State, code: u16, mut reason: String) {
        let mut cut = reason.len().min(120);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        let mut buf = BytesMut::with_capacity(reason.len() + 8);
        let close = CloseReason {
            code: CloseCode::from(code),
            description: Some(reason.clone()),
        };
        Parser::write_close(&mut buf, Some(close), false);
        s.queue.push_back(buf.freeze());
        s.close = Some(Closing { code, reason });
        s.close_queued = true;
        if let Some(w) = s.writer.take() {
            w.wake();
        }
    }

    /// The close requested (by the server or because the queue overflowed), if any.
    pub fn closing(&self) -> Option<Closing> {
        self.state.lock().close.clone()
    }

    /// Number of frames (data and control) not yet written.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The queued frames, for tests without a socket.
    #[cfg(test)]
    pub fn queued(&self) -> Vec<Bytes> {
        self.state.lock().queue.iter().cloned().collect()
    }

    /// Gets the first frame of a burst written: by this thread's flush at the end of its turn
    /// when the thread runs actors, else by the connection's writer task.
    fn schedule(self: &Arc<Self>) {
        if self.wire.is_none() {
            return;
        }
        if !dirty::add(self) {
            self.wake_writer();
        }
    }

    fn wake_writer(&self) {
        let w = self.state.lock().writer.take();
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Writes as much as the socket takes now (no waiting).
    pub fn flush(&self) -> Flushed {
        let Some(wire) = &self.wire else {
            return Flushed::Empty;
        };
        let mut s = self.state.lock();
        loop {
            if s.done {
                return Flushed::Done;
            }
            if s.queue.is_empty() {
                if s.close_queued {
                    return self.finish(s, wire.as_ref());
                }
                return Flushed::Empty;
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = s.queue.len().min(MAX_IOV);
            for (slot, b) in iov.iter_mut().zip(s.queue.iter()) {
                *slot = IoSlice::new(b);
            }
            match wire.try_write(&iov[..n]) {
                Ok(0) => return self.fail(s, wire.as_ref()),
                Ok(mut written) => {
                    while written > 0 {
                        let front = s.queue.front_mut().expect("written bytes were queued");
                        if written >= front.len() {
                            written -= front.len();
                            s.queue.pop_front();
                            s.partial = false;
                        } else {
                            front.advance(written);
                            written = 0;
                            s.partial = true;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.fail(s, wire.as_ref()),
            }
        }
    }

    /// The peer is gone: nothing more will be written.
    fn fail(&self, mut s: parking_lot::MutexGuard<'_, State>, wire: &dyn Wire) -> Flushed {
        s.queue.clear();
        if s.close.is_none() {
            s.close = Some(Closing {
                code: 1006,
                reason: "connection lost".into(),
            });
        }
        self.finish(s, wire)
    }

    /// Ends the connection: shuts the socket down and wakes the writer task so that it ends too
    /// (whichever thread's flush got here, the writer must not wait forever on a dead socket).
    fn finish(&self, mut s: parking_lot::MutexGuard<'_, State>, wire: &dyn Wire) -> Flushed {
        s.done = true;
        let writer = s.writer.take();
        drop(s);
        wire.shutdown();
        if let Some(w) = writer {
            w.wake();
        }
        Flushed::Done
    }

    /// For the connection's writer task: ready when a flush is needed that no producer's flush
    /// will do (the socket blocked, or a close is queued); otherwise remembers the task.
    pub fn poll_needed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.state.lock();
        if s.done || s.close_queued {
            return Poll::Ready(());
        }
        if !s.queue.is_empty() && s.writer.is_none() {
            // Queued but not flushed: the producer could not flush (no actor thread) or a
            // flush blocked and handed over.
            return Poll::Ready(());
        }
        if !s.writer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.writer = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The per-thread list of connections with frames to write, flushed once per turn.
mod dirty {
    use super::*;

    /// A turn that has dirtied this many connections writes them at once instead of at its end.
    /// A fan-out then writes its first members while it still queues for the rest, each
    /// connection is touched once while it is in cache, and the last member's wait no longer
    /// includes queueing for all the others (3.5 ms of it with 10,000 members). Bursts smaller
    /// than this still share one write per connection.
    pub(super) const EAGER: usize = 64;

    /// This thread's connections with frames to write.
    struct Dirty {
        list: Vec<Arc<Outbox>>,
        /// A flush is spawned for the end of the current turn.
        scheduled: bool,
    }

    thread_local! {
        static DIRTY: RefCell<Dirty> = const {
            RefCell::new(Dirty {
                list: Vec::new(),
                scheduled: false,
            })
        };
    }

    /// Adds `ob` to this thread's next flush, scheduling one at the end of the turn if none is,
    /// and writing the batch now once it holds [`EAGER`] connections. False when this thread
    /// runs no actors, so no flush can be scheduled on it.
    pub(super) fn add(ob: &Arc<Outbox>) -> bool {
        let full = DIRTY.with(|d| {
            let mut d = d.borrow_mut();
            if !d.scheduled {
                let arbiter = actix::Arbiter::try_current()?;
                // The flush is queued behind the tasks that are ready now, so everything they
                // push joins the same writes.
                if !arbiter.spawn(async { flush_all() }) {
                    return None;
                }
                d.scheduled = true;
            }
            d.list.push(ob.clone());
            Some(d.list.len() >= EAGER)
        });
        match full {
            None => false,
            Some(false) => true,
            Some(true) => {
                write(take());
                true
            }
        }
    }

    /// What is dirty now; the borrow ends before anything is written.
    fn take() -> Vec<Arc<Outbox>> {
        DIRTY.with(|d| std::mem::take(&mut d.borrow_mut().list))
    }

    /// The flush at the end of a turn: writes every connection still dirty.
    fn flush_all() {
        DIRTY.with(|d| d.borrow_mut().scheduled = false);
        write(take());
    }

    /// Writes each connection of `list`, handing a full socket to its writer task.
    fn write(list: Vec<Arc<Outbox>>) {
        if list.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        for ob in &list {
            if ob.flush() == Flushed::Blocked {
                // The socket is full: the connection's writer takes over.
                ob.wake_writer();
            }
        }
        metrics::histogram!("kaiwa_flush_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("kaiwa_flush_connections").record(list.len() as f64);
        // Give the storage back for the next batch, unless a write pushed in the meantime.
        DIRTY.with(|d| {
            let mut d = d.borrow_mut();
            if d.list.is_empty() && d.list.capacity() < list.capacity() {
                let mut list = list;
                list.clear();
                d.list = list;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn frame() -> OutFrame {
        OutFrame::new(b"{}", false)
    }

    /// A socket that takes `room` bytes, then blocks.
    struct FakeWire {
        room: AtomicUsize,
        written: Mutex<Vec<u8>>,
        shut: AtomicUsize,
        /// Calls of `try_write`.
        writes: AtomicUsize,
    }

    impl FakeWire {
        fn writes(&self) -> usize {
            self.writes.load(Ordering::Relaxed)
        }
    }

    impl Wire for Arc<FakeWire> {
        fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let mut n = 0;
            let mut out = self.written.lock();
            for b in bufs {
                let room = self.room.load(Ordering::Relaxed) - n;
                let take = b.len().min(room);
                out.extend_from_slice(&b[..take]);
                n += take;
                if take < b.len() {
                    break;
                }
            }
            self.room.fetch_sub(n, Ordering::Relaxed);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }

        fn shutdown(&self) {
            self.shut.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn fake(room: usize) -> Arc<FakeWire> {
        Arc::new(FakeWire {
            room: AtomicUsize::new(room),
            written: Mutex::new(Vec::new()),
            shut: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
        })
    }

    /// Lets the current actor thread run what is queued on it (the end-of-turn flush).
    async fn end_turn() {
        for _ in 0..10 {
            actix::clock::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn a_large_fan_out_is_written_in_batches_as_it_goes() {
        actix::System::new().block_on(async {
            let n = dirty::EAGER;
            let wires: Vec<_> = (0..=n).map(|_| fake(1 << 20)).collect();
            let boxes: Vec<_> = wires
                .iter()
                .map(|w| Outbox::new(8, None, Some(Box::new(w.clone()))))
                .collect();
            for ob in &boxes[..n - 1] {
                ob.push(frame());
            }
            // A small burst waits for the end of the turn.
            assert!(wires.iter().all(|w| w.writes() == 0));
            // The batch is full: written at once, within the turn.
            boxes[n - 1].push(frame());
            assert!(wires[..n].iter().all(|w| w.writes() == 1));
            boxes[n].push(frame());
            assert_eq!(wires[n].writes(), 0);
            end_turn().await;
            assert_eq!(wires[n].writes(), 1);
            let one = wires[0].written.lock().clone();
            assert!(!one.is_empty());
            assert!(wires.iter().all(|w| *w.written.lock() == one));
        });
    }

    #[test]
    fn a_burst_reaches_each_member_in_one_write_even_past_a_batch() {
        use crate::hub::{Conn, Hub};
        use crate::protocol::{Event, SharedEvent};
        actix::System::new().block_on(async {
            let hub = Hub::new();
            let members = 3 * dirty::EAGER;
            let wires: Vec<_> = (0..members).map(|_| fake(1 << 20)).collect();
            let users: Vec<crate::protocol::Id> = (0..members).map(|i| format!("u{i}")).collect();
            for (i, w) in wires.iter().enumerate() {
                let wire: Box<dyn Wire> = Box::new(w.clone());
                hub.register(Arc::new(Conn::new(
                    i as u64,
                    users[i].clone(),
                    8,
                    None,
                    Some(wire),
                )));
            }
            let burst: Vec<_> = (0..3)
                .map(|i| {
                    Arc::new(SharedEvent::new(Event::MemberAdded {
                        conv: "c".into(),
                        user: format!("v{i}"),
                    }))
                })
                .collect();
            assert_eq!(hub.deliver(&users, &burst), 3 * members as u64);
            end_turn().await;
            for w in &wires {
                assert_eq!(w.writes(), 1);
                let text = String::from_utf8_lossy(&w.written.lock()).into_owned();
                let (a, b, c) = (text.find("v0"), text.find("v1"), text.find("v2"));
                assert!(a.is_some() && a < b && b < c, "in order: {text}");
            }
        });
    }

    #[test]
    fn overflow_cuts_the_reader_off_with_a_clear_code() {
        let o = Outbox::new(2, None, None);
        assert!(o.push(frame()));
        assert!(o.push(frame()));
        assert!(!o.push(frame()));
        assert_eq!(o.closing().unwrap().code, CLOSE_SLOW_CONSUMER);
        // What was queued is dropped; only the close frame is left.
        let q = o.queued();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0][0], 0x88);
        assert!(!o.push(frame()));
    }

    #[test]
    fn a_flush_writes_everything_queued_in_order_and_resumes_after_a_partial_write() {
        let w = fake(5);
        let o = Outbox::new(10, None, Some(Box::new(w.clone())));
        let frames: Vec<OutFrame> = (0..3)
            .map(|i| OutFrame::new(format!("{{\"n\":{i}}}").as_bytes(), false))
            .collect();
        for f in &frames {
            o.push(f.clone());
        }
        assert_eq!(o.flush(), Flushed::Blocked);
        w.room.store(1 << 20, Ordering::Relaxed);
        assert_eq!(o.flush(), Flushed::Empty);
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.wire.to_vec()).collect();
        assert_eq!(*w.written.lock(), expected);
        assert!(o.is_empty());
    }

    #[test]
    fn overflow_finishes_a_frame_the_socket_has_begun_before_the_close() {
        let w = fake(3);
        let o = Outbox::new(2, None, Some(Box::new(w.clone())));
        let f = OutFrame::new(b"[1,2,3,4]", false);
        o.push(f.clone());
        assert_eq!(o.flush(), Flushed::Blocked);
        o.push(f.clone());
        assert!(!o.push(f.clone()));
        w.room.store(1 << 20, Ordering::Relaxed);
        assert_eq!(o.flush(), Flushed::Done);
        let out = w.written.lock().clone();
        assert_eq!(
            &out[..f.wire.len()],
            &f.wire[..],
            "the begun frame is whole"
        );
        assert_eq!(out[f.wire.len()], 0x88, "then the close frame");
        assert_eq!(out.len(), f.wire.len() + 4 + CLOSE_SLOW_CONSUMER_REASON_LEN);
    }

    const CLOSE_SLOW_CONSUMER_REASON_LEN: usize =
        "slow consumer: outbound queue full, resync after reconnect".len();

    #[test]
    fn close_writes_the_queue_then_the_close_frame_then_shuts_down() {
        let w = fake(1 << 20);
        let o = Outbox::new(10, None, Some(Box::new(w.clone())));
        o.push(frame());
        o.close(CLOSE_USER_DISABLED, "user is no longer active");
        assert!(!o.push(frame()), "nothing is queued after the close");
        assert_eq!(o.flush(), Flushed::Done);
        let out = w.written.lock().clone();
        assert_eq!(&out[..4], &frame().wire[..]);
        assert_eq!(out[4], 0x88, "a close frame follows");
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), CLOSE_USER_DISABLED);
        assert_eq!(w.shut.load(Ordering::Relaxed), 1);
        assert_eq!(o.flush(), Flushed::Done);
    }

    /// A socket that is gone.
    struct DeadWire;

    impl Wire for DeadWire {
        fn try_write(&self, _: &[IoSlice<'_>]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn shutdown(&self) {}
    }

    #[test]
    fn a_flush_that_finds_the_peer_gone_ends_the_writer_too() {
        let o = Outbox::new(10, None, Some(Box::new(DeadWire)));
        let woken = Arc::new(AtomicUsize::new(0));
        struct Count(Arc<AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let waker = std::task::Waker::from(Arc::new(Count(woken.clone())));
        let mut cx = Context::from_waker(&waker);
        assert!(o.poll_needed(&mut cx).is_pending());
        o.push(frame());
        // Any thread's flush may be the one that finds the socket dead.
        assert_eq!(o.flush(), Flushed::Done);
        assert_eq!(woken.load(Ordering::Relaxed), 1, "the writer is woken");
        assert!(o.poll_needed(&mut cx).is_ready());
        assert_eq!(o.closing().unwrap().code, 1006);
        assert!(!o.push(frame()));
    }

    #[test]
    fn the_writer_is_needed_only_for_what_no_flush_will_write() {
        let o = Outbox::new(10, None, Some(Box::new(fake(0))));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(o.poll_needed(&mut cx).is_pending());
        // Not on an actor thread: the push cannot be flushed by its producer.
        o.push(frame());
        assert!(o.poll_needed(&mut cx).is_ready());
        o.close(1000, "bye");
        assert!(o.poll_needed(&mut cx).is_ready());
    }
}
