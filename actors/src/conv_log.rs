//! The write side of one conversation log: seq assignment, idempotency by `client_msg_id`, and
//! the in-order release of messages once the store has made them durable.
//!
//! The owning actor is the log's single writer. It assigns the next seq at once and hands the
//! message to the store; acks and fan-out wait until the store reports the write durable, and
//! are released strictly in seq order even when completions arrive out of order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::ids;
use crate::protocol::{Ack, Body, Id, Message, Origin};
use crate::reply::Waiter;
use crate::store::{StoreError, StoredMessage};

/// A message handed to the store and not yet released.
struct Pending {
    seq: u64,
    msg: StoredMessage,
    recipients: Arc<[Id]>,
    waiters: Vec<Waiter>,
    result: Option<Result<(), StoreError>>,
}

/// A message whose write has finished, in seq order, ready for ack and fan-out.
pub struct Released {
    pub msg: StoredMessage,
    pub recipients: Arc<[Id]>,
    pub waiters: Vec<Waiter>,
    pub result: Result<(), StoreError>,
}

/// What the log says about a `(sender, client_msg_id)` pair.
pub enum Admit {
    /// Already durable: answer with the first ack, store nothing.
    Duplicate(Ack),
    /// Still being written: the waiter was attached and will get the same ack.
    InFlight,
    /// Never seen: append it.
    New,
}

/// The write side of one log.
pub struct ConvLog {
    pub log: Id,
    next_seq: u64,
    /// Bumped on every reset, so completions of writes issued before it are recognised.
    epoch: u64,
    pending: VecDeque<Pending>,
    in_flight: HashMap<(Id, String), u64>,
    recent: HashMap<(Id, String), Ack>,
    recent_order: VecDeque<(Id, String)>,
    window: usize,
}

impl ConvLog {
    /// A log whose last durable seq is `last_seq`; `tail` is its newest stored messages, whose
    /// client ids seed the idempotency window of `window` entries.
    pub fn new(log: Id, last_seq: u64, tail: Vec<StoredMessage>, window: usize) -> Self {
        let mut l = ConvLog {
            log,
            next_seq: last_seq + 1,
            epoch: 0,
            pending: VecDeque::new(),
            in_flight: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            window: window.max(1),
        };
        for m in tail {
            l.remember(&m);
        }
        l
    }

    /// The seq of the newest message handed to the store.
    pub fn last_assigned(&self) -> u64 {
        self.next_seq - 1
    }

    /// The current epoch, to pass back to [`ConvLog::complete`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn remember(&mut self, m: &StoredMessage) {
        let key = (m.msg.from.clone(), m.client_msg_id.clone());
        let ack = Ack {
            seq: m.msg.seq,
            msg_id: m.msg.msg_id.clone(),
            ts: m.msg.ts,
        };
        if self.recent.insert(key.clone(), ack).is_none() {
            self.recent_order.push_back(key);
            while self.recent_order.len() > self.window {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    /// Checks a send against the idempotency window and the writes in flight.
    pub fn admit(&mut self, from: &str, client_msg_id: &str, waiter: Option<&Waiter>) -> Admit {
        let key = (from.to_string(), client_msg_id.to_string());
        if let Some(ack) = self.recent.get(&key) {
            return Admit::Duplicate(ack.clone());
        }
        if let Some(seq) = self.in_flight.get(&key) {
            if let Some(p) = self.pending.iter_mut().find(|p| p.seq == *seq) {
                if let Some(w) = waiter {
                    p.waiters.push(w.clone());
                }
                return Admit::InFlight;
            }
        }
        Admit::New
    }

    /// Assigns the next seq to a new message and records it as pending. Returns the stored
    /// form, to hand to the store, with the epoch to complete it with.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        conv: &str,
        from: &str,
        client_msg_id: &str,
        body: Body,
        thread: Option<Id>,
        origin: Option<Origin>,
        recipients: Arc<[Id]>,
        waiter: Option<Waiter>,
    ) -> StoredMessage {
        let seq = self.next_seq;
        self.next_seq += 1;
        let msg = StoredMessage {
            msg: Message {
                conv: conv.to_string(),
                seq,
                msg_id: ids::new_msg(),
                from: from.to_string(),
                ts: ids::now_ms(),
                body,
                thread,
                origin,
            },
            client_msg_id: client_msg_id.to_string(),
        };
        self.in_flight
            .insert((from.to_string(), client_msg_id.to_string()), seq);
        self.pending.push_back(Pending {
            seq,
            msg: msg.clone(),
            recipients,
            waiters: waiter.into_iter().collect(),
            result: None,
        });
        msg
    }

    /// Records the store's answer for `seq` and releases, in order, every message at the front
    /// whose write has finished. A completion from an older epoch is ignored.
    pub fn complete(
        &mut self,
        epoch: u64,
        seq: u64,
        result: Result<(), StoreError>,
    ) -> Vec<Released> {
        if epoch != self.epoch {
            return Vec::new();
        }
        if let Some(p) = self.pending.iter_mut().find(|p| p.seq == seq) {
            p.result = Some(result);
        }
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|p| p.result.is_some()) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            let key = (p.msg.msg.from.clone(), p.msg.client_msg_id.clone());
            self.in_flight.remove(&key);
            let result = p.result.unwrap_or(Ok(()));
            if result.is_ok() {
                self.remember(&p.msg);
            }
            out.push(Released {
                msg: p.msg,
                recipients: p.recipients,
                waiters: p.waiters,
                result,
            });
        }
        out
    }

    /// After a failed write: gives up every pending message (their waiters must be told) and
    /// continues from the store's `last_seq`, in a new epoch.
    pub fn reset(&mut self, last_seq: u64) -> Vec<Released> {
        self.epoch += 1;
        self.next_seq = last_seq + 1;
        self.in_flight.clear();
        self.pending
            .drain(..)
            .map(|p| Released {
                msg: p.msg,
                recipients: p.recipients,
                waiters: p.waiters,
                result: Err(StoreError::Backend(
                    "write abandoned after a store failure".into(),
                )),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> ConvLog {
        ConvLog::new("c".into(), 0, Vec::new(), 100)
    }

    fn add(l: &mut ConvLog, cmid: &str) -> u64 {
        l.append(
            "c",
            "u",
            cmid,
            Body::Text("x".into()),
            None,
            None,
            Arc::from(vec![]),
            None,
        )
        .msg
        .seq
    }

    #[test]
    fn releases_in_seq_order_whatever_the_completion_order() {
        let mut l = log();
        let (a, b, c) = (add(&mut l, "a"), add(&mut l, "b"), add(&mut l, "c"));
        assert_eq!((a, b, c), (1, 2, 3));
        assert!(l.complete(0, 2, Ok(())).is_empty());
        assert!(l.complete(0, 3, Ok(())).is_empty());
        let out = l.complete(0, 1, Ok(()));
        assert_eq!(
            out.iter().map(|r| r.msg.msg.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn a_retry_gets_the_first_ack() {
        let mut l = log();
        add(&mut l, "a");
        assert!(matches!(l.admit("u", "a", None), Admit::InFlight));
        l.complete(0, 1, Ok(()));
        let Admit::Duplicate(ack) = l.admit("u", "a", None) else {
            panic!("not a duplicate")
        };
        assert_eq!(ack.seq, 1);
        assert!(matches!(l.admit("v", "a", None), Admit::New));
    }

    #[test]
    fn reset_abandons_pending_and_ignores_stale_completions() {
        let mut l = log();
        add(&mut l, "a");
        add(&mut l, "b");
        let out = l.complete(0, 1, Err(StoreError::Backend("disk".into())));
        assert!(out[0].result.is_err());
        let abandoned = l.reset(0);
        assert_eq!(abandoned.len(), 1);
        assert_eq!(add(&mut l, "c"), 1);
        assert!(l
            .complete(0, 1, Err(StoreError::Conflict("stale".into())))
            .is_empty());
        assert_eq!(l.complete(1, 1, Ok(())).len(), 1);
    }

    #[test]
    fn the_window_forgets_the_oldest() {
        let mut l = ConvLog::new("c".into(), 0, Vec::new(), 2);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            add(&mut l, id);
            l.complete(0, i as u64 + 1, Ok(()));
        }
        assert!(matches!(l.admit("u", "a", None), Admit::New));
        assert!(matches!(l.admit("u", "c", None), Admit::Duplicate(_)));
    }
}
