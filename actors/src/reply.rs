//! Where a reply goes: the connection and request id that asked. Actors answer straight into
//! the connection's outbox, so a request never needs a future held open across actors. In
//! cluster mode the connection may live on another node: the reply is then published to that
//! node's inbox, which pushes it into the connection's outbox there.

use std::sync::Arc;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::hub::Conn;
use crate::protocol::codec::{reply_err, reply_ok};
use crate::protocol::{Format, Id, KaiwaError, OutFrame};

/// The connection a reply is for.
#[derive(Clone)]
pub enum ReplyTo {
    /// A connection of this node.
    Local(Arc<Conn>),
    /// Connection `conn` of `user` on another node, which forwarded the request here.
    Remote {
        cluster: Arc<Cluster>,
        node: String,
        user: Id,
        conn: u64,
    },
}

/// The requester of one request.
#[derive(Clone)]
pub struct Waiter {
    pub to: ReplyTo,
    pub re: u64,
    pub format: Format,
}

impl Waiter {
    /// The waiter of a request from a connection of this node.
    pub fn local(conn: Arc<Conn>, re: u64, format: Format) -> Self {
        Waiter {
            to: ReplyTo::Local(conn),
            re,
            format,
        }
    }

    fn push(&self, frame: OutFrame) {
        match &self.to {
            ReplyTo::Local(c) => {
                c.outbox.push(frame);
            }
            ReplyTo::Remote {
                cluster,
                node,
                user,
                conn,
            } => cluster.reply(node, user, *conn, self.re, frame),
        }
    }

    /// Answers `{"re", "ok"}`.
    pub fn ok<T: Serialize>(&self, value: &T) {
        self.push(reply_ok(self.format, self.re, value));
    }

    /// Answers `{"re", "err"}` and counts the error by code.
    pub fn err(&self, e: &KaiwaError) {
        metrics::counter!("kaiwa_errors_total", "code" => e.code.as_str()).increment(1);
        self.push(reply_err(self.format, Some(self.re), e));
    }

    /// Answers with either.
    pub fn reply<T: Serialize>(&self, r: &Result<T, KaiwaError>) {
        match r {
            Ok(v) => self.ok(v),
            Err(e) => self.err(e),
        }
    }
}
