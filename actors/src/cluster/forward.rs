//! Forwarding: a request for an entity owned by another node travels there as the client sent
//! it; the owner runs it against its activation and answers through a [`Waiter`] whose target
//! is the connection on the first node, and the reply travels back through that node's inbox.
//! A forwarded request that gets no reply in time is answered `internal` so that the client
//! retries, rather than left hanging.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Cluster;
use crate::bus::redis::Wire;
use crate::protocol::codec::decode_request;
use crate::protocol::{Format, Id, KaiwaError, OutFrame};
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
        self.send(self.inbox(owner), &wire, Some(waiter));
    }

    /// Answers a forwarded request `internal` unless it was answered already.
    pub(crate) fn fail_forward(&self, w: &Waiter, why: &str) {
        let ReplyTo::Local(conn) = &w.to else { return };
        if self.forwarded.remove(&(conn.id, w.re)).is_some() {
            w.err(&KaiwaError::internal(why));
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
            data: frame.data,
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
            c.outbox.push(OutFrame { data, binary });
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
