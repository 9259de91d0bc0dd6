//! The 1:1 chat actor: the single writer of one chat's log. A chat's id is derived from its pair
//! (and org), so `chat.open` finds it without a lookup; the first open creates it.

use std::sync::Arc;

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, Context, ContextFutureSpawner, Handler, WrapFuture,
};

use crate::action_book::{self, Reaction};
use crate::conversation::{self, ConvCore, ConvRequest, Conversation, Draft, Loaded, OriginSpec};
use crate::engine::Engine;
use crate::ids;
use crate::protocol::{ConvOk, ConvType, Id, KResult, KaiwaError, Op, Role};
use crate::reply::Waiter;
use crate::retire::{self, Idle, IdleCheck, Retiring};
use crate::rules;
use crate::store::{ConvRecord, Write};

/// One 1:1 chat.
pub struct ChatActor {
    engine: Arc<Engine>,
    id: Id,
    core: Option<ConvCore>,
    idle: Idle,
}

impl ChatActor {
    /// The actor of chat `id`; it loads the chat when it starts.
    pub fn new(engine: Arc<Engine>, id: Id) -> Self {
        ChatActor {
            engine,
            id,
            core: None,
            idle: Idle::default(),
        }
    }
}

impl Retiring for ChatActor {
    const KIND: &'static str = "chat";

    fn idle(&mut self) -> &mut Idle {
        &mut self.idle
    }

    fn quiet(&self) -> bool {
        self.core.as_ref().is_none_or(ConvCore::is_quiet)
    }

    fn leave_directory(&self, me: &Addr<Self>) {
        self.engine.retire_chat(&self.id, me)
    }

    fn current(&self) -> Option<Addr<Self>> {
        self.engine.chat(&self.id)
    }
}

impl Handler<IdleCheck> for ChatActor {
    type Result = ();

    fn handle(&mut self, m: IdleCheck, ctx: &mut Context<Self>) {
        retire::check(self, ctx, m);
    }
}

impl Actor for ChatActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        retire::count(Self::KIND, 1.0);
        ConvCore::load(self.engine.clone(), self.id.clone())
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(Some(l)) => act.core = Some(ConvCore::new(act.engine.clone(), l)),
                // Not created yet: `chat.open` may create it in this activation.
                Ok(None) => retire::unless_found(ctx, act.engine.limits.actor_idle, |act| {
                    act.core.is_some()
                }),
                Err(e) => {
                    tracing::error!("chat {} failed to load: {e}", act.id);
                    act.engine.forget_chat(&act.id);
                    ctx.stop();
                }
            })
            .wait(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        retire::count(Self::KIND, -1.0);
    }
}

impl Conversation for ChatActor {
    fn core_mut(&mut self) -> Option<&mut ConvCore> {
        self.core.as_mut()
    }
}

/// `chat.open` from `caller` with `other`, inside `org` when given.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct OpenChat {
    pub caller: Id,
    pub other: Id,
    pub org: Option<Id>,
    pub waiter: Waiter,
}

impl Handler<OpenChat> for ChatActor {
    type Result = ();

    fn handle(&mut self, m: OpenChat, ctx: &mut Context<Self>) {
        if let Some(next) = self.successor() {
            return next.do_send(m);
        }
        if let Some(core) = &self.core {
            match core.role(&m.caller) {
                Some(_) => m.waiter.ok(&ConvOk {
                    conv: self.id.clone(),
                }),
                None => m
                    .waiter
                    .err(&KaiwaError::forbidden("not a member of this chat")),
            }
            return;
        }
        // First open: check both users and the org, write the chat, then answer. `wait` keeps
        // a concurrent open from creating it twice.
        let engine = self.engine.clone();
        let id = self.id.clone();
        let create = async move {
            let store = &engine.store;
            let a = store
                .user(&m.caller)
                .await?
                .ok_or_else(|| KaiwaError::not_found("no such user"))?;
            let b = store
                .user(&m.other)
                .await?
                .ok_or_else(|| KaiwaError::not_found("no such user"))?;
            if let Some(org) = &m.org {
                store
                    .org(org)
                    .await?
                    .ok_or_else(|| KaiwaError::not_found("no such org"))?;
            }
            rules::org::check_chat(&a, &b, m.org.as_deref())?;
            let record = ConvRecord {
                id: id.clone(),
                kind: ConvType::Chat,
                name: None,
                org: m.org.clone(),
                owner: None,
                parent: None,
                created_ts: ids::now_ms(),
            };
            let members = vec![(a.id.clone(), Role::Member), (b.id.clone(), Role::Member)];
            let mut writes = vec![Write::PutConv(record.clone())];
            writes.extend(members.iter().map(|(u, r)| Write::PutMember {
                conv: id.clone(),
                user: u.clone(),
                role: *r,
            }));
            store.write(writes).await?;
            KResult::Ok(Loaded::fresh(record, members))
        };
        create
            .into_actor(self)
            .map(move |res, act, _ctx| match res {
                Ok(l) => {
                    act.core = Some(ConvCore::new(act.engine.clone(), l));
                    m.waiter.ok(&ConvOk {
                        conv: act.id.clone(),
                    });
                }
                Err(e) => m.waiter.err(&e),
            })
            .wait(ctx);
    }
}

impl Handler<ConvRequest> for ChatActor {
    type Result = ();

    fn handle(&mut self, r: ConvRequest, ctx: &mut Context<Self>) {
        if let Some(next) = self.successor() {
            return next.do_send(r);
        }
        let Some(core) = conversation::member_gate(self.core.as_ref(), &r.from, &r.waiter) else {
            return;
        };
        let log = core.log.log.clone();
        match r.op {
            Op::Send(p) => {
                if p.to.is_some() {
                    r.waiter
                        .err(&KaiwaError::bad_frame("`to` is only for public groups"));
                    return;
                }
                if let Err(e) = rules::actions::validate_action(&p.body, ids::now_ms()) {
                    return r.waiter.err(&e);
                }
                let origin = if p.body.is_action() {
                    OriginSpec::Itself
                } else {
                    OriginSpec::None
                };
                let draft = Draft {
                    from: r.from,
                    client_msg_id: p.client_msg_id,
                    body: p.body,
                    thread: None,
                    origin,
                    recipients: core.recipients.clone(),
                    extra: None,
                    notify: None,
                };
                conversation::append(self, ctx, draft, Some(r.waiter));
            }
            Op::Sync(p) => conversation::sync(self, ctx, log, p, r.waiter),
            Op::ActionRespond(p) => {
                let reaction = Reaction::Answer(p.answer);
                action_book::react(self, ctx, log, r.from, p.msg_id, reaction, r.waiter)
            }
            Op::Like(p) => action_book::react(
                self,
                ctx,
                log,
                r.from,
                p.msg_id,
                Reaction::Like(p.on),
                r.waiter,
            ),
            Op::ActionResults(p) => action_book::results(self, ctx, log, p.msg_id, r.waiter),
            Op::GroupMembers(_) => conversation::members(self, ctx, &r.from, r.waiter),
            Op::GroupAdd(_)
            | Op::GroupRemove(_)
            | Op::GroupChildren(_)
            | Op::GroupLink(_)
            | Op::GroupUnlink(_) => r.waiter.err(&KaiwaError::forbidden(
                "a 1:1 chat has no members to manage",
            )),
            _ => r
                .waiter
                .err(&KaiwaError::bad_frame("op does not address a conversation")),
        }
    }
}
