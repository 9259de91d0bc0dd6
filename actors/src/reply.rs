//! Where a reply goes: the connection and request id that asked. Actors answer straight into
//! the connection's outbox, so a request never needs a future held open across actors.

use std::sync::Arc;

use serde::Serialize;

use crate::hub::Conn;
use crate::protocol::codec::{reply_err, reply_ok};
use crate::protocol::{Format, KaiwaError};

/// The requester of one request.
#[derive(Clone)]
pub struct Waiter {
    pub conn: Arc<Conn>,
    pub re: u64,
    pub format: Format,
}

impl Waiter {
    /// Answers `{"re", "ok"}`.
    pub fn ok<T: Serialize>(&self, value: &T) {
        self.conn.outbox.push(reply_ok(self.format, self.re, value));
    }

    /// Answers `{"re", "err"}` and counts the error by code.
    pub fn err(&self, e: &KaiwaError) {
        metrics::counter!("kaiwa_errors_total", "code" => e.code.as_str()).increment(1);
        self.conn
            .outbox
            .push(reply_err(self.format, Some(self.re), e));
    }

    /// Answers with either.
    pub fn reply<T: Serialize>(&self, r: &Result<T, KaiwaError>) {
        match r {
            Ok(v) => self.ok(v),
            Err(e) => self.err(e),
        }
    }
}
