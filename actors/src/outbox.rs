//! A connection's bounded outbound queue. Producers (conversation actors, the session, the bus)
//! push pre-encoded frames; the connection's writer drains everything queued at once and writes
//! it in as few socket writes as it can. No actor mailbox sits on this path.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::protocol::OutFrame;

/// WebSocket close code sent to a reader too slow to keep its queue under the bound.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code sent when the user was suspended or deleted while connected.
pub const CLOSE_USER_DISABLED: u16 = 4003;
/// Close code sent to a client that stopped answering pings.
pub const CLOSE_PING_TIMEOUT: u16 = 4009;
/// Close code (RFC 6455 "message too big") for a frame past the hard frame limit.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Something the writer must put on the wire.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Data(OutFrame),
    Ping,
    Pong(Bytes),
}

/// Why and how the writer must close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: String,
}

/// What the writer takes in one turn besides the frames: possibly the close, after them.
#[derive(Debug, Default)]
pub struct Drained {
    pub close: Option<Closing>,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Outgoing>,
    close: Option<Closing>,
    close_taken: bool,
    waker: Option<Waker>,
}

/// The bounded queue. `limit` counts data frames; control frames always fit.
pub struct Outbox {
    state: Mutex<State>,
    limit: usize,
}

impl Outbox {
    /// An empty queue that holds at most `limit` frames before cutting the reader off.
    pub fn new(limit: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            limit: limit.max(1),
        }
    }

    fn wake(waker: Option<Waker>) {
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues a data frame. Returns false when the connection is closing or the queue was full;
    /// a full queue closes the connection with [`CLOSE_SLOW_CONSUMER`] and drops what it held.
    pub fn push(&self, frame: OutFrame) -> bool {
        let mut s = self.state.lock();
        if s.close.is_some() {
            return false;
        }
        if s.frames.len() >= self.limit {
            s.frames.clear();
            s.close = Some(Closing {
                code: CLOSE_SLOW_CONSUMER,
                reason: "slow consumer: outbound queue full, resync after reconnect".into(),
            });
            metrics::counter!("kaiwa_slow_consumers_total").increment(1);
            let w = s.waker.take();
            drop(s);
            Self::wake(w);
            return false;
        }
        let was_empty = s.frames.is_empty();
        s.frames.push_back(Outgoing::Data(frame));
        // The writer only sleeps on an empty queue, so only the first push needs to wake it.
        let w = if was_empty { s.waker.take() } else { None };
        drop(s);
        Self::wake(w);
        true
    }

    /// Queues a control frame (ping or pong); these do not count against the bound.
    pub fn push_control(&self, out: Outgoing) {
        let mut s = self.state.lock();
        if s.close.is_some() {
            return;
        }
        s.frames.push_back(out);
        let w = s.waker.take();
        drop(s);
        Self::wake(w);
    }

    /// Asks the writer to send what is queued, then a close frame, then end the connection.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        let mut s = self.state.lock();
        if s.close.is_none() {
            s.close = Some(Closing {
                code,
                reason: reason.into(),
            });
        }
        let w = s.waker.take();
        drop(s);
        Self::wake(w);
    }

    /// True once a close was requested (by the server or because the queue overflowed).
    pub fn is_closing(&self) -> bool {
        self.state.lock().close.is_some()
    }

    /// Number of data and control frames waiting.
    pub fn len(&self) -> usize {
        self.state.lock().frames.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For the writer: moves everything queued into `batch` (which must be empty), or registers
    /// the waker and returns `Pending`. Returns `Ready(None)` after the close has been handed out
    /// once. The queue and the writer's batch swap buffers, so a busy connection allocates no
    /// queue storage per delivery.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        batch: &mut VecDeque<Outgoing>,
    ) -> Poll<Option<Drained>> {
        debug_assert!(batch.is_empty());
        let mut s = self.state.lock();
        if s.close_taken {
            return Poll::Ready(None);
        }
        if s.frames.is_empty() && s.close.is_none() {
            if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        std::mem::swap(&mut s.frames, batch);
        let close = s.close.clone();
        if close.is_some() {
            s.close_taken = true;
        }
        Poll::Ready(Some(Drained { close }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker;

    fn frame() -> OutFrame {
        OutFrame {
            data: Bytes::from_static(b"{}"),
            binary: false,
        }
    }

    #[test]
    fn overflow_cuts_the_reader_off_with_a_clear_code() {
        let o = Outbox::new(2);
        assert!(o.push(frame()));
        assert!(o.push(frame()));
        assert!(!o.push(frame()));
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut batch = VecDeque::new();
        let Poll::Ready(Some(d)) = o.poll_drain(&mut cx, &mut batch) else {
            panic!("nothing drained")
        };
        assert!(batch.is_empty());
        assert_eq!(d.close.unwrap().code, CLOSE_SLOW_CONSUMER);
        assert!(matches!(
            o.poll_drain(&mut cx, &mut batch),
            Poll::Ready(None)
        ));
    }

    #[test]
    fn drains_everything_queued_in_one_turn() {
        let o = Outbox::new(10);
        for _ in 0..5 {
            o.push(frame());
        }
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut batch = VecDeque::new();
        let Poll::Ready(Some(d)) = o.poll_drain(&mut cx, &mut batch) else {
            panic!("nothing drained")
        };
        assert_eq!(batch.len(), 5);
        assert!(d.close.is_none());
        batch.clear();
        assert!(o.poll_drain(&mut cx, &mut batch).is_pending());
        // The buffers swap: the next burst reuses the storage of the last one.
        let cap = batch.capacity();
        o.push(frame());
        let Poll::Ready(Some(_)) = o.poll_drain(&mut cx, &mut batch) else {
            panic!("nothing drained")
        };
        assert_eq!(batch.len(), 1);
        batch.clear();
        o.push(frame());
        assert!(o.state.lock().frames.capacity() >= cap);
    }
}
