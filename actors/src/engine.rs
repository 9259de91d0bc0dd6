//! The engine: what every actor shares (store, bus, local hub, limits) and the directory that
//! finds or activates the actor of an entity id.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::{Actor, Addr, ArbiterHandle};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::bus::Bus;
use crate::chat::ChatActor;
use crate::cluster::Cluster;
use crate::group::GroupActor;
use crate::hub::{Conn, Hub};
use crate::ids;
use crate::org::OrgActor;
use crate::protocol::Format;
use crate::retire::{self, IdleCheck};
use crate::store::Store;
use crate::user::UserActor;

/// Limits a node enforces; each has a flag and an env twin in the server's config.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame a client may send, in bytes; larger ones get `too_large`.
    pub max_frame: usize,
    /// Data frames a connection's outbox holds before the reader is cut off as too slow.
    pub outbox_frames: usize,
    /// How many recent `client_msg_id`s each conversation remembers for idempotency.
    pub idempotency_window: usize,
    /// Requests per second one connection may make, and the burst above that.
    pub rate_per_sec: NonZeroU32,
    pub rate_burst: NonZeroU32,
    /// How often the server pings, and how long a silent client is kept.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// A chat or group that handles nothing for this long leaves memory (see
    /// [`crate::retire`]); `None` keeps every activation for the life of the node.
    pub actor_idle: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 64 * 1024,
            outbox_frames: 4096,
            idempotency_window: 10_000,
            rate_per_sec: NonZeroU32::new(2_000).unwrap_or(NonZeroU32::MIN),
            rate_burst: NonZeroU32::new(4_000).unwrap_or(NonZeroU32::MIN),
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(60),
            actor_idle: Some(Duration::from_secs(15 * 60)),
        }
    }
}

/// The address of a conversation actor, whichever kind it is.
#[derive(Clone)]
pub enum ConvAddr {
    Chat(Addr<ChatActor>),
    Group(Addr<GroupActor>),
}

impl ConvAddr {
    /// Hands a request to the conversation; it answers the waiter itself.
    pub fn request(&self, r: crate::conversation::ConvRequest) {
        match self {
            ConvAddr::Chat(a) => a.do_send(r),
            ConvAddr::Group(a) => a.do_send(r),
        }
    }

    /// False once the actor has stopped.
    pub fn connected(&self) -> bool {
        match self {
            ConvAddr::Chat(a) => a.connected(),
            ConvAddr::Group(a) => a.connected(),
        }
    }
}

/// Live actors of this node by entity id. One activation per id.
#[derive(Default)]
struct Directory {
    users: DashMap<String, Addr<UserActor>>,
    orgs: DashMap<String, Addr<OrgActor>>,
    chats: DashMap<String, Addr<ChatActor>>,
    groups: DashMap<String, Addr<GroupActor>>,
}

/// Shared state of the node's engine.
pub struct Engine {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    pub limits: Limits,
    arbiter: ArbiterHandle,
    /// The arbiter entity actors start on instead of `arbiter`, once set (see `adopt_arbiter`).
    adopted: OnceLock<ArbiterHandle>,
    dir: Directory,
    /// The next connection id; starts at [`first_conn_id`].
    next_conn: AtomicU64,
    /// Set once in cluster mode; `None` on a node that runs alone.
    cluster: OnceLock<Arc<Cluster>>,
}

/// Where a node's connection ids start: a random point below 2^52, different at every start.
/// In a cluster, an owner's reply finds the connection that asked by (connection id, request
/// id); were ids counted from 1 at every start, a reply meant for a connection of the node's
/// previous run (delayed past its restart) would answer the request with the same ids on its new
/// run: an ack with another message's seq.
fn first_conn_id() -> u64 {
    1 + rand::random::<u64>() % (1 << 52)
}

/// Finds the live actor in `map` or starts one on the engine's arbiter.
/// `kind` labels the activation metric.
fn find_or_start<A, F>(
    map: &DashMap<String, Addr<A>>,
    id: &str,
    arbiter: &ArbiterHandle,
    kind: &'static str,
    make: F,
) -> Addr<A>
where
    A: Actor<Context = actix::Context<A>>,
    F: FnOnce() -> A + Send + 'static,
{
    let start = |make: F| {
        metrics::counter!("kaiwa_activations_total", "kind" => kind).increment(1);
        A::start_in_arbiter(arbiter, |_| make())
    };
    if let Some(a) = map.get(id) {
        if a.connected() {
            return a.clone();
        }
    }
    match map.entry(id.to_string()) {
        Entry::Occupied(mut e) if !e.get().connected() => {
            let a = start(make);
            e.insert(a.clone());
            a
        }
        Entry::Occupied(e) => e.get().clone(),
        Entry::Vacant(v) => {
            let a = start(make);
            v.insert(a.clone());
            a
        }
    }
}

impl Engine {
    /// An engine whose entity actors run on `arbiter`.
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        hub: Arc<Hub>,
        limits: Limits,
        arbiter: ArbiterHandle,
    ) -> Arc<Self> {
        let engine = Arc::new(Engine {
            store,
            bus,
            hub,
            limits,
            arbiter,
            adopted: OnceLock::new(),
            dir: Directory::default(),
            next_conn: AtomicU64::new(first_conn_id()),
            cluster: OnceLock::new(),
        });
        engine.start_sweeps();
        engine
    }

    /// Asks every actor in the directory, every so often, whether it has been idle long enough
    /// to retire (see [`crate::retire`]); nothing when actors are kept for the life of the node.
    fn start_sweeps(self: &Arc<Self>) {
        let Some(after) = self.limits.actor_idle else {
            return;
        };
        let engine = Arc::downgrade(self);
        self.arbiter.spawn(async move {
            let mut tick = actix::clock::interval(retire::sweep_every(after));
            loop {
                tick.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                engine.sweep(after);
            }
        });
    }

    /// One [`IdleCheck`] to every user, chat and group actor in the directory.
    fn sweep(&self, after: Duration) {
        self.dir
            .users
            .iter()
            .for_each(|a| a.do_send(IdleCheck(after)));
        self.dir
            .chats
            .iter()
            .for_each(|a| a.do_send(IdleCheck(after)));
        self.dir
            .groups
            .iter()
            .for_each(|a| a.do_send(IdleCheck(after)));
    }

    /// A new connection of `user`, with a fresh id and an outbox sized by the limits.
    pub fn new_conn(
        &self,
        user: &str,
        format: Option<Format>,
        wire: Box<dyn crate::outbox::Wire>,
    ) -> Arc<Conn> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        Arc::new(Conn::new(
            id,
            user.to_string(),
            self.limits.outbox_frames,
            format,
            Some(wire),
        ))
    }

    /// The arbiter new entity actors start on: the adopted one while it runs, else the engine's.
    pub fn arbiter(&self) -> &ArbiterHandle {
        match self.adopted.get() {
            Some(a) if a.alive() => a,
            _ => &self.arbiter,
        }
    }

    /// Starts entity actors on `arbiter` from now on (the first call wins). The server adopts
    /// its first HTTP worker's thread, so that a request is read, handled and answered on one
    /// thread; the engine's own arbiter remains the fallback.
    pub fn adopt_arbiter(&self, arbiter: ArbiterHandle) {
        let _ = self.adopted.set(arbiter);
    }

    /// The user actor of `id`, activated if needed; `None` when `id` is not a user id.
    pub fn user(self: &Arc<Self>, id: &str) -> Option<Addr<UserActor>> {
        if !id.starts_with(ids::USER) {
            return None;
        }
        let (e, i) = (self.clone(), id.to_string());
        Some(find_or_start(
            &self.dir.users,
            id,
            self.arbiter(),
            "user",
            move || UserActor::new(e, i),
        ))
    }

    /// The org actor of `id`, activated if needed.
    pub fn org(self: &Arc<Self>, id: &str) -> Option<Addr<OrgActor>> {
        if !id.starts_with(ids::ORG) {
            return None;
        }
        let (e, i) = (self.clone(), id.to_string());
        Some(find_or_start(
            &self.dir.orgs,
            id,
            self.arbiter(),
            "org",
            move || OrgActor::new(e, i),
        ))
    }

    /// The chat actor of `id`, activated if needed (it may find no such chat yet).
    pub fn chat(self: &Arc<Self>, id: &str) -> Option<Addr<ChatActor>> {
        if !id.starts_with(ids::CHAT) {
            return None;
        }
        let (e, i) = (self.clone(), id.to_string());
        Some(find_or_start(
            &self.dir.chats,
            id,
            self.arbiter(),
            "chat",
            move || ChatActor::new(e, i),
        ))
    }

    /// The group actor of `id`, activated if needed.
    pub fn group(self: &Arc<Self>, id: &str) -> Option<Addr<GroupActor>> {
        if !id.starts_with(ids::GROUP) {
            return None;
        }
        let (e, i) = (self.clone(), id.to_string());
        Some(find_or_start(
            &self.dir.groups,
            id,
            self.arbiter(),
            "group",
            move || GroupActor::load(e, i),
        ))
    }

    /// Starts the actor of a group being created; it writes the group, then answers `done`.
    pub fn create_group(
        self: &Arc<Self>,
        spec: crate::group::GroupSpec,
        done: crate::group::Done,
    ) -> crate::protocol::Id {
        // In cluster mode the group is created where it will live: draw ids until one is
        // owned by this node (with N nodes, N draws on average).
        let mut id = ids::new_group();
        if let Some(c) = self.cluster() {
            for _ in 0..256 {
                if c.owns(&id) {
                    break;
                }
                id = ids::new_group();
            }
        }
        metrics::counter!("kaiwa_activations_total", "kind" => "group").increment(1);
        let (e, i) = (self.clone(), id.clone());
        let addr = GroupActor::start_in_arbiter(self.arbiter(), move |_| {
            GroupActor::create(e, i, spec, done)
        });
        self.dir.groups.insert(id.clone(), addr);
        id
    }

    /// The conversation actor of a chat or group id.
    pub fn conv(self: &Arc<Self>, id: &str) -> Option<ConvAddr> {
        if id.starts_with(ids::CHAT) {
            self.chat(id).map(ConvAddr::Chat)
        } else {
            self.group(id).map(ConvAddr::Group)
        }
    }

    /// Takes a retiring user actor out of the directory, unless another activation of the user
    /// has replaced it there (or the node forgot it: another node owns the user now).
    pub fn retire_user(&self, id: &str, addr: &Addr<UserActor>) {
        self.dir.users.remove_if(id, |_, a| a == addr);
    }

    /// Takes a retiring chat actor out of the directory (see [`Engine::retire_user`]).
    pub fn retire_chat(&self, id: &str, addr: &Addr<ChatActor>) {
        self.dir.chats.remove_if(id, |_, a| a == addr);
    }

    /// Takes a retiring group actor out of the directory (see [`Engine::retire_user`]).
    pub fn retire_group(&self, id: &str, addr: &Addr<GroupActor>) {
        self.dir.groups.remove_if(id, |_, a| a == addr);
    }

    /// Forgets a group activation that is ending (a failed create or a missing group), so the
    /// next lookup starts afresh.
    pub fn forget_group(&self, id: &str) {
        self.dir.groups.remove(id);
    }

    /// Forgets a chat activation that is ending.
    pub fn forget_chat(&self, id: &str) {
        self.dir.chats.remove(id);
    }

    /// Joins this engine to a cluster; once only.
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The cluster this node belongs to, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// After a membership change: forgets the activations that `owned` says another node
    /// owns now, so that the next request for them goes there and the new owner reloads them
    /// from the store. Their actors end once nothing refers to them; the store's append check
    /// keeps any late write honest. Returns the conversation ids it forgot (whose leases this
    /// node may hold).
    pub fn retain_owned(&self, owned: impl Fn(&str) -> bool) -> Vec<String> {
        self.dir.users.retain(|id, _| owned(id));
        self.dir.orgs.retain(|id, _| owned(id));
        let mut dropped = Vec::new();
        let mut keep = |id: &String| {
            let k = owned(id);
            if !k {
                dropped.push(id.clone());
            }
            k
        };
        self.dir.chats.retain(|id, _| keep(id));
        self.dir.groups.retain(|id, _| keep(id));
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_start_numbers_its_connections_from_its_own_point() {
        let starts: std::collections::HashSet<u64> = (0..100).map(|_| first_conn_id()).collect();
        assert_eq!(
            starts.len(),
            100,
            "two starts share their first connection id"
        );
        // Ids stay exact in clients and tools that read numbers as doubles.
        assert!(starts.iter().all(|s| (1..=1 << 52).contains(s)));
    }
}
