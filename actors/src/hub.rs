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

/// Fan-outs to this many members or more are written in accept order (see [`Hub::deliver`]).
const ORDERED_FROM: usize = 64;

thread_local! {
    /// The connections of the fan-out in progress, sorted by connection id; kept per thread
    /// so that its storage is reused.
    static ORDER: std::cell::RefCell<Vec<(u64, Arc<Outbox>)>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

/// Queues a member's frames of `events`, in the connection's format.
fn push_events(outbox: &Arc<Outbox>, events: &[Arc<SharedEvent>]) -> u64 {
    let format = outbox.event_format();
    outbox.push_all_uncounted(events.iter().map(|e| e.frame(format)))
}

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
    ///
    /// A large fan-out goes in the order the connections were accepted, not in the order of
    /// the member list (user ids, random): the kernel allocated the sockets' memory in accept
    /// order, and writing them in that order costs it a fifth less per write (4.1 against 5.1
    /// µs on this machine's loopback with 9,500 sockets: `floor` written in either order).
    pub fn deliver(&self, recipients: &[Id], events: &[Arc<SharedEvent>]) -> u64 {
        let mut n = 0;
        if recipients.len() < ORDERED_FROM {
            for user in recipients {
                if let Some(conns) = self.by_user.get(user) {
                    for c in conns.iter() {
                        n += push_events(&c.outbox, events);
                    }
                }
            }
        } else {
            ORDER.with(|order| {
                let mut order = order.borrow_mut();
                for user in recipients {
                    if let Some(conns) = self.by_user.get(user) {
                        order.extend(conns.iter().map(|c| (c.conn.id, c.outbox.clone())));
                    }
                }
                order.sort_unstable_by_key(|(id, _)| *id);
                for (_, outbox) in order.drain(..) {
                    n += push_events(&outbox, events);
                }
            });
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

    /// Records which connection each write went to.
    struct LogWire {
        conn: u64,
        log: Arc<parking_lot::Mutex<Vec<u64>>>,
    }

    impl Wire for LogWire {
        fn try_write(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
            self.log.lock().push(self.conn);
            Ok(bufs.iter().map(|b| b.len()).sum())
        }
        fn shutdown(&self) {}
    }

    #[test]
    fn a_large_fan_out_goes_in_accept_order() {
        actix::System::new().block_on(async {
            let hub = Hub::new();
            let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
            let n = ORDERED_FROM as u64 + 36;
            // Connection ids grow with accept order; user ids sort the other way round.
            let mut recipients = Vec::new();
            for id in 1..=n {
                let user = format!("u{:04}", n - id);
                let wire = LogWire {
                    conn: id,
                    log: log.clone(),
                };
                let format = Some(crate::protocol::Format::Json);
                hub.register(Arc::new(Conn::new(
                    id,
                    user.clone(),
                    8,
                    format,
                    Some(Box::new(wire)),
                )));
                recipients.push(user);
            }
            recipients.sort();
            let ev = [Arc::new(SharedEvent::new(
                crate::protocol::Event::MemberAdded {
                    conv: "c".into(),
                    user: "v".into(),
                },
            ))];
            assert_eq!(hub.deliver(&recipients, &ev), n);
            for _ in 0..10 {
                actix::clock::sleep(std::time::Duration::from_millis(1)).await;
            }
            let written = log.lock().clone();
            assert_eq!(written, (1..=n).collect::<Vec<_>>());
            // A small one goes in the member list's order.
            log.lock().clear();
            assert_eq!(hub.deliver(&recipients[..3], &ev), 3);
            for _ in 0..10 {
                actix::clock::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert_eq!(*log.lock(), vec![n, n - 1, n - 2]);
        });
    }
}
#[cfg(test)]
mod size_probe {
    #[test]
    fn sizes() {
        eprintln!("PROBE outbox={} conn={} entries={} entry={}", std::mem::size_of::<crate::outbox::Outbox>(), std::mem::size_of::<super::Conn>(), std::mem::size_of::<super::Entries>(), std::mem::size_of::<super::Entry>());
    }
}
