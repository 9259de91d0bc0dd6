//! Cluster mode: nodes that share one Redis as their store and bus.
//!
//! Each idea has its own file:
//!
//! - [`membership`]: every node heartbeats into the sorted set `nodes` and reads back the live
//!   ones; a node that stops heartbeating drops out after [`NODE_TTL`].
//! - [`placement`]: each entity (user, org, chat, group) has one activation, on the live node that rendezvous
//!   hashing of its id picks ([`Cluster::owner`]).
//! - [`presence`]: every node keeps a replica of which node hosts a session of which user, so
//!   that an event crosses to a node only when a recipient is there.
//! - [`forward`]: a request for an entity owned elsewhere travels to the owner as the client
//!   sent it, and the owner's reply comes back to the client's connection; admin calls to
//!   user and org actors travel the same way and their answer comes back to the caller.
//! - The Redis pub/sub transport all of them use is [`crate::bus::redis`].
//!
//! Failures: pub/sub may drop messages (sync by seq repairs it); every Redis call has a
//! timeout; the subscriber reconnects with backoff and reloads presence; `/healthz` reports
//! degraded while Redis is unreachable.

pub mod forward;
pub mod membership;
pub mod placement;
pub mod presence;
pub mod redis_conn;
pub mod test_redis;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use dashmap::DashMap;
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::bus::redis::Job;
use crate::engine::Engine;
use crate::entity_call::EntityAnswer;
use crate::hub::Hub;
use crate::protocol::{Id, KResult};
use crate::reply::Waiter;
use redis_conn::RedisConn;

pub use forward::FORWARD_TIMEOUT;
pub use membership::{HEARTBEAT, NODE_TTL};
pub use placement::pick_owner;

/// This node's part of the cluster: its view of the other nodes and the Redis links. The
/// state lives here; each concern adds its methods in its own file.
pub struct Cluster {
    /// This node's id (`--node-id`).
    pub node: String,
    pub(crate) redis: Arc<RedisConn>,
    pub(crate) hub: Arc<Hub>,
    engine: OnceLock<Weak<Engine>>,
    /// Live node ids, sorted; always holds this node.
    pub(crate) live: RwLock<Arc<Vec<String>>>,
    /// Other nodes hosting a session of each user.
    pub(crate) presence: DashMap<Id, HashSet<String>>,
    /// Users with a session on this node, as announced.
    pub(crate) local_users: DashMap<Id, ()>,
    /// Forwarded requests still waiting for their reply, by (connection, request id).
    pub(crate) forwarded: DashMap<(u64, u64), (Instant, Waiter)>,
    /// Admin calls sent to owner nodes, waiting for their answer, by call id.
    pub(crate) calls: DashMap<u64, oneshot::Sender<KResult<EntityAnswer>>>,
    pub(crate) next_call: AtomicU64,
    pub(crate) heartbeat_ok: AtomicBool,
    pub(crate) subscribed: AtomicBool,
    /// Woken when Redis seems gone, so the subscriber reconnects at once.
    pub(crate) resubscribe: Notify,
    pub(crate) jobs: mpsc::UnboundedSender<Job>,
    jobs_rx: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    pub(crate) deliveries: metrics::Counter,
    pub(crate) bus_out: metrics::Counter,
    pub(crate) bus_in: metrics::Counter,
}

impl Cluster {
    /// This node's cluster part; nothing runs until [`Cluster::start`].
    pub fn new(node: &str, redis: Arc<RedisConn>, hub: Arc<Hub>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Cluster {
            node: node.to_string(),
            redis,
            hub,
            engine: OnceLock::new(),
            live: RwLock::new(Arc::new(vec![node.to_string()])),
            presence: DashMap::new(),
            local_users: DashMap::new(),
            forwarded: DashMap::new(),
            calls: DashMap::new(),
            next_call: AtomicU64::new(1),
            heartbeat_ok: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            resubscribe: Notify::new(),
            jobs: tx,
            jobs_rx: parking_lot::Mutex::new(Some(rx)),
            deliveries: metrics::counter!("kaiwa_deliveries_total"),
            bus_out: metrics::counter!("kaiwa_bus_messages_out_total"),
            bus_in: metrics::counter!("kaiwa_bus_messages_in_total"),
        })
    }

    /// Joins the cluster: links the engine (forwarded requests run on it) and starts the
    /// heartbeat, the subscriber and the publisher on the Redis runtime.
    pub fn start(self: &Arc<Self>, engine: &Arc<Engine>) {
        let _ = self.engine.set(Arc::downgrade(engine));
        engine.set_cluster(self.clone());
        let Some(rx) = self.jobs_rx.lock().take() else {
            return;
        };
        self.redis.spawn(self.clone().publisher(rx));
        self.redis.spawn(self.clone().heartbeat());
        self.redis.spawn(self.clone().subscriber());
        self.redis.spawn(self.clone().expire_forwards());
    }

    /// The engine of this node, while it runs.
    pub(crate) fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.get().and_then(Weak::upgrade)
    }

    /// True while Redis answers heartbeats and the subscriber is connected.
    pub fn healthy(&self) -> bool {
        self.heartbeat_ok.load(Ordering::Relaxed) && self.subscribed.load(Ordering::Relaxed)
    }
}
