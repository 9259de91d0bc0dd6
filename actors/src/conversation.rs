//! What chats and groups share: the conversation state (record, members, log) and the request
//! flows every conversation actor runs the same way — append with durable ack and in-order
//! fan-out, and paged sync.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::{Actor, ActorContext, ActorFutureExt, Context, ContextFutureSpawner, WrapFuture};

use crate::bus::Envelope;
use crate::conv_log::{Admit, ConvLog, Released};
use crate::engine::Engine;
use crate::protocol::{
    Ack, Body, Event, Id, KaiwaError, MemberView, MembersOk, Op, Origin, Role, SharedEvent, SyncOk,
    SyncReq,
};
use crate::reply::Waiter;
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

/// The state of one loaded conversation.
pub struct ConvCore {
    pub engine: Arc<Engine>,
    pub record: ConvRecord,
    pub members: BTreeMap<Id, Role>,
    /// Members as a shared list: one allocation, shared by every fan-out until it changes.
    pub recipients: Arc<[Id]>,
    pub log: ConvLog,
}

/// Everything a conversation actor loads on activation.
pub struct Loaded {
    pub record: ConvRecord,
    pub members: Vec<(Id, Role)>,
    pub last_seq: u64,
    pub tail: Vec<StoredMessage>,
}

impl ConvCore {
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
        Ok(Some(Loaded {
            record,
            members,
            last_seq,
            tail,
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

    /// Rebuilds the shared recipient list after a membership change.
    pub fn members_changed(&mut self) {
        self.recipients = self.members.keys().cloned().collect::<Vec<_>>().into();
    }

    /// Publishes an event to a set of users, once, through the bus.
    pub fn publish(&self, recipients: Arc<[Id]>, event: Event) {
        self.engine.bus.publish(Envelope::Deliver {
            recipients,
            event: Arc::new(SharedEvent::new(event)),
        });
    }

    /// `group.members`: everyone, with roles.
    pub fn members_view(&self) -> MembersOk {
        MembersOk {
            members: self
                .members
                .iter()
                .map(|(u, r)| MemberView {
                    user: u.clone(),
                    role: *r,
                })
                .collect(),
        }
    }
}

/// A conversation actor: chats and groups both run the shared flows through this.
pub trait Conversation: Actor<Context = Context<Self>> {
    /// The loaded conversation, or `None` while it does not exist.
    fn core_mut(&mut self) -> Option<&mut ConvCore>;

    /// Called for each message once it is durable, acked and fanned out.
    fn after_release(&mut self, _msg: &StoredMessage, _ctx: &mut Context<Self>) {}
}

/// What a new message is.
pub struct Draft {
    pub from: Id,
    pub client_msg_id: String,
    pub body: Body,
    pub thread: Option<Id>,
    pub origin: Option<Origin>,
    pub recipients: Arc<[Id]>,
}

/// Appends a message: assigns its seq now, acks the waiter and fans the message out once the
/// store has made it durable. A retried `client_msg_id` gets the first ack and stores nothing.
pub fn append<A: Conversation>(
    act: &mut A,
    ctx: &mut Context<A>,
    d: Draft,
    waiter: Option<Waiter>,
) {
    let Some(core) = act.core_mut() else { return };
    match core.log.admit(&d.from, &d.client_msg_id, waiter.as_ref()) {
        Admit::Duplicate(ack) => {
            if let Some(w) = waiter {
                w.ok(&ack);
            }
        }
        Admit::InFlight => {}
        Admit::New => {
            let conv = core.record.id.clone();
            let msg = core.log.append(
                &conv,
                &d.from,
                &d.client_msg_id,
                d.body,
                d.thread,
                d.origin,
                d.recipients,
                waiter,
            );
            let (seq, epoch) = (msg.msg.seq, core.log.epoch());
            let write = core.engine.store.write(vec![Write::Append {
                log: core.log.log.clone(),
                msg,
            }]);
            write
                .into_actor(act)
                .map(move |res, act, ctx| {
                    let released = match act.core_mut() {
                        Some(core) => core.log.complete(epoch, seq, res),
                        None => return,
                    };
                    release(act, ctx, released);
                })
                .spawn(ctx);
        }
    }
}

/// Acks and fans out released messages in order; after a failed write, answers `internal` and
/// reloads the log's position from the store before taking more writes.
fn release<A: Conversation>(act: &mut A, ctx: &mut Context<A>, released: Vec<Released>) {
    let mut failed = false;
    for r in released {
        match r.result {
            Ok(()) => {
                let ack = Ack {
                    seq: r.msg.msg.seq,
                    msg_id: r.msg.msg.msg_id.clone(),
                    ts: r.msg.msg.ts,
                };
                for w in &r.waiters {
                    w.ok(&ack);
                }
                if let Some(core) = act.core_mut() {
                    core.publish(r.recipients.clone(), Event::Message(r.msg.msg.clone()));
                }
                act.after_release(&r.msg, ctx);
            }
            Err(e) => {
                failed = true;
                tracing::warn!("append failed: {e}");
                for w in &r.waiters {
                    w.err(&KaiwaError::internal(
                        "the message could not be stored; retry",
                    ));
                }
            }
        }
    }
    if failed {
        let Some(core) = act.core_mut() else { return };
        let store = core.engine.store.clone();
        let log = core.log.log.clone();
        async move { store.last_seq(&log).await }
            .into_actor(act)
            .map(|res, act, ctx| match (res, act.core_mut()) {
                (Ok(last), Some(core)) => {
                    for r in core.log.reset(last) {
                        for w in &r.waiters {
                            w.err(&KaiwaError::internal(
                                "the message could not be stored; retry",
                            ));
                        }
                    }
                }
                _ => ctx.stop(),
            })
            .wait(ctx);
    }
}

/// `sync`: a page of the log after `after`, for a member.
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
