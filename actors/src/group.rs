//! The group actor: the single writer of one group's log, and the keeper of its membership.

use std::sync::Arc;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, ContextFutureSpawner, Handler,
    WrapFuture,
};

use crate::conversation::{self, ConvCore, ConvRequest, Conversation, Draft, Loaded};
use crate::engine::Engine;
use crate::ids;
use crate::protocol::{ConvOk, Empty, Event, GroupKind, Id, KResult, KaiwaError, Op, Role};
use crate::reply::Waiter;
use crate::rules;
use crate::store::{ConvRecord, Write};

/// Longest group name, in characters.
pub const MAX_NAME: usize = 200;

/// What a new group is: its owner, name, kind, org, and first members.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub owner: Id,
    pub name: String,
    pub kind: GroupKind,
    pub org: Option<Id>,
    pub parent: Option<Id>,
    pub members: Vec<Id>,
}

/// Called once with the outcome of a create.
pub type Done = Box<dyn FnOnce(KResult<ConvOk>) + Send>;

enum Init {
    Load,
    Create(GroupSpec, Done),
}

/// One group.
pub struct GroupActor {
    engine: Arc<Engine>,
    id: Id,
    core: Option<ConvCore>,
    init: Option<Init>,
}

impl GroupActor {
    /// The actor of an existing group; it loads the group when it starts.
    pub fn load(engine: Arc<Engine>, id: Id) -> Self {
        GroupActor {
            engine,
            id,
            core: None,
            init: Some(Init::Load),
        }
    }

    /// The actor of a group being created; it checks and writes the group when it starts.
    pub fn create(engine: Arc<Engine>, id: Id, spec: GroupSpec, done: Done) -> Self {
        GroupActor {
            engine,
            id,
            core: None,
            init: Some(Init::Create(spec, done)),
        }
    }
}

/// Checks a new group against the rules and builds what to write.
async fn check_new(engine: Arc<Engine>, id: Id, spec: GroupSpec) -> KResult<Loaded> {
    let name = spec.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(KaiwaError::bad_frame(format!(
            "a group name has 1 to {MAX_NAME} characters"
        )));
    }
    if spec.parent.is_some() {
        return Err(KaiwaError::bad_frame(
            "`parent` is not supported for this group kind",
        ));
    }
    let store = &engine.store;
    if let Some(org) = &spec.org {
        store
            .org(org)
            .await?
            .ok_or_else(|| KaiwaError::not_found("no such org"))?;
    }
    let owner = store
        .user(&spec.owner)
        .await?
        .ok_or_else(|| KaiwaError::not_found("no such user"))?;
    rules::org::check_join(&owner, spec.org.as_deref())?;
    let mut members = vec![(owner.id.clone(), Role::Owner)];
    for m in &spec.members {
        if *m == owner.id || members.iter().any(|(u, _)| u == m) {
            continue;
        }
        let user = store
            .user(m)
            .await?
            .ok_or_else(|| KaiwaError::not_found(format!("no such user {m}")))?;
        rules::org::check_join(&user, spec.org.as_deref())?;
        members.push((user.id, Role::Member));
    }
    let record = ConvRecord {
        id: id.clone(),
        kind: spec.kind.into(),
        name: Some(name.to_string()),
        org: spec.org.clone(),
        owner: Some(owner.id.clone()),
        parent: None,
        created_ts: ids::now_ms(),
    };
    let mut writes = vec![Write::PutConv(record.clone())];
    writes.extend(members.iter().map(|(u, r)| Write::PutMember {
        conv: id.clone(),
        user: u.clone(),
        role: *r,
    }));
    store.write(writes).await?;
    Ok(Loaded {
        record,
        members,
        last_seq: 0,
        tail: Vec::new(),
    })
}

impl Actor for GroupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match self.init.take() {
            Some(Init::Create(spec, done)) => {
                check_new(self.engine.clone(), self.id.clone(), spec)
                    .into_actor(self)
                    .map(|res, act, ctx| match res {
                        Ok(l) => {
                            act.core = Some(ConvCore::new(act.engine.clone(), l));
                            done(Ok(ConvOk {
                                conv: act.id.clone(),
                            }));
                        }
                        Err(e) => {
                            done(Err(e));
                            act.engine.forget_group(&act.id);
                            ctx.stop();
                        }
                    })
                    .wait(ctx);
            }
            _ => {
                ConvCore::load(self.engine.clone(), self.id.clone())
                    .into_actor(self)
                    .map(|res, act, ctx| match res {
                        Ok(Some(l)) => act.core = Some(ConvCore::new(act.engine.clone(), l)),
                        Ok(None) => {
                            // No such group: answer what is queued, then go.
                            ctx.run_later(std::time::Duration::from_secs(5), |act, ctx| {
                                act.engine.forget_group(&act.id);
                                ctx.stop();
                            });
                        }
                        Err(e) => {
                            tracing::error!("group {} failed to load: {e}", act.id);
                            act.engine.forget_group(&act.id);
                            ctx.stop();
                        }
                    })
                    .wait(ctx);
            }
        }
    }
}

impl Conversation for GroupActor {
    fn core_mut(&mut self) -> Option<&mut ConvCore> {
        self.core.as_mut()
    }
}

impl GroupActor {
    /// `group.add`: an admin adds a user allowed by the org rules; every member is told.
    fn add_member(&mut self, ctx: &mut Context<Self>, caller: &str, user: Id, waiter: Waiter) {
        let Some(core) = &self.core else { return };
        if let Err(e) = rules::membership::require_admin(core.role(caller)) {
            return waiter.err(&e);
        }
        if core.role(&user).is_some() {
            return waiter.ok(&Empty {});
        }
        let engine = self.engine.clone();
        let conv = self.id.clone();
        let org = core.record.org.clone();
        async move {
            let rec = engine
                .store
                .user(&user)
                .await?
                .ok_or_else(|| KaiwaError::not_found("no such user"))?;
            rules::org::check_join(&rec, org.as_deref())?;
            engine
                .store
                .write(vec![Write::PutMember {
                    conv,
                    user: user.clone(),
                    role: Role::Member,
                }])
                .await?;
            KResult::Ok(user)
        }
        .into_actor(self)
        .map(move |res, act, _ctx| match (res, act.core.as_mut()) {
            (Ok(user), Some(core)) => {
                core.members.insert(user.clone(), Role::Member);
                core.members_changed();
                core.publish(
                    core.recipients.clone(),
                    Event::MemberAdded {
                        conv: act.id.clone(),
                        user,
                    },
                );
                waiter.ok(&Empty {});
            }
            (Err(e), _) => waiter.err(&e),
            (Ok(_), None) => waiter.err(&KaiwaError::internal("group unloaded")),
        })
        .wait(ctx);
    }

    /// `group.remove`: a member leaves or an admin removes one; every member (and the removed
    /// one) is told.
    fn remove_member(&mut self, ctx: &mut Context<Self>, caller: &str, user: Id, waiter: Waiter) {
        let Some(core) = &self.core else { return };
        if let Err(e) =
            rules::membership::can_remove(caller, core.role(caller), &user, core.role(&user))
        {
            return waiter.err(&e);
        }
        let store = self.engine.store.clone();
        let conv = self.id.clone();
        let u = user.clone();
        async move {
            store
                .write(vec![Write::RemoveMember { conv, user: u }])
                .await
        }
        .into_actor(self)
        .map(move |res, act, _ctx| match (res, act.core.as_mut()) {
            (Ok(()), Some(core)) => {
                let told = core.recipients.clone();
                core.members.remove(&user);
                core.members_changed();
                core.publish(
                    told,
                    Event::MemberRemoved {
                        conv: act.id.clone(),
                        user,
                    },
                );
                waiter.ok(&Empty {});
            }
            (Err(e), _) => waiter.err(&e.into()),
            (Ok(()), None) => waiter.err(&KaiwaError::internal("group unloaded")),
        })
        .wait(ctx);
    }
}

impl Handler<ConvRequest> for GroupActor {
    type Result = ();

    fn handle(&mut self, r: ConvRequest, ctx: &mut Context<Self>) {
        let Some(core) = &self.core else {
            r.waiter.err(&KaiwaError::not_found("no such conversation"));
            return;
        };
        if let Err(e) = rules::membership::require_member(core.role(&r.from)) {
            r.waiter.err(&e);
            return;
        }
        match r.op {
            Op::Send(p) => {
                if p.to.is_some() {
                    r.waiter
                        .err(&KaiwaError::bad_frame("`to` is only for public groups"));
                    return;
                }
                let draft = Draft {
                    from: r.from,
                    client_msg_id: p.client_msg_id,
                    body: p.body,
                    thread: None,
                    origin: None,
                    recipients: core.recipients.clone(),
                };
                conversation::append(self, ctx, draft, Some(r.waiter));
            }
            Op::Sync(p) => {
                let log = core.log.log.clone();
                conversation::sync(self, ctx, log, p, r.waiter);
            }
            Op::GroupMembers(_) => r.waiter.ok(&core.members_view()),
            Op::GroupAdd(p) => self.add_member(ctx, &r.from, p.user, r.waiter),
            Op::GroupRemove(p) => self.remove_member(ctx, &r.from, p.user, r.waiter),
            _ => r
                .waiter
                .err(&KaiwaError::bad_frame("op does not address a conversation")),
        }
    }
}
