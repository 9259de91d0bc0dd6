//! The write side of one conversation log: seq assignment, idempotency by `client_msg_id`, and
//! the in-order release of messages once the store has made them durable.
//!
//! The owning actor is the log's single writer. It assigns the next seq at once and hands the
//! message to the store; acks and fan-out wait until the store reports the write durable, and
//! are released strictly in seq order even when completions arrive out of order.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock};

use rustc_hash::FxBuildHasher;

use tokio::sync::oneshot;

use crate::protocol::{Ack, Id, KResult};
use crate::reply::Waiter;
use crate::store::{StoreError, StoredMessage};

/// An in-process requester of an append (e.g. a parent group copying an action down): told the
/// ack once the message is durable.
pub type Notify = oneshot::Sender<KResult<Ack>>;

/// A message handed to the store and not yet released.
struct Pending {
    seq: u64,
    msg: StoredMessage,
    recipients: Arc<[Id]>,
    waiters: Vec<Waiter>,
    notify: Vec<Notify>,
    result: Option<Result<(), StoreError>>,
}

/// A message whose write has finished, in seq order, ready for ack and fan-out.
pub struct Released {
    pub msg: StoredMessage,
    pub recipients: Arc<[Id]>,
    pub waiters: Vec<Waiter>,
    pub notify: Vec<Notify>,
    pub result: Result<(), StoreError>,
}

/// What the log says about a `(sender, client_msg_id)` pair.
pub enum Admit {
    /// Already durable: answer with the first ack, store nothing.
    Duplicate(Ack),
    /// Still being written (this seq): attach the requester with [`ConvLog::attach`].
    InFlight(u64),
    /// Never seen: append it.
    New,
}

/// A `(sender, client_msg_id)` pair as the log remembers it: 128 bits of a hash keyed with
/// secrets drawn at process start. A busy conversation remembers its last `window` (10,000 by
/// default) pairs; keeping the two strings, twice (map and eviction order), took 358 bytes per
/// pair (3.6 MB per conversation, counted by an allocator probe) and two string allocations per
/// send to look one up. With this key: 164 bytes per pair, most of it the first ack, and no
/// allocation. Two different pairs share a key with probability 2^-128, and the hash keys are
/// secret, so a client cannot make its pair collide with another's.
type PairKey = u128;

fn pair_key(from: &str, client_msg_id: &str) -> PairKey {
    static KEYS: OnceLock<(RandomState, RandomState)> = OnceLock::new();
    let (a, b) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
    let pair = (from, client_msg_id);
    (u128::from(a.hash_one(pair)) << 64) | u128::from(b.hash_one(pair))
}

/// The write side of one log.
pub struct ConvLog {
    pub log: Id,
    next_seq: u64,
    /// Bumped on every reset, so completions of writes issued before it are recognised.
    epoch: u64,
    pending: VecDeque<Pending>,
    in_flight: HashMap<PairKey, u64, FxBuildHasher>,
    /// The idempotency window: the first ack of each remembered pair, and the pairs oldest
    /// first. Keys are already hashes: the Fx hash just spreads them over the table.
    recent: HashMap<PairKey, Ack, FxBuildHasher>,
    recent_order: VecDeque<PairKey>,
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
            in_flight: HashMap::default(),
            recent: HashMap::default(),
            recent_order: VecDeque::new(),
            window: window.max(1),
        };
        for m in tail {
            l.remember(&m);
        }
        l
    }

    /// True when no message of this log awaits the store.
    pub fn is_quiet(&self) -> bool {
        self.pending.is_empty()
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
        let key = pair_key(&m.msg.from, &m.client_msg_id);
        let ack = Ack {
            seq: m.msg.seq,
            msg_id: m.msg.msg_id.clone(),
            ts: m.msg.ts,
        };
        if self.recent.insert(key, ack).is_none() {
            self.recent_order.push_back(key);
            while self.recent_order.len() > self.window {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    /// Checks a send against the idempotency window and the writes in flight.
    pub fn admit(&self, from: &str, client_msg_id: &str) -> Admit {
        let key = pair_key(from, client_msg_id);
        if let Some(ack) = self.recent.get(&key) {
            return Admit::Duplicate(ack.clone());
        }
        match self.in_flight.get(&key) {
            Some(seq) => Admit::InFlight(*seq),
            None => Admit::New,
        }
    }

    /// Adds requesters to a message still being written; they get the same ack.
    pub fn attach(&mut self, seq: u64, waiter: Option<Waiter>, notify: Option<Notify>) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.seq == seq) {
            p.waiters.extend(waiter);
            p.notify.extend(notify);
        }
    }

    /// The seq the next appended message gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Records a new message as pending; its `seq` must be [`ConvLog::next_seq`]. The caller
    /// hands `msg` to the store and reports back through [`ConvLog::complete`].
    pub fn append(
        &mut self,
        msg: StoredMessage,
        recipients: Arc<[Id]>,
        waiter: Option<Waiter>,
        notify: Option<Notify>,
    ) {
        let seq = msg.msg.seq;
        debug_assert_eq!(seq, self.next_seq);
        self.next_seq = seq + 1;
        self.in_flight
            .insert(pair_key(&msg.msg.from, &msg.client_msg_id), seq);
        self.pending.push_back(Pending {
            seq,
            msg,
            recipients,
            waiters: waiter.into_iter().collect(),
            notify: notify.into_iter().collect(),
            result: None,
        });
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
            self.in_flight
                .remove(&pair_key(&p.msg.msg.from, &p.msg.client_msg_id));
            let result = p.result.unwrap_or(Ok(()));
            if result.is_ok() {
                self.remember(&p.msg);
            }
            out.push(Released {
                msg: p.msg,
                recipients: p.recipients,
                waiters: p.waiters,
                notify: p.notify,
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
                notify: p.notify,
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
    use crate::protocol::{Body, Message};

    fn log() -> ConvLog {
        ConvLog::new("c".into(), 0, Vec::new(), 100)
    }

    fn add(l: &mut ConvLog, cmid: &str) -> u64 {
        let seq = l.next_seq();
        let msg = StoredMessage {
            msg: Message {
                conv: "c".into(),
                seq,
                msg_id: format!("m{seq}"),
                from: "u".into(),
                ts: 0,
                body: Body::Text("x".into()),
                thread: None,
                origin: None,
            },
            client_msg_id: cmid.into(),
        };
        l.append(msg, Arc::from(vec![]), None, None);
        seq
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
        assert!(matches!(l.admit("u", "a"), Admit::InFlight(1)));
        l.complete(0, 1, Ok(()));
        let Admit::Duplicate(ack) = l.admit("u", "a") else {
            panic!("not a duplicate")
        };
        assert_eq!(ack.seq, 1);
        assert!(matches!(l.admit("v", "a"), Admit::New));
    }

    #[test]
    fn pairs_are_told_apart_where_their_strings_would_join_alike() {
        assert_ne!(pair_key("ab", "c"), pair_key("a", "bc"));
        assert_ne!(pair_key("u", "a"), pair_key("a", "u"));
        assert_eq!(pair_key("u", "a"), pair_key("u", "a"));
        let mut l = log();
        add(&mut l, "a");
        l.complete(0, 1, Ok(()));
        assert!(matches!(l.admit("u", "a"), Admit::Duplicate(_)));
        assert!(matches!(l.admit("ua", ""), Admit::New));
        assert!(matches!(l.admit("", "ua"), Admit::New));
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
        assert!(matches!(l.admit("u", "a"), Admit::New));
        assert!(matches!(l.admit("u", "c"), Admit::Duplicate(_)));
    }
}
