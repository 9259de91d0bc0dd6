//! The live connections of this node, by user. Fan-out looks recipients up here and pushes the
//! shared frame into each connection's [`Outbox`]; the map is sharded, so no lock is shared by
//! all sessions.

use std::sync::Arc;

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;
use smallvec::SmallVec;

use crate::outbox::{Outbox, Wire};
use crate::protocol::{Format, Id, SharedEvent};

/// One live WebSocket connection as the engine sees it.
pub struct Conn {
    /// Unique per node, to tell a user's connections apart.
    pub id: u64,
    pub user: Id,
    pub outbox: Arc<Outbox>,
}

impl Conn {
    /// A connection writing to `wire`; `format` is the encoding asked for at connect time,
    /// if any.
    pub fn new(
        id: u64,
        user: Id,
        outbox_limit: usize,
        format: Option<Format>,
        wire: Option<Box<dyn Wire>>,
    ) -> Self {
        Conn {
            id,
            user,
            outbox: Outbox::new(outbox_limit, format, wire),
        }
    }

    /// The encoding of pushed events: the one chosen at connect, else that of the client's
    /// first frame, else JSON.
    pub fn event_format(&self) -> Format {
        self.outbox.event_format()
    }

    /// Records the encoding of a frame the client sent; only the first one counts.
    pub fn saw_client_format(&self, f: Format) {
        self.outbox.saw_client_format(f);
    }
}

/// A connection as the hub keeps it: its outbox beside it, so that a fan-out reaches the
/// queue without a stop at the connection record (a cache miss per member with 10,000).
struct Entry {
    conn: Arc<Conn>,
    outbox: Arc<Outbox>,
}

/// A user's connections: almost always one, kept inline in the map's slot (a separate vector
/// was one more cache miss per member of a fan-out).
type Entries = SmallVec<[Entry; 1]>;

/// Live connections of this node, by user id.
#[derive(Default)]
pub struct Hub {
    /// Keyed with the Fx hash: fan-out looks up every recipient of every message here, and with
    /// the default SipHash hashing was the largest cost of a delivery in profiles. Keys are
    /// server-assigned ids, so hash flooding does not apply.
    by_user: DashMap<Id, Entries, FxBuildHasher>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection.
    pub fn register(&self, conn: Arc<Conn>) {
        self.by_user
            .entry(conn.user.clone())
            .or_default()
            .push(Entry {
                outbox: conn.outbox.clone(),
                conn,
            });
        metrics::gauge!("kaiwa_connections").increment(1.0);
    }

    /// Removes a connection (no-op if it is gone already).
    pub fn unregister(&self, conn: &Conn) {
        let mut removed = false;
        self.by_user.remove_if_mut(&conn.user, |_, v| {
            let before = v.len();
            v.retain(|e| e.conn.id != conn.id);
            removed = v.len() != before;
            v.is_empty()
        });
        if removed {
            metrics::gauge!("kaiwa_connections").decrement(1.0);
        }
    }

    /// Pushes the events, in order, to every connection of every recipient on this node;
    /// returns how many frames it queued. Each frame is encoded once per format and shared (a
    /// reference count, no copy of the payload per recipient). Several events go member by
    /// member: all of a member's frames are queued before the next member's, so that the
    /// outbox, which writes a fan-out in batches as it goes, sends each member one write.
    pub fn deliver(&self, recipients: &[Id], events: &[Arc<SharedEvent>]) -> u64 {
        let mut n = 0;
        for user in recipients {
            if let Some(conns) = self.by_user.get(user) {
                for c in conns.iter() {
                    let format = c.outbox.event_format();
                    n += c
                        .outbox
                        .push_all_uncounted(events.iter().map(|e| e.frame(format)));
                }
            }
        }
        metrics::counter!("kaiwa_frames_out_total").increment(n);
        n
    }

    /// The live connections of one user.
    pub fn conns_of(&self, user: &str) -> Vec<Arc<Conn>> {
        self.by_user
            .get(user)
            .map(|v| v.iter().map(|e| e.conn.clone()).collect())
            .unwrap_or_default()
    }

    /// True when the user has at least one connection here.
    pub fn is_online(&self, user: &str) -> bool {
        self.by_user.contains_key(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_deliver_unregister() {
        let hub = Hub::new();
        let c = Arc::new(Conn::new(1, "u".into(), 8, None, None));
        hub.register(c.clone());
        let ev = [Arc::new(SharedEvent::new(
            crate::protocol::Event::MemberAdded {
                conv: "c".into(),
                user: "v".into(),
            },
        ))];
        assert_eq!(hub.deliver(&["u".into(), "x".into()], &ev), 1);
        assert_eq!(c.outbox.len(), 1);
        hub.unregister(&c);
        assert!(!hub.is_online("u"));
        assert_eq!(hub.deliver(&["u".into()], &ev), 0);
    }
}
