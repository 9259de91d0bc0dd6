//! Forwarding: a request for an entity owned by another node travels there as the client sent
//! it; the owner runs it against its activation and answers through a [`Waiter`] whose target
//! is the connection on the first node, and the reply travels back through that node's inbox.
//! Admin calls to user and org actors ([`EntityCall`]) travel the same way, and their answer
//! comes back to the awaiting caller. A forwarded request that gets no reply in time is answered `internal` so that the client
//! retries, rather than left hanging.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Cluster;
use crate::bus::redis::{Pending, Wire};
use crate::entity_call::{EntityAnswer, EntityCall};
use crate::protocol::codec::decode_request;
use crate::protocol::{Format, Id, KResult, KaiwaError, OutFrame};
use crate::reply::{ReplyTo, Waiter};

/// How long a forwarded request waits for the owner's reply before it is answered `internal`
/// (the owner may have died with it).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

impl Cluster {
    /// Hands a client's request to the node that owns its entity; the reply comes back to
    /// `waiter`'s connection through this node's inbox.
    pub fn forward(&self, owner: &str, waiter: Waiter, binary: bool, frame: Bytes) {
        let ReplyTo::Local(conn) = &waiter.to else {
            return waiter.err(&KaiwaError::internal("request already forwarded"));
        };
        metrics::counter!("kaiwa_remote_sends_total", "kind" => "request").increment(1);
        let wire = Wire::Request {
            node: self.node.clone(),
            user: conn.user.clone(),
            conn: conn.id,
            binary,
            frame,
        };
        self.forwarded.insert(
            (conn.id, waiter.re),
            (Instant::now() + FORWARD_TIMEOUT, waiter.clone()),
        );
        self.send(self.inbox(owner), &wire, Some(Pending::Request(waiter)));
    }

    /// Answers a request sent to another node `internal` unless it was answered already.
    pub(crate) fn fail_pending(&self, p: &Pending, why: &str) {
        match p {
            Pending::Request(w) => {
                let ReplyTo::Local(conn) = &w.to else { return };
                if self.forwarded.remove(&(conn.id, w.re)).is_some() {
                    w.err(&KaiwaError::internal(why));
                }
            }
            Pending::Call(id) => {
                if let Some((_, tx)) = self.calls.remove(id) {
                    let _ = tx.send(Err(KaiwaError::internal(why)));
                }
            }
        }
    }

    /// Sends an admin call to `owner`, the node that owns its entity, and waits for the
    /// answer; `internal` when none comes within [`FORWARD_TIMEOUT`].
    pub async fn call_remote(&self, owner: &str, call: EntityCall) -> KResult<EntityAnswer> {
        metrics::counter!("kaiwa_remote_sends_total", "kind" => "request").increment(1);
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.calls.insert(id, tx);
        let wire = Wire::Call {
            node: self.node.clone(),
            id,
            call,
        };
        self.send(self.inbox(owner), &wire, Some(Pending::Call(id)));
        match tokio::time::timeout(FORWARD_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            _ => {
                self.calls.remove(&id);
                Err(KaiwaError::internal(
                    "no answer from the node that owns this entity; retry",
                ))
            }
        }
    }

    /// An admin call another node sent here: runs it on this node's activation and sends
    /// the answer back.
    pub(crate) fn on_call(&self, node: String, id: u64, call: EntityCall) {
        let Some(engine) = self.engine() else { return };
        let Some(cluster) = engine.cluster().cloned() else {
            return;
        };
        self.redis.spawn(async move {
            let answer = crate::entity_call::run_here(&engine, call).await;
            metrics::counter!("kaiwa_remote_sends_total", "kind" => "reply").increment(1);
            let wire = Wire::Answer { id, answer };
            cluster.send(cluster.inbox(&node), &wire, None);
        });
    }

    /// The owner's answer to an admin call of this node.
    pub(crate) fn on_answer(&self, id: u64, answer: KResult<EntityAnswer>) {
        if let Some((_, tx)) = self.calls.remove(&id) {
            let _ = tx.send(answer);
        }
    }

    /// Answers `internal` to forwarded requests whose reply is overdue.
    pub(crate) async fn expire_forwards(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let now = Instant::now();
            let mut late = Vec::new();
            self.forwarded.retain(|_, (deadline, w)| {
                if *deadline <= now {
                    late.push(w.clone());
                    false
                } else {
                    true
                }
            });
            for w in late {
                w.err(&KaiwaError::internal(
                    "no answer from the node that owns this conversation; retry",
                ));
            }
        }
    }

    /// Sends the reply to request `re` back to the connection's node.
    pub fn reply(&self, node: &str, user: &str, conn: u64, re: u64, frame: OutFrame) {
        metrics::counter!("kaiwa_remote_sends_total", "kind" => "reply").increment(1);
        let wire = Wire::Reply {
            user: user.to_string(),
            conn,
            re,
            binary: frame.binary,
            data: frame.payload(),
        };
        self.send(self.inbox(node), &wire, None);
    }

    /// A reply from the owner: into the connection that asked, unless it timed out already.
    pub(crate) fn on_reply(&self, user: Id, conn: u64, re: u64, binary: bool, data: Bytes) {
        // A reply after the request timed out was answered already.
        if self.forwarded.remove(&(conn, re)).is_none() {
            return;
        }
        if let Some(c) = self.hub.conns_of(&user).into_iter().find(|c| c.id == conn) {
            c.outbox.push(OutFrame::new(&data, binary));
        }
    }

    /// A request another node forwarded here: runs it on this node's engine, with a waiter
    /// that answers back to that node.
    pub(crate) fn on_request(&self, node: String, user: Id, conn: u64, binary: bool, frame: Bytes) {
        let Some(engine) = self.engine() else { return };
        let Some(cluster) = engine.cluster().cloned() else {
            return;
        };
        let format = if binary {
            Format::MsgPack
        } else {
            Format::Json
        };
        let waiter = |re| Waiter {
            to: ReplyTo::Remote {
                cluster: cluster.clone(),
                node: node.clone(),
                user: user.clone(),
                conn,
            },
            re,
            format,
        };
        match decode_request(format, &frame) {
            Ok(req) => crate::session::route(&engine, user.clone(), req.op, waiter(req.id)),
            Err((Some(re), e)) => waiter(re).err(&e),
            Err((None, _)) => {}
        }
    }
}
