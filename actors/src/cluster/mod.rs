//! Cluster mode: nodes that share one Redis as their store and bus.
//!
//! - **Membership**: every node heartbeats into the sorted set `nodes` (score = expiry in ms)
//!   and reads back the live ones; a node that stops heartbeating drops out after [`NODE_TTL`].
//! - **Placement**: each conversation (chat or group) has one activation, on the live node
//!   that rendezvous hashing of its id picks ([`Cluster::owner`]). A session whose request
//!   addresses a conversation owned elsewhere forwards the raw frame to the owner's inbox
//!   channel; the owner answers through a [`crate::reply::Waiter`] whose target is the
//!   connection on the first node, and the reply travels back through that node's inbox.
//! - **Fan-out**: every node keeps a replica of the presence map (which node hosts a session
//!   of which user), fed by the `presence` channel and reloaded from the `presence:<node>`
//!   sets. A conversation delivers locally, then publishes each event once per other node that
//!   hosts a recipient, to that node's inbox, naming only that node's recipients.
//! - **Failures**: pub/sub may drop messages (sync by seq repairs it); every Redis call has a
//!   timeout; the subscriber reconnects with backoff and reloads presence; `/healthz` reports
//!   degraded while Redis is unreachable.

pub mod redis_conn;
#[cfg(test)]
pub mod test_redis;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use deadpool_redis::redis::{self, AsyncCommands};
use futures_util::StreamExt;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Notify};

use crate::bus::{Bus, Envelope};
use crate::engine::Engine;
use crate::hub::Hub;
use crate::protocol::codec::decode_request;
use crate::protocol::{Event, Format, Id, KaiwaError, OutFrame, SharedEvent};
use crate::reply::{ReplyTo, Waiter};
use crate::store::redis::release_leases;
use redis_conn::RedisConn;

/// How often a node heartbeats and refreshes its view of the live nodes.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a heartbeat keeps a node alive; a node silent for longer is taken as gone.
pub const NODE_TTL: Duration = Duration::from_millis(3000);
/// Most jobs the publisher sends in one pipeline.
const PUBLISH_BATCH: usize = 512;
/// How long a forwarded request waits for the owner's reply before it is answered `internal`
/// (the owner may have died with it).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// What travels between nodes, MessagePack-encoded (rmp-serde, named fields).
#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    /// An event for these users, all of whom have a session on the receiving node.
    Deliver { users: Vec<Id>, event: Event },
    /// A client request for an entity the receiving node owns, as the client sent it.
    Request {
        node: String,
        user: Id,
        conn: u64,
        binary: bool,
        frame: Bytes,
    },
    /// The encoded reply to request `re` forwarded by connection `conn` of the receiving node.
    Reply {
        user: Id,
        conn: u64,
        re: u64,
        binary: bool,
        data: Bytes,
    },
    /// A user's sessions on `node` started (`online`) or all ended.
    Presence {
        node: String,
        user: Id,
        online: bool,
    },
}

/// Work for the publisher task, sent in order.
enum Job {
    Publish {
        channel: String,
        payload: Vec<u8>,
        /// Told when nobody received the message (the owner is gone) or Redis failed.
        on_fail: Option<Waiter>,
    },
    /// Re-checks whether the user still has a session here and announces the truth.
    Presence(Id),
}

/// This node's part of the cluster: its view of the other nodes and the Redis links.
pub struct Cluster {
    /// This node's id (`--node-id`).
    pub node: String,
    redis: Arc<RedisConn>,
    hub: Arc<Hub>,
    engine: OnceLock<Weak<Engine>>,
    /// Live node ids, sorted; always holds this node.
    live: RwLock<Arc<Vec<String>>>,
    /// Other nodes hosting a session of each user.
    presence: DashMap<Id, HashSet<String>>,
    /// Users with a session on this node, as announced.
    local_users: DashMap<Id, ()>,
    /// Forwarded requests still waiting for their reply, by (connection, request id).
    forwarded: DashMap<(u64, u64), (Instant, Waiter)>,
    heartbeat_ok: AtomicBool,
    subscribed: AtomicBool,
    /// Woken when Redis seems gone, so the subscriber reconnects at once.
    resubscribe: Notify,
    jobs: mpsc::UnboundedSender<Job>,
    jobs_rx: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    deliveries: metrics::Counter,
    bus_out: metrics::Counter,
    bus_in: metrics::Counter,
}

/// Rendezvous weight of `entity` on `node`.
fn weight(node: &str, entity: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(entity.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The node among `nodes` that rendezvous hashing picks for `entity`.
pub fn pick_owner<'a>(nodes: &'a [String], entity: &str) -> Option<&'a String> {
    nodes.iter().max_by_key(|n| (weight(n, entity), n.as_str()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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

    /// Answers `internal` to forwarded requests whose reply is overdue.
    async fn expire_forwards(self: Arc<Self>) {
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

    fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.get().and_then(Weak::upgrade)
    }

    /// True while Redis answers heartbeats and the subscriber is connected.
    pub fn healthy(&self) -> bool {
        self.heartbeat_ok.load(Ordering::Relaxed) && self.subscribed.load(Ordering::Relaxed)
    }

    /// The live nodes as this node sees them.
    pub fn live_nodes(&self) -> Arc<Vec<String>> {
        self.live.read().clone()
    }

    /// The node that owns `entity` now.
    pub fn owner(&self, entity: &str) -> String {
        let live = self.live_nodes();
        pick_owner(&live, entity)
            .cloned()
            .unwrap_or_else(|| self.node.clone())
    }

    /// True when this node owns `entity`.
    pub fn owns(&self, entity: &str) -> bool {
        self.owner(entity) == self.node
    }

    fn inbox(&self, node: &str) -> String {
        self.redis.key(&format!("inbox:{node}"))
    }

    fn send(&self, channel: String, wire: &Wire, on_fail: Option<Waiter>) {
        match rmp_serde::to_vec_named(wire) {
            Ok(payload) => {
                let _ = self.jobs.send(Job::Publish {
                    channel,
                    payload,
                    on_fail,
                });
            }
            Err(e) => tracing::error!("bus envelope failed to encode: {e}"),
        }
    }

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
    fn fail_forward(&self, w: &Waiter, why: &str) {
        let ReplyTo::Local(conn) = &w.to else { return };
        if self.forwarded.remove(&(conn.id, w.re)).is_some() {
            w.err(&KaiwaError::internal(why));
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

    /// A session of `user` started on this node.
    pub fn session_opened(&self, user: &str) {
        let _ = self.jobs.send(Job::Presence(user.to_string()));
    }

    /// A session of `user` ended on this node.
    pub fn session_closed(&self, user: &str) {
        if !self.hub.is_online(user) {
            let _ = self.jobs.send(Job::Presence(user.to_string()));
        }
    }

    /// Delivers an event: to this node's sessions directly, and once to each other node that
    /// hosts a recipient, naming only that node's recipients.
    pub fn fan_out(&self, recipients: &[Id], event: &Arc<SharedEvent>) {
        let n = self.hub.deliver(recipients, event);
        self.deliveries.increment(n);
        let mut per_node: HashMap<String, Vec<Id>> = HashMap::new();
        for u in recipients {
            if let Some(nodes) = self.presence.get(u) {
                for node in nodes.iter() {
                    per_node.entry(node.clone()).or_default().push(u.clone());
                }
            }
        }
        if per_node.is_empty() {
            return;
        }
        let live = self.live_nodes();
        for (node, users) in per_node {
            if node == self.node || !live.contains(&node) {
                continue;
            }
            let wire = Wire::Deliver {
                users,
                event: event.event().clone(),
            };
            self.send(self.inbox(&node), &wire, None);
        }
    }

    /// Sends queued jobs in order, many per pipeline.
    async fn publisher(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Job>) {
        let latency = metrics::histogram!("kaiwa_bus_publish_seconds");
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
            let mut pipe = redis::pipe();
            // Per job: the index of its PUBLISH reply, when it needs checking.
            let mut checks: Vec<(usize, Waiter)> = Vec::new();
            let mut replies = 0usize;
            let mut published = 0u64;
            for job in batch.drain(..) {
                match job {
                    Job::Publish {
                        channel,
                        payload,
                        on_fail,
                    } => {
                        pipe.publish(channel, payload);
                        if let Some(w) = on_fail {
                            checks.push((replies, w));
                        }
                        replies += 1;
                        published += 1;
                    }
                    Job::Presence(user) => {
                        let online = self.hub.is_online(&user);
                        let set = self.redis.key(&format!("presence:{}", self.node));
                        if online {
                            self.local_users.insert(user.clone(), ());
                            pipe.sadd(&set, &user).ignore();
                        } else {
                            self.local_users.remove(&user);
                            pipe.srem(&set, &user).ignore();
                        }
                        let wire = Wire::Presence {
                            node: self.node.clone(),
                            user,
                            online,
                        };
                        if let Ok(p) = rmp_serde::to_vec_named(&wire) {
                            pipe.publish(self.redis.key("presence"), p).ignore();
                            published += 1;
                        }
                    }
                }
            }
            let started = Instant::now();
            let res = self
                .redis
                .call(move |mut c| async move {
                    let v: Vec<i64> = pipe.query_async(&mut *c).await?;
                    Ok(v)
                })
                .await;
            latency.record(started.elapsed().as_secs_f64());
            self.bus_out.increment(published);
            match res {
                Ok(counts) => {
                    for (i, w) in checks {
                        if counts.get(i).copied().unwrap_or(0) == 0 {
                            self.fail_forward(
                                &w,
                                "the node that owns this conversation is unreachable; retry",
                            );
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("bus publish failed: {e}");
                    for (_, w) in checks {
                        self.fail_forward(&w, "cluster bus unavailable; retry");
                    }
                }
            }
        }
    }

    /// Heartbeats, refreshes the live node set and drops activations this node no longer owns.
    async fn heartbeat(self: Arc<Self>) {
        let nodes_key = self.redis.key("nodes");
        let own_presence = self.redis.key(&format!("presence:{}", self.node));
        // A restarted node hosts nobody yet.
        let _ = self
            .redis
            .call({
                let k = own_presence.clone();
                move |mut c| async move { c.del::<_, ()>(k).await }
            })
            .await;
        let gauge = metrics::gauge!("kaiwa_cluster_nodes");
        let up = metrics::gauge!("kaiwa_redis_up");
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            let (k, node) = (nodes_key.clone(), self.node.clone());
            let res = self
                .redis
                .call(move |mut c| async move {
                    let now = now_ms();
                    let (_, _, live): ((), (), Vec<String>) = redis::pipe()
                        .zadd(&k, &node, now + NODE_TTL.as_millis() as i64)
                        .zrembyscore(&k, "-inf", now)
                        .zrangebyscore(&k, now, "+inf")
                        .query_async(&mut *c)
                        .await?;
                    Ok(live)
                })
                .await;
            match res {
                Ok(mut live) => {
                    if !live.contains(&self.node) {
                        live.push(self.node.clone());
                    }
                    live.sort();
                    self.heartbeat_ok.store(true, Ordering::Relaxed);
                    up.set(1.0);
                    gauge.set(live.len() as f64);
                    let changed = **self.live.read() != live;
                    if changed {
                        tracing::info!(node = %self.node, ?live, "cluster membership changed");
                        *self.live.write() = Arc::new(live);
                        self.reload_presence().await;
                    }
                    // Every tick, not only on a change: a request forwarded here by a node
                    // whose view lagged may have activated something this node does not own.
                    if let Some(engine) = self.engine() {
                        let dropped = engine.retain_owned(|id| self.owns(id));
                        if !dropped.is_empty() {
                            let r = release_leases(&self.redis, &self.node, dropped).await;
                            if let Err(e) = r {
                                tracing::warn!("leases not released: {e}");
                            }
                        }
                    }
                }
                Err(e) => {
                    if self.heartbeat_ok.swap(false, Ordering::Relaxed) {
                        tracing::warn!("redis unreachable: {e}");
                        self.resubscribe.notify_one();
                    }
                    up.set(0.0);
                }
            }
        }
    }

    /// Rebuilds the presence replica from the `presence:<node>` sets of the live nodes.
    async fn reload_presence(&self) {
        let live = self.live_nodes();
        let others: Vec<String> = live.iter().filter(|n| **n != self.node).cloned().collect();
        let keys: Vec<String> = others
            .iter()
            .map(|n| self.redis.key(&format!("presence:{n}")))
            .collect();
        let res = self
            .redis
            .call(move |mut c| async move {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.smembers(k);
                }
                let v: Vec<Vec<String>> = pipe.query_async(&mut *c).await?;
                Ok(v)
            })
            .await;
        let Ok(sets) = res else { return };
        self.presence.clear();
        for (node, users) in others.into_iter().zip(sets) {
            for u in users {
                self.presence.entry(u).or_default().insert(node.clone());
            }
        }
    }

    /// Re-announces this node's users after Redis came back (it may have lost them).
    async fn republish_own_presence(&self) {
        let set = self.redis.key(&format!("presence:{}", self.node));
        let users: Vec<Id> = self.local_users.iter().map(|e| e.key().clone()).collect();
        let _ = self
            .redis
            .call(move |mut c| async move {
                let mut pipe = redis::pipe();
                pipe.del(&set).ignore();
                if !users.is_empty() {
                    pipe.sadd(&set, users).ignore();
                }
                pipe.query_async::<()>(&mut *c).await
            })
            .await;
    }

    /// Keeps a dedicated pub/sub connection subscribed to this node's inbox and to presence,
    /// reconnecting with backoff whenever it breaks.
    async fn subscriber(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.subscribe_once().await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => tracing::warn!("bus subscription failed: {e}"),
            }
            self.subscribed.store(false, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn subscribe_once(&self) -> Result<(), String> {
        let connect = async {
            let mut ps = self.redis.client.get_async_pubsub().await?;
            ps.subscribe(self.inbox(&self.node)).await?;
            ps.subscribe(self.redis.key("presence")).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = tokio::time::timeout(redis_conn::CALL_TIMEOUT, connect)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        self.republish_own_presence().await;
        self.reload_presence().await;
        self.subscribed.store(true, Ordering::Relaxed);
        tracing::info!(node = %self.node, "bus subscribed");
        let mut stream = ps.into_on_message();
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) => self.received(m.get_payload_bytes()),
                    None => return Err("subscription closed".into()),
                },
                _ = self.resubscribe.notified() => return Err("redis unreachable".into()),
            }
        }
    }

    fn received(&self, payload: &[u8]) {
        self.bus_in.increment(1);
        let wire: Wire = match rmp_serde::from_slice(payload) {
            Ok(w) => w,
            Err(e) => return tracing::warn!("unreadable bus envelope: {e}"),
        };
        match wire {
            Wire::Deliver { users, event } => {
                let n = self.hub.deliver(&users, &SharedEvent::new(event));
                self.deliveries.increment(n);
            }
            Wire::Reply {
                user,
                conn,
                re,
                binary,
                data,
            } => {
                // A reply after the request timed out was answered already.
                if self.forwarded.remove(&(conn, re)).is_none() {
                    return;
                }
                if let Some(c) = self.hub.conns_of(&user).into_iter().find(|c| c.id == conn) {
                    c.outbox.push(OutFrame { data, binary });
                }
            }
            Wire::Request {
                node,
                user,
                conn,
                binary,
                frame,
            } => {
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
            Wire::Presence { node, user, online } => {
                if node == self.node {
                    return;
                }
                if online {
                    self.presence.entry(user).or_default().insert(node);
                } else {
                    self.presence.remove_if_mut(&user, |_, nodes| {
                        nodes.remove(&node);
                        nodes.is_empty()
                    });
                }
            }
        }
    }
}

/// The cluster bus: events go out through [`Cluster::fan_out`].
pub struct ClusterBus(pub Arc<Cluster>);

impl Bus for ClusterBus {
    fn publish(&self, envelope: Envelope) {
        match envelope {
            Envelope::Deliver { recipients, event } => self.0.fan_out(&recipients, &event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Body, Message};

    #[test]
    fn rendezvous_moves_only_what_the_lost_node_owned() {
        let three: Vec<String> = vec!["n1".into(), "n2".into(), "n3".into()];
        let two: Vec<String> = vec!["n1".into(), "n3".into()];
        let mut spread = HashMap::new();
        for i in 0..300 {
            let id = format!("g_{i}");
            let before = pick_owner(&three, &id).unwrap();
            *spread.entry(before.clone()).or_insert(0) += 1;
            let after = pick_owner(&two, &id).unwrap();
            if before != "n2" {
                assert_eq!(before, after, "{id} moved though its node stayed");
            }
        }
        assert!(spread.values().all(|n| *n > 50), "{spread:?}");
    }

    #[test]
    fn envelopes_round_trip_in_messagepack() {
        let w = Wire::Deliver {
            users: vec!["u1".into()],
            event: Event::Message(Message {
                conv: "c".into(),
                seq: 7,
                msg_id: "m".into(),
                from: "u2".into(),
                ts: 1,
                body: Body::Text("hi".into()),
                thread: None,
                origin: None,
            }),
        };
        let b = rmp_serde::to_vec_named(&w).unwrap();
        let Wire::Deliver { users, event } = rmp_serde::from_slice(&b).unwrap() else {
            panic!()
        };
        assert_eq!(users, vec!["u1".to_string()]);
        let Event::Message(m) = event else { panic!() };
        assert_eq!(m.seq, 7);
    }
}
