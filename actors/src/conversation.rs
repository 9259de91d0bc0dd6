//! What chats and groups share: the conversation state (record, members, logs) and the request
//! flows every conversation actor runs the same way — append with durable ack and in-order
//! fan-out, paged sync, and finding a message by its id.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::{Actor, ActorContext, ActorFutureExt, Context, ContextFutureSpawner, WrapFuture};

use crate::action_book::{ActionBook, ActionInfo};
use crate::bus::Envelope;
use crate::conv_log::{Admit, ConvLog, Notify, Released};
use crate::engine::Engine;
use crate::ids;
use crate::protocol::{
    Ack, Body, ConvType, Event, Id, KResult, KaiwaError, MemberView, MembersOk, Message, Op,
    Origin, Role, SharedEvent, SyncOk, SyncReq,
};
use crate::reply::Waiter;
use crate::rules;
use crate::store::{ConvRecord, StoreResult, StoredMessage, Write};

/// A request a session hands to a conversation actor: who asks, what, and where to answer.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct ConvRequest {
    pub from: Id,
    pub op: Op,
    pub waiter: Waiter,
}

/// Default and largest page of `sync`.
pub const SYNC_DEFAULT: usize = 100;
pub const SYNC_MAX: usize = 1000;

/// The log id of a public group's member thread.
pub fn thread_log(conv: &str, user: &str) -> Id {
    format!("{conv}#{user}")
}

/// Store key prefix of a hierarchical group's links to its children.
pub fn child_key(parent: &str, child: &str) -> String {
    format!("child/{parent}/{child}")
}

/// Store key of an action copy: which local message carries the action `key`.
pub fn copy_key(conv: &str, key: &str) -> String {
    format!("copy/{conv}/{key}")
}

/// The state of one loaded conversation.
pub struct ConvCore {
    pub engine: Arc<Engine>,
    pub record: ConvRecord,
    pub members: BTreeMap<Id, Role>,
    /// Members as a shared list: one allocation, shared by every fan-out until it changes.
    pub recipients: Arc<[Id]>,
    /// The conversation's log (for public groups: announcements are copied into threads and
    /// this log stays empty).
    pub log: ConvLog,
    /// Public groups: one log per member thread, loaded on first use.
    pub threads: HashMap<Id, ConvLog>,
    /// Hierarchical groups: the child groups actions flow down to, in id order.
    pub children: Vec<Id>,
    /// Reactions (answers, likes, comments) to this conversation's messages.
    pub book: ActionBook,
    /// Messages made durable and not yet released (acked and published), with the thread
    /// whose log they are in; released together once the completions ready now are all in.
    releasing: Vec<(Option<Id>, Released)>,
}

/// Everything a conversation actor loads on activation.
pub struct Loaded {
    pub record: ConvRecord,
    pub members: Vec<(Id, Role)>,
    pub last_seq: u64,
    pub tail: Vec<StoredMessage>,
    pub children: Vec<Id>,
}

impl Loaded {
    /// A conversation just created: no messages, no children.
    pub fn fresh(record: ConvRecord, members: Vec<(Id, Role)>) -> Self {
        Loaded {
            record,
            members,
            last_seq: 0,
            tail: Vec::new(),
            children: Vec::new(),
        }
    }
}

impl ConvCore {
    /// True when no message of any of its logs awaits the store.
    pub fn is_quiet(&self) -> bool {
        self.log.is_quiet() && self.threads.values().all(ConvLog::is_quiet)
    }

    /// Reads a conversation from the store; `None` when it does not exist.
    pub async fn load(engine: Arc<Engine>, id: Id) -> StoreResult<Option<Loaded>> {
        let Some(record) = engine.store.conv(&id).await? else {
            return Ok(None);
        };
        let members = engine.store.members(&id).await?;
        let last_seq = engine.store.last_seq(&id).await?;
        let tail = engine
            .store
            .tail(&id, engine.limits.idempotency_window)
            .await?;
        let prefix = child_key(&id, "");
        let children = engine
            .store
            .kv_scan(&prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k[prefix.len()..].to_string())
            .collect();
        Ok(Some(Loaded {
            record,
            members,
            last_seq,
            tail,
            children,
        }))
    }

    /// The in-memory conversation built from what was loaded (or just created).
    pub fn new(engine: Arc<Engine>, l: Loaded) -> Self {
        let window = engine.limits.idempotency_window;
        let log = ConvLog::new(l.record.id.clone(), l.last_seq, l.tail, window);
        let mut c = ConvCore {
            engine,
            record: l.record,
            members: l.members.into_iter().collect(),
            recipients: Arc::from(Vec::new()),
            log,
            threads: HashMap::new(),
            children: l.children,
            book: ActionBook::default(),
            releasing: Vec::new(),
        };
        c.members_changed();
        c
    }

    /// The conversation id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The role of `user`, or `None` for a non-member.
    pub fn role(&self, user: &str) -> Option<Role> {
        self.members.get(user).copied()
    }

    /// Owners and admins.
    pub fn admins(&self) -> Vec<Id> {
        self.members
            .iter()
            .filter(|(_, r)| r.is_admin())
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Rebuilds the shared recipient list after a membership change.
    pub fn members_changed(&mut self) {
        self.recipients = self.members.keys().cloned().collect::<Vec<_>>().into();
    }

    /// The log a message goes to: a member thread, or the conversation's own.
    pub fn log_mut(&mut self, thread: Option<&str>) -> Option<&mut ConvLog> {
        match thread {
            None => Some(&mut self.log),
            Some(t) => self.threads.get_mut(t),
        }
    }

    /// The store id of the log a message of `thread` is in.
    pub fn log_id(&self, thread: Option<&str>) -> Id {
        match thread {
            None => self.record.id.clone(),
            Some(t) => thread_log(&self.record.id, t),
        }
    }

    /// Publishes an event to a set of users, once, through the bus.
    pub fn publish(&self, recipients: Arc<[Id]>, event: Event) {
        self.publish_burst(recipients, vec![Arc::new(SharedEvent::new(event))]);
    }

    /// Publishes events, in order, to a set of users as one burst: each member gets its share in
    /// one write.
    pub fn publish_burst(&self, recipients: Arc<[Id]>, events: Vec<Arc<SharedEvent>>) {
        if !events.is_empty() {
            self.engine
                .bus
                .publish(Envelope::Deliver { recipients, events });
        }
    }

    /// `group.members` as `caller` may see it: in a public group a plain member sees only the
    /// owner, the admins and themself; phone numbers only where the visibility rules allow.
    pub fn members_view(
        &self,
        caller: &str,
    ) -> impl std::future::Future<Output = KResult<MembersOk>> + 'static {
        let kind = self.record.kind;
        let role = self.role(caller).unwrap_or(Role::Member);
        let all: Vec<(Id, Role)> = self.members.iter().map(|(u, r)| (u.clone(), *r)).collect();
        let visible = rules::visibility::visible_members(kind, caller, role, &all);
        let phones = rules::visibility::phone_visible(kind, role);
        let store = self.engine.store.clone();
        async move {
            let mut members = Vec::with_capacity(visible.len());
            for (user, role) in visible {
                let rec = store.user(&user).await?;
                let (name, phone) = match rec {
                    Some(r) => (Some(r.name), if phones { r.phone } else { None }),
                    None => (None, None),
                };
                members.push(MemberView {
                    user,
                    role,
                    name,
                    phone,
                });
            }
            Ok(MembersOk { members })
        }
    }

    /// True for public groups, whose members never see each other.
    pub fn is_public(&self) -> bool {
        self.record.kind == ConvType::Public
    }
}

/// A conversation actor: chats and groups both run the shared flows through this.
pub trait Conversation: Actor<Context = Context<Self>> {
    /// The loaded conversation, or `None` while it does not exist.
    fn core_mut(&mut self) -> Option<&mut ConvCore>;

    /// Called for each message once it is durable, acked and fanned out.
    fn after_release(&mut self, _msg: &StoredMessage, _ctx: &mut Context<Self>) {}
}

/// Where a new message's `origin` comes from.
pub enum OriginSpec {
    /// A plain message: no origin.
    None,
    /// An action posted here: its origin is itself.
    Itself,
    /// A copy of an action posted elsewhere (a parent group, or a public announcement).
    Inherit(Origin),
}

/// Builds writes that must commit with a message (e.g. a pending-cascade marker).
pub type Extra = Box<dyn FnOnce(&StoredMessage) -> Vec<Write>>;

/// What a new message is.
pub struct Draft {
    pub from: Id,
    pub client_msg_id: String,
    pub body: Body,
    /// Public groups: the member thread it goes to.
    pub thread: Option<Id>,
    pub origin: OriginSpec,
    pub recipients: Arc<[Id]>,
    /// More writes to commit atomically with the message, built from the final message.
    pub extra: Option<Extra>,
    /// An in-process requester to tell the ack.
    pub notify: Option<Notify>,
}

/// Appends a message: assigns its seq now, acks the waiter and fans the message out once the
/// store has made it durable. A retried `client_msg_id` gets the first ack and stores nothing.
/// The thread's log must be loaded (see [`with_thread`]).
pub fn append<A: Conversation>(
    act: &mut A,
    ctx: &mut Context<A>,
    d: Draft,
    waiter: Option<Waiter>,
) {
    let Some(core) = act.core_mut() else { return };
    let conv = core.record.id.clone();
    let store = core.engine.store.clone();
    let Some(log) = core.log_mut(d.thread.as_deref()) else {
        if let Some(w) = waiter {
            w.err(&KaiwaError::internal("thread log not loaded"));
        }
        return;
    };
    match log.admit(&d.from, &d.client_msg_id) {
        Admit::Duplicate(ack) => {
            if let Some(w) = waiter {
                w.ok(&ack);
            }
            if let Some(n) = d.notify {
                let _ = n.send(Ok(ack));
            }
        }
        Admit::InFlight(seq) => log.attach(seq, waiter, d.notify),
        Admit::New => {
            let seq = log.next_seq();
            let msg_id = ids::new_msg(seq);
            let mut writes = Vec::with_capacity(2);
            let origin = match d.origin {
                OriginSpec::None => None,
                OriginSpec::Itself => Some(Origin {
                    conv: conv.clone(),
                    msg_id: msg_id.clone(),
                }),
                OriginSpec::Inherit(o) => {
                    writes.push(Write::PutKv {
                        key: copy_key(&conv, &o.msg_id),
                        value: msg_id.clone().into_bytes(),
                    });
                    Some(o)
                }
            };
            let msg = StoredMessage {
                msg: Message {
                    conv,
                    seq,
                    msg_id,
                    from: d.from,
                    ts: ids::now_ms(),
                    body: d.body,
                    thread: d.thread.clone(),
                    origin,
                },
                client_msg_id: d.client_msg_id,
            };
            if msg.msg.body.is_action() {
                if let Some(o) = &msg.msg.origin {
                    let info = ActionInfo {
                        body: msg.msg.body.clone(),
                        creator: msg.msg.from.clone(),
                        origin: o.clone(),
                    };
                    writes.push(info.write(&msg.msg.conv));
                }
            }
            writes.insert(
                0,
                Write::Append {
                    log: log.log.clone(),
                    msg: msg.clone(),
                },
            );
            if let Some(extra) = d.extra {
                writes.extend(extra(&msg));
            }
            log.append(msg, d.recipients, waiter, d.notify);
            let epoch = log.epoch();
            let thread = d.thread;
            store
                .write(writes)
                .into_actor(act)
                .map(move |res, act, ctx| {
                    let Some(core) = act.core_mut() else { return };
                    let Some(log) = core.log_mut(thread.as_deref()) else {
                        return;
                    };
                    let released = log.complete(epoch, seq, res);
                    if released.is_empty() {
                        return;
                    }
                    if core.releasing.is_empty() {
                        // Behind every completion that is ready now: the writes of one commit
                        // are released, and fanned out, together.
                        actix::fut::ready(())
                            .map(|(), act: &mut A, ctx| release(act, ctx))
                            .spawn(ctx);
                    }
                    let t = &thread;
                    core.releasing
                        .extend(released.into_iter().map(|r| (t.clone(), r)));
                })
                .spawn(ctx);
        }
    }
}

fn store_failed() -> KaiwaError {
    KaiwaError::internal("the message could not be stored; retry")
}

fn fail(r: Released) {
    for w in &r.waiters {
        w.err(&store_failed());
    }
    for n in r.notify {
        let _ = n.send(Err(store_failed()));
    }
}

/// Acks and fans out the messages made durable since the last release, in order; messages for
/// the same recipients are published as one burst. After a failed write, answers `internal`
/// and reloads the log's position from the store before taking more writes.
fn release<A: Conversation>(act: &mut A, ctx: &mut Context<A>) {
    let Some(core) = act.core_mut() else { return };
    let batch = std::mem::take(&mut core.releasing);
    let mut failed: Vec<Option<Id>> = Vec::new();
    let mut burst = Burst::default();
    for (thread, r) in batch {
        if let Err(e) = &r.result {
            tracing::warn!("append failed: {e}");
            if !failed.contains(&thread) {
                failed.push(thread);
            }
            fail(r);
            continue;
        }
        let m = &r.msg.msg;
        let ack = Ack {
            seq: m.seq,
            msg_id: m.msg_id.clone(),
            ts: m.ts,
        };
        for w in &r.waiters {
            w.ok(&ack);
        }
        for n in r.notify {
            let _ = n.send(Ok(ack.clone()));
        }
        if let Some(core) = act.core_mut() {
            burst.add(core, &r.recipients, Event::Message(r.msg.msg.clone()));
        }
        act.after_release(&r.msg, ctx);
    }
    if let Some(core) = act.core_mut() {
        burst.publish(core);
    }
    for thread in failed {
        reload_position(act, ctx, thread);
    }
}

/// After a failed write: reloads the log's last seq from the store and fails what was still
/// pending on the old position; stops the actor when that fails too.
fn reload_position<A: Conversation>(act: &mut A, ctx: &mut Context<A>, thread: Option<Id>) {
    let Some(core) = act.core_mut() else { return };
    let store = core.engine.store.clone();
    let log = core.log_id(thread.as_deref());
    async move { store.last_seq(&log).await }
        .into_actor(act)
        .map(move |res, act, ctx| {
            match (
                res,
                act.core_mut().and_then(|c| c.log_mut(thread.as_deref())),
            ) {
                (Ok(last), Some(log)) => log.reset(last).into_iter().for_each(fail),
                _ => ctx.stop(),
            }
        })
        .wait(ctx);
}

/// Events released together, gathered while they go to the same recipients.
#[derive(Default)]
struct Burst {
    recipients: Option<Arc<[Id]>>,
    events: Vec<Arc<SharedEvent>>,
}

impl Burst {
    /// Adds an event for `recipients`; what was gathered for others is published first, so the
    /// order of events is kept.
    fn add(&mut self, core: &ConvCore, recipients: &Arc<[Id]>, event: Event) {
        if !self
            .recipients
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, recipients))
        {
            self.publish(core);
            self.recipients = Some(recipients.clone());
        }
        self.events.push(Arc::new(SharedEvent::new(event)));
    }

    /// Publishes what is gathered.
    fn publish(&mut self, core: &ConvCore) {
        if let Some(to) = self.recipients.take() {
            core.publish_burst(to, std::mem::take(&mut self.events));
        }
    }
}

/// Runs `f` once the log of `thread` is loaded (public groups load member threads lazily).
pub fn with_thread<A, F>(act: &mut A, ctx: &mut Context<A>, thread: Option<Id>, f: F)
where
    A: Conversation,
    F: FnOnce(&mut A, &mut Context<A>) + 'static,
{
    let Some(core) = act.core_mut() else { return };
    let Some(t) = thread else { return f(act, ctx) };
    if core.threads.contains_key(&t) {
        return f(act, ctx);
    }
    let store = core.engine.store.clone();
    let log = thread_log(&core.record.id, &t);
    let window = core.engine.limits.idempotency_window;
    async move {
        let last = store.last_seq(&log).await?;
        let tail = store.tail(&log, window).await?;
        StoreResult::Ok(ConvLog::new(log, last, tail, window))
    }
    .into_actor(act)
    .map(move |res, act, ctx| match (res, act.core_mut()) {
        (Ok(log), Some(core)) => {
            core.threads.entry(t).or_insert(log);
            f(act, ctx);
        }
        (Err(e), _) => tracing::error!("thread log failed to load: {e}"),
        _ => {}
    })
    .wait(ctx);
}

/// `sync`: a page of a log after `after`.
pub fn sync<A: Conversation>(
    act: &mut A,
    ctx: &mut Context<A>,
    log: Id,
    req: SyncReq,
    waiter: Waiter,
) {
    let Some(core) = act.core_mut() else { return };
    let limit = req
        .limit
        .map(|l| l as usize)
        .unwrap_or(SYNC_DEFAULT)
        .clamp(1, SYNC_MAX);
    let store = core.engine.store.clone();
    async move { store.messages(&log, req.after, limit).await }
        .into_actor(act)
        .map(move |res, _act, _ctx| match res {
            Ok((msgs, more)) => waiter.ok(&SyncOk {
                messages: msgs.into_iter().map(|m| m.msg).collect(),
                more,
            }),
            Err(e) => waiter.err(&e.into()),
        })
        .spawn(ctx);
}

/// Reads the message `msg_id` of a log (its seq is part of the id).
pub async fn find_message(engine: Arc<Engine>, log: Id, msg_id: Id) -> KResult<StoredMessage> {
    let missing = || KaiwaError::not_found("no such message in this conversation");
    let seq = ids::seq_of_msg(&msg_id).ok_or_else(missing)?;
    let (page, _) = engine
        .store
        .messages(&log, seq.saturating_sub(1), 1)
        .await?;
    page.into_iter()
        .find(|m| m.msg.msg_id == msg_id)
        .ok_or_else(missing)
}

/// `group.members`, answered once the member records are read.
pub fn members<A: Conversation>(act: &mut A, ctx: &mut Context<A>, caller: &str, waiter: Waiter) {
    let Some(core) = act.core_mut() else { return };
    core.members_view(caller)
        .into_actor(act)
        .map(move |res, _act, _ctx| waiter.reply(&res))
        .spawn(ctx);
}

/// The conversation a request may proceed in: loaded, and the caller a member. Otherwise the
/// waiter is answered (`not_found` or `forbidden`) and `None` returned.
pub fn member_gate<'a>(
    core: Option<&'a ConvCore>,
    from: &str,
    waiter: &Waiter,
) -> Option<&'a ConvCore> {
    let Some(core) = core else {
        waiter.err(&KaiwaError::not_found("no such conversation"));
        return None;
    };
    match rules::membership::require_member(core.role(from)) {
        Ok(_) => Some(core),
        Err(e) => {
            waiter.err(&e);
            None
        }
    }
}
