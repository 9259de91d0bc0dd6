//! The live connections of this node, by user. Fan-out looks recipients up here and pushes the
//! shared frame into each connection's [`Outbox`]; the map is sharded, so no lock is shared by
//! all sessions.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

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

/// Plans of large fan-outs kept per thread (see [`Hub::deliver_to`]).
const PLANS_KEPT: usize = 4;

/// A large fan-out's connections in write order, kept for the next message to the same member
/// list, while no connection of this node has come or gone. The outboxes are held weakly: a
/// plan must not keep a closed connection's socket open.
struct Plan {
    recipients: Arc<[Id]>,
    /// The hub's state the plan was made in.
    generation: u64,
    outboxes: Vec<Weak<Outbox>>,
}

thread_local! {
    /// The connections of the fan-out in progress, sorted by connection id; kept per thread
    /// so that its storage is reused.
    static ORDER: RefCell<Vec<(u64, Arc<Outbox>)>> = const { RefCell::new(Vec::new()) };
    /// This thread's plans, the most recently used first.
    static PLANS: RefCell<VecDeque<Rc<Plan>>> = const { RefCell::new(VecDeque::new()) };
}

/// Every state of every hub gets its own generation from here, so that no plan made for one
/// hub (or one state) matches another.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed)
}

/// Returns the storage of [`Hub::ordered`] for the next fan-out on this thread.
fn give_back(mut order: Vec<(u64, Arc<Outbox>)>) {
    order.clear();
    ORDER.with(|o| *o.borrow_mut() = order);
}

/// Queues a member's frames of `events`, in the connection's format.
fn push_events(outbox: &Arc<Outbox>, events: &[Arc<SharedEvent>]) -> u64 {
    let format = outbox.event_format();
    outbox.push_all_uncounted(events.iter().map(|e| e.frame(format)))
}

/// Live connections of this node, by user id.
pub struct Hub {
    /// Keyed with the Fx hash: fan-out looks up every recipient of every message here, and with
    /// the default SipHash hashing was the largest cost of a delivery in profiles. Keys are
    /// server-assigned ids, so hash flooding does not apply.
    by_user: DashMap<Id, Entries, FxBuildHasher>,
    /// Changes whenever a connection comes or goes: plans made before are stale.
    generation: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            by_user: DashMap::default(),
            generation: AtomicU64::new(next_generation()),
        }
    }
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
        self.generation.store(next_generation(), Ordering::Release);
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
            self.generation.store(next_generation(), Ordering::Release);
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
            let mut order = self.ordered(recipients);
            for (_, outbox) in order.drain(..) {
                n += push_events(&outbox, events);
            }
            give_back(order);
        }
        metrics::counter!("kaiwa_frames_out_total").increment(n);
        n
    }

    /// Like [`Hub::deliver`], for a member list that is shared from message to message (a
    /// conversation's, until its membership changes). A large fan-out then keeps its plan (the
    /// connections in write order) for the next message, as long as no connection of this node
    /// comes or goes: a message to a stable group of 10,000 skips 10,000 lookups by user id
    /// and the sort.
    pub fn deliver_to(&self, recipients: &Arc<[Id]>, events: &[Arc<SharedEvent>]) -> u64 {
        if recipients.len() < ORDERED_FROM {
            return self.deliver(recipients, events);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let plan = PLANS.with(|plans| {
            let mut plans = plans.borrow_mut();
            let i = plans
                .iter()
                .position(|p| Arc::ptr_eq(&p.recipients, recipients))?;
            let plan = plans.remove(i)?;
            (plan.generation == generation).then(|| {
                plans.push_front(plan.clone());
                plan
            })
        });
        let mut n = 0;
        match plan {
            Some(plan) => {
                for outbox in plan.outboxes.iter().filter_map(Weak::upgrade) {
                    n += push_events(&outbox, events);
                }
            }
            None => {
                let mut order = self.ordered(recipients);
                let outboxes = order
                    .drain(..)
                    .map(|(_, outbox)| {
                        n += push_events(&outbox, events);
                        Arc::downgrade(&outbox)
                    })
                    .collect();
                give_back(order);
                let plan = Rc::new(Plan {
                    recipients: recipients.clone(),
                    generation,
                    outboxes,
                });
                PLANS.with(|plans| {
                    let mut plans = plans.borrow_mut();
                    plans.push_front(plan);
                    plans.truncate(PLANS_KEPT);
                });
            }
        }
        metrics::counter!("kaiwa_frames_out_total").increment(n);
        n
    }

    /// The outboxes of `recipients`' connections in accept order (see [`Hub::deliver`]), in
    /// this thread's reused storage: hand it back with [`give_back`].
    fn ordered(&self, recipients: &[Id]) -> Vec<(u64, Arc<Outbox>)> {
        let mut order = ORDER.with(|o| std::mem::take(&mut *o.borrow_mut()));
        for user in recipients {
            if let Some(conns) = self.by_user.get(user) {
                order.extend(conns.iter().map(|c| (c.conn.id, c.outbox.clone())));
            }
        }
        order.sort_unstable_by_key(|(id, _)| *id);
        order
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

    #[test]
    fn a_plan_serves_a_stable_group_and_follows_its_connections() {
        actix::System::new().block_on(async {
            let hub = Hub::new();
            let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
            let n = ORDERED_FROM as u64;
            let format = Some(crate::protocol::Format::Json);
            let connect = |id: u64, user: String| {
                let wire = LogWire {
                    conn: id,
                    log: log.clone(),
                };
                let conn = Arc::new(Conn::new(id, user, 8, format, Some(Box::new(wire))));
                hub.register(conn.clone());
                conn
            };
            let mut conns: Vec<_> = (1..=n).map(|id| connect(id, format!("u{id:04}"))).collect();
            let recipients: Arc<[Id]> = conns.iter().map(|c| c.user.clone()).collect();
            let ev = [Arc::new(SharedEvent::new(
                crate::protocol::Event::MemberAdded {
                    conv: "c".into(),
                    user: "v".into(),
                },
            ))];
            let end_turn = || async {
                for _ in 0..10 {
                    actix::clock::sleep(std::time::Duration::from_millis(1)).await;
                }
            };
            assert_eq!(hub.deliver_to(&recipients, &ev), n);
            end_turn().await;
            assert_eq!(
                hub.deliver_to(&recipients, &ev),
                n,
                "the plan reaches everyone"
            );
            end_turn().await;
            // A member's second connection gets the next message.
            let _second = connect(n + 1, "u0001".into());
            assert_eq!(hub.deliver_to(&recipients, &ev), n + 1);
            end_turn().await;
            // A connection that left is not written to, and no plan keeps its outbox.
            let gone = conns.remove(0);
            hub.unregister(&gone);
            let outbox = Arc::downgrade(&gone.outbox);
            drop(gone);
            assert_eq!(hub.deliver_to(&recipients, &ev), n);
            end_turn().await;
            assert!(outbox.upgrade().is_none());
            let written = log.lock().clone();
            assert_eq!(written.len() as u64, n + n + (n + 1) + n);
            assert_eq!(written.iter().filter(|c| **c == 1).count(), 3);
            assert_eq!(written.iter().filter(|c| **c == n + 1).count(), 2);
        });
    }
}
