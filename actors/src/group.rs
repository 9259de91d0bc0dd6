//! The group actor: the single writer of one group's log, the keeper of its membership, and
//! the rules of its kind:
//! - flat: everyone talks;
//! - hierarchical: actions posted in a group flow down the parent→child links to every
//!   descendant group (each records a copy in its own log); text is off in a group that has
//!   children; reactions travel back up;
//! - public: every member has a private thread with the owner and admins; members never see
//!   each other.

use std::sync::Arc;

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, Context, ContextFutureSpawner, Handler,
    ResponseActFuture, ResponseFuture, WrapFuture,
};
use futures_util::future::join_all;

use crate::action_book::{self, Reaction, SubtreeReaction};
use crate::conversation::{
    self, child_key, thread_log, ConvCore, ConvRequest, Conversation, Draft, Loaded, OriginSpec,
};
use crate::engine::Engine;
use crate::ids;
use crate::protocol::{
    Ack, ChildrenOk, ConvOk, ConvType, Empty, Event, GroupKind, Id, KResult, KaiwaError, Op,
    Origin, Role, SendMsg, SyncReq,
};
use crate::reply::Waiter;
use crate::retire::{self, Idle, IdleCheck, Retiring};
use crate::rules;
use crate::store::{ConvRecord, StoredMessage, Write};

/// Longest group name, in characters.
pub const MAX_NAME: usize = 200;

/// What a new group is: its owner, name, kind, org, parent, and first members.
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
    idle: Idle,
}

/// Store key of an action this group still has to copy to its children.
fn cascade_key(conv: &str, key: &str) -> String {
    format!("cascade/{conv}/{key}")
}

fn internal<E: std::fmt::Display>(e: E) -> KaiwaError {
    KaiwaError::internal(e.to_string())
}

impl GroupActor {
    /// The actor of an existing group; it loads the group when it starts.
    pub fn load(engine: Arc<Engine>, id: Id) -> Self {
        GroupActor {
            engine,
            id,
            core: None,
            init: Some(Init::Load),
            idle: Idle::default(),
        }
    }

    /// The actor of a group being created; it checks and writes the group when it starts.
    pub fn create(engine: Arc<Engine>, id: Id, spec: GroupSpec, done: Done) -> Self {
        GroupActor {
            engine,
            id,
            core: None,
            init: Some(Init::Create(spec, done)),
            idle: Idle::default(),
        }
    }
}

impl Retiring for GroupActor {
    const KIND: &'static str = "group";

    fn idle(&mut self) -> &mut Idle {
        &mut self.idle
    }

    fn quiet(&self) -> bool {
        self.core.as_ref().is_none_or(ConvCore::is_quiet)
    }

    fn leave_directory(&self, me: &Addr<Self>) {
        self.engine.retire_group(&self.id, me)
    }

    fn current(&self) -> Option<Addr<Self>> {
        self.engine.group(&self.id)
    }
}

impl Handler<IdleCheck> for GroupActor {
    type Result = ();

    fn handle(&mut self, m: IdleCheck, ctx: &mut Context<Self>) {
        retire::check(self, ctx, m);
    }
}

/// Checks a new group against the rules, links it under its parent, and writes it.
async fn check_new(engine: Arc<Engine>, id: Id, spec: GroupSpec) -> KResult<Loaded> {
    let name = spec.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(KaiwaError::bad_frame(format!(
            "a group name has 1 to {MAX_NAME} characters"
        )));
    }
    if spec.parent.is_some() && spec.kind != GroupKind::Hierarchical {
        return Err(KaiwaError::bad_frame(
            "only hierarchical groups have a parent",
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
        if members.iter().any(|(u, _)| u == m) {
            continue;
        }
        let user = store
            .user(m)
            .await?
            .ok_or_else(|| KaiwaError::not_found(format!("no such user {m}")))?;
        rules::org::check_join(&user, spec.org.as_deref())?;
        members.push((user.id, Role::Member));
    }
    if let Some(parent) = &spec.parent {
        let addr = engine
            .group(parent)
            .ok_or_else(|| KaiwaError::not_found("no such parent group"))?;
        let link = LinkChild {
            child: id.clone(),
            by: owner.id.clone(),
            org: spec.org.clone(),
        };
        addr.send(link).await.map_err(internal)??;
    }
    let record = ConvRecord {
        id: id.clone(),
        kind: spec.kind.into(),
        name: Some(name.to_string()),
        org: spec.org.clone(),
        owner: Some(owner.id.clone()),
        parent: spec.parent.clone(),
        created_ts: ids::now_ms(),
    };
    let mut writes = vec![Write::PutConv(record.clone())];
    writes.extend(members.iter().map(|(u, r)| Write::PutMember {
        conv: id.clone(),
        user: u.clone(),
        role: *r,
    }));
    store.write(writes).await?;
    Ok(Loaded::fresh(record, members))
}

impl Actor for GroupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        retire::count(Self::KIND, 1.0);
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
                        Ok(Some(l)) => {
                            act.core = Some(ConvCore::new(act.engine.clone(), l));
                            act.resume_cascades(ctx);
                        }
                        // No such group: answer what is queued (`not_found`), then go.
                        Ok(None) => {
                            retire::unless_found(ctx, act.engine.limits.actor_idle, |_| false)
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

    fn stopped(&mut self, _: &mut Context<Self>) {
        retire::count(Self::KIND, -1.0);
    }
}

impl Conversation for GroupActor {
    fn core_mut(&mut self) -> Option<&mut ConvCore> {
        self.core.as_mut()
    }

    fn after_release(&mut self, msg: &StoredMessage, ctx: &mut Context<Self>) {
        let has_children = self.core.as_ref().is_some_and(|c| !c.children.is_empty());
        if msg.msg.body.is_action() && msg.msg.thread.is_none() && has_children {
            self.cascade(msg.clone(), ctx);
        }
    }
}

impl GroupActor {
    /// Copies an action to every child group; once all have it durably, forgets the marker
    /// that would make a restarted group copy it again.
    fn cascade(&mut self, msg: StoredMessage, ctx: &mut Context<Self>) {
        let Some(core) = &self.core else { return };
        let Some(key) = msg.msg.origin.as_ref().map(|o| o.msg_id.clone()) else {
            return;
        };
        let sends: Vec<_> = core
            .children
            .iter()
            .filter_map(|c| self.engine.group(c))
            .map(|a| a.send(Cascade { msg: msg.clone() }))
            .collect();
        let store = self.engine.store.clone();
        let marker = cascade_key(&self.id, &key);
        async move {
            let all_ok = join_all(sends)
                .await
                .into_iter()
                .all(|r| matches!(r, Ok(Ok(()))));
            if all_ok {
                if let Err(e) = store.write(vec![Write::DeleteKv { key: marker }]).await {
                    tracing::warn!("cascade marker not cleared: {e}");
                }
            }
        }
        .into_actor(self)
        .spawn(ctx);
    }

    /// After a restart: copies down the actions whose copying did not finish.
    fn resume_cascades(&mut self, ctx: &mut Context<Self>) {
        let store = self.engine.store.clone();
        let prefix = cascade_key(&self.id, "");
        async move { store.kv_scan(&prefix).await }
            .into_actor(self)
            .map(|res, act, ctx| {
                for (_, raw) in res.unwrap_or_default() {
                    if let Ok(msg) = rmp_serde::from_slice::<StoredMessage>(&raw) {
                        act.cascade(msg, ctx);
                    }
                }
            })
            .spawn(ctx);
    }

    /// A draft for an action or text posted in this group (not a public group).
    fn draft(core: &ConvCore, from: Id, p: SendMsg, thread: Option<Id>) -> Draft {
        let action = p.body.is_action();
        let extra: Option<conversation::Extra> = if action && !core.children.is_empty() {
            let conv = core.record.id.clone();
            Some(Box::new(move |m: &StoredMessage| {
                let key = m
                    .msg
                    .origin
                    .as_ref()
                    .map(|o| o.msg_id.clone())
                    .unwrap_or_default();
                let value = rmp_serde::to_vec_named(m).unwrap_or_default();
                vec![Write::PutKv {
                    key: cascade_key(&conv, &key),
                    value,
                }]
            }))
        } else {
            None
        };
        Draft {
            from,
            client_msg_id: p.client_msg_id,
            body: p.body,
            thread,
            origin: if action {
                OriginSpec::Itself
            } else {
                OriginSpec::None
            },
            recipients: core.recipients.clone(),
            extra,
            notify: None,
        }
    }

    /// `send` in a flat or hierarchical group.
    fn send(&mut self, ctx: &mut Context<Self>, from: Id, p: SendMsg, waiter: Waiter) {
        let Some(core) = &self.core else { return };
        if p.to.is_some() {
            return waiter.err(&KaiwaError::bad_frame("`to` is only for public groups"));
        }
        let has_children = !core.children.is_empty();
        if let Err(e) = rules::hierarchy::can_post(&p.body, has_children) {
            return waiter.err(&e);
        }
        if has_children && !core.role(&from).is_some_and(Role::is_admin) {
            return waiter.err(&KaiwaError::forbidden(
                "only admins post to a group with children: it reaches every descendant group",
            ));
        }
        let draft = Self::draft(core, from, p, None);
        conversation::append(self, ctx, draft, Some(waiter));
    }

    /// `send` in a public group: members write to their own thread; the owner and admins answer
    /// one member (`to`) or announce to every member's thread.
    fn send_public(&mut self, ctx: &mut Context<Self>, from: Id, p: SendMsg, waiter: Waiter) {
        let Some(core) = &self.core else { return };
        let admin = core.role(&from).is_some_and(Role::is_admin);
        let mut admins = core.admins();
        let thread = match (&p.to, admin) {
            (Some(_), false) => {
                return waiter.err(&KaiwaError::forbidden("members write only to the owner"))
            }
            (Some(to), true) if core.role(to).is_none() => {
                return waiter.err(&KaiwaError::not_found("no such member"))
            }
            (Some(to), true) => to.clone(),
            (None, false) => from.clone(),
            (None, true) => return self.announce(ctx, from, p, waiter),
        };
        if !admins.contains(&thread) {
            admins.push(thread.clone());
        }
        let mut draft = Self::draft(core, from, p, Some(thread.clone()));
        draft.recipients = admins.into();
        conversation::with_thread(self, ctx, Some(thread), move |act, ctx| {
            conversation::append(act, ctx, draft, Some(waiter))
        });
    }

    /// A public group's announcement: one copy in every member's thread, each seen by that
    /// member alone as if sent to them only. Acked once every copy is durable.
    fn announce(&mut self, ctx: &mut Context<Self>, from: Id, p: SendMsg, waiter: Waiter) {
        let Some(core) = &self.core else { return };
        let key = ids::announcement(&core.record.id, &from, &p.client_msg_id);
        let origin = Origin {
            conv: core.record.id.clone(),
            msg_id: key.clone(),
        };
        let targets: Vec<Id> = core
            .members
            .iter()
            .filter(|(_, r)| !r.is_admin())
            .map(|(u, _)| u.clone())
            .collect();
        let mut acks = Vec::with_capacity(targets.len());
        for t in targets {
            let (tx, rx) = tokio::sync::oneshot::channel();
            acks.push(rx);
            let draft = Draft {
                from: from.clone(),
                client_msg_id: format!("{}#{t}", p.client_msg_id),
                body: p.body.clone(),
                thread: Some(t.clone()),
                origin: OriginSpec::Inherit(origin.clone()),
                recipients: Arc::from(vec![t.clone()]),
                extra: None,
                notify: Some(tx),
            };
            conversation::with_thread(self, ctx, Some(t), move |act, ctx| {
                conversation::append(act, ctx, draft, None)
            });
        }
        let ts = ids::now_ms();
        async move {
            for rx in acks {
                rx.await.map_err(internal)??;
            }
            KResult::Ok(Ack {
                seq: 0,
                msg_id: key,
                ts,
            })
        }
        .into_actor(self)
        .map(move |res, _act, _ctx| waiter.reply(&res))
        .spawn(ctx);
    }

    /// The log a caller reads with `sync` (and finds messages in): a public group's member
    /// reads their own thread, its owner and admins name one.
    fn read_log(core: &ConvCore, caller: &str, thread: Option<&str>) -> KResult<Id> {
        if !core.is_public() {
            return Ok(core.record.id.clone());
        }
        let admin = core.role(caller).is_some_and(Role::is_admin);
        match (thread, admin) {
            (Some(t), true) if core.role(t).is_some() => Ok(thread_log(&core.record.id, t)),
            (Some(_), true) => Err(KaiwaError::not_found("no such member thread")),
            (None, true) => Ok(core.record.id.clone()),
            (Some(t), false) if t != caller => {
                Err(KaiwaError::forbidden("members read only their own thread"))
            }
            (_, false) => Ok(thread_log(&core.record.id, caller)),
        }
    }

    fn sync(&mut self, ctx: &mut Context<Self>, from: &str, p: SyncReq, waiter: Waiter) {
        let Some(core) = &self.core else { return };
        if core.is_public() && p.thread.is_none() && core.role(from).is_some_and(Role::is_admin) {
            return waiter.err(&KaiwaError::bad_frame(
                "owners and admins name the `thread` to sync",
            ));
        }
        match Self::read_log(core, from, p.thread.as_deref()) {
            Ok(log) => conversation::sync(self, ctx, log, p, waiter),
            Err(e) => waiter.err(&e),
        }
    }

    /// Who hears of a membership change: everyone, except in public groups (admins and the
    /// member concerned only).
    fn told_of_change(core: &ConvCore, user: &str) -> Arc<[Id]> {
        if core.is_public() {
            let mut to = core.admins();
            to.push(user.to_string());
            to.into()
        } else {
            core.recipients.clone()
        }
    }

    /// `group.add`: an admin adds a user allowed by the org rules; members are told.
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
            let w = Write::PutMember {
                conv,
                user: user.clone(),
                role: Role::Member,
            };
            engine.store.write(vec![w]).await?;
            KResult::Ok(user)
        }
        .into_actor(self)
        .map(move |res, act, _ctx| match (res, act.core.as_mut()) {
            (Ok(user), Some(core)) => {
                core.members.insert(user.clone(), Role::Member);
                core.members_changed();
                let to = Self::told_of_change(core, &user);
                core.publish(
                    to,
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

    /// `group.remove`: a member leaves or an admin removes one; members (and the removed one)
    /// are told.
    fn remove_member(&mut self, ctx: &mut Context<Self>, caller: &str, user: Id, waiter: Waiter) {
        let Some(core) = &self.core else { return };
        let check =
            rules::membership::can_remove(caller, core.role(caller), &user, core.role(&user));
        if let Err(e) = check {
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
                let told = Self::told_of_change(core, &user);
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

    /// `group.link`: makes an existing hierarchical group a child of this one. The caller must
    /// administer both; cycles and a second parent are refused with `conflict`.
    fn link(&mut self, ctx: &mut Context<Self>, caller: Id, child: Id, waiter: Waiter) {
        let Some(core) = &self.core else { return };
        if let Err(e) = rules::membership::require_admin(core.role(&caller)) {
            return waiter.err(&e);
        }
        if core.record.kind != ConvType::Hierarchical {
            return waiter.err(&KaiwaError::forbidden(
                "only hierarchical groups have children",
            ));
        }
        let engine = self.engine.clone();
        let me = core.record.clone();
        async move {
            let store = &engine.store;
            let mut rec = store
                .conv(&child)
                .await?
                .ok_or_else(|| KaiwaError::not_found("no such group"))?;
            if rec.kind != ConvType::Hierarchical {
                return Err(KaiwaError::bad_frame(
                    "only hierarchical groups can be linked",
                ));
            }
            if rec.org != me.org {
                return Err(KaiwaError::forbidden(
                    "a child group belongs to its parent's org",
                ));
            }
            let members = store.members(&child).await?;
            let role = members.iter().find(|(u, _)| *u == caller).map(|(_, r)| *r);
            rules::membership::require_admin(role)?;
            let mut ancestors = Vec::new();
            let mut up = me.parent.clone();
            while let Some(p) = up {
                if ancestors.contains(&p) {
                    break;
                }
                up = store.conv(&p).await?.and_then(|r| r.parent);
                ancestors.push(p);
            }
            rules::hierarchy::check_link(&me.id, &child, &ancestors, rec.parent.as_deref())?;
            rec.parent = Some(me.id.clone());
            let key = child_key(&me.id, &child);
            store
                .write(vec![
                    Write::PutKv {
                        key,
                        value: Vec::new(),
                    },
                    Write::PutConv(rec),
                ])
                .await?;
            KResult::Ok(child)
        }
        .into_actor(self)
        .map(move |res, act, _ctx| match (res, act.core.as_mut()) {
            (Ok(child), Some(core)) => {
                if !core.children.contains(&child) {
                    core.children.push(child.clone());
                    core.children.sort();
                }
                if let Some(c) = act.engine.group(&child) {
                    c.do_send(SetParent(Some(act.id.clone())));
                }
                waiter.ok(&Empty {});
            }
            (Err(e), _) => waiter.err(&e),
            (Ok(_), None) => waiter.err(&KaiwaError::internal("group unloaded")),
        })
        .wait(ctx);
    }

    /// `group.unlink`: an admin of this group detaches a child; no more actions reach it.
    fn unlink(&mut self, ctx: &mut Context<Self>, caller: &str, child: Id, waiter: Waiter) {
        let Some(core) = &self.core else { return };
        if let Err(e) = rules::membership::require_admin(core.role(caller)) {
            return waiter.err(&e);
        }
        if !core.children.contains(&child) {
            return waiter.err(&KaiwaError::not_found("not a child of this group"));
        }
        let engine = self.engine.clone();
        let me = self.id.clone();
        async move {
            let mut writes = vec![Write::DeleteKv {
                key: child_key(&me, &child),
            }];
            if let Some(mut rec) = engine.store.conv(&child).await? {
                rec.parent = None;
                writes.push(Write::PutConv(rec));
            }
            engine.store.write(writes).await?;
            KResult::Ok(child)
        }
        .into_actor(self)
        .map(move |res, act, _ctx| match (res, act.core.as_mut()) {
            (Ok(child), Some(core)) => {
                core.children.retain(|c| *c != child);
                if let Some(c) = act.engine.group(&child) {
                    c.do_send(SetParent(None));
                }
                waiter.ok(&Empty {});
            }
            (Err(e), _) => waiter.err(&e),
            (Ok(_), None) => waiter.err(&KaiwaError::internal("group unloaded")),
        })
        .wait(ctx);
    }
}

impl Handler<ConvRequest> for GroupActor {
    type Result = ();

    fn handle(&mut self, r: ConvRequest, ctx: &mut Context<Self>) {
        if let Some(next) = self.successor() {
            return next.do_send(r);
        }
        let Some(core) = conversation::member_gate(self.core.as_ref(), &r.from, &r.waiter) else {
            return;
        };
        let public = core.is_public();
        let read_log = |core: &ConvCore| Self::read_log(core, &r.from, None);
        match r.op {
            Op::Send(p) => {
                if let Err(e) = rules::actions::validate_action(&p.body, ids::now_ms()) {
                    return r.waiter.err(&e);
                }
                if public {
                    self.send_public(ctx, r.from, p, r.waiter)
                } else {
                    self.send(ctx, r.from, p, r.waiter)
                }
            }
            Op::Sync(p) => self.sync(ctx, &r.from, p, r.waiter),
            Op::GroupMembers(_) => conversation::members(self, ctx, &r.from, r.waiter),
            Op::GroupAdd(p) => self.add_member(ctx, &r.from, p.user, r.waiter),
            Op::GroupRemove(p) => self.remove_member(ctx, &r.from, p.user, r.waiter),
            Op::GroupChildren(_) => r.waiter.ok(&ChildrenOk {
                children: core.children.clone(),
            }),
            Op::GroupLink(p) => self.link(ctx, r.from, p.child, r.waiter),
            Op::GroupUnlink(p) => self.unlink(ctx, &r.from, p.child, r.waiter),
            Op::ActionRespond(p) => match read_log(core) {
                Ok(log) => {
                    let reaction = Reaction::Answer(p.answer);
                    action_book::react(self, ctx, log, r.from, p.msg_id, reaction, r.waiter)
                }
                Err(e) => r.waiter.err(&e),
            },
            Op::Like(p) => match read_log(core) {
                Ok(log) => {
                    let reaction = Reaction::Like(p.on);
                    action_book::react(self, ctx, log, r.from, p.msg_id, reaction, r.waiter)
                }
                Err(e) => r.waiter.err(&e),
            },
            Op::ActionResults(_) if public && !core.role(&r.from).is_some_and(Role::is_admin) => {
                r.waiter.err(&KaiwaError::forbidden(
                    "in a public group only the owner and admins see results",
                ))
            }
            Op::ActionResults(p) => match read_log(core) {
                Ok(log) => action_book::results(self, ctx, log, p.msg_id, r.waiter),
                Err(e) => r.waiter.err(&e),
            },
            _ => r
                .waiter
                .err(&KaiwaError::bad_frame("op does not address a conversation")),
        }
    }
}

/// A new child asks its parent to link it (`group.create` with `parent`).
#[derive(actix::Message)]
#[rtype(result = "KResult<()>")]
pub struct LinkChild {
    pub child: Id,
    pub by: Id,
    pub org: Option<Id>,
}

impl Handler<LinkChild> for GroupActor {
    type Result = ResponseActFuture<Self, KResult<()>>;

    fn handle(&mut self, m: LinkChild, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(next) = self.successor() {
            let answer = next.send(m);
            return Box::pin(async move { answer.await.map_err(internal)? }.into_actor(self));
        }
        let check = match &self.core {
            None => Err(KaiwaError::not_found("no such parent group")),
            Some(core) if core.record.kind != ConvType::Hierarchical => Err(KaiwaError::forbidden(
                "only hierarchical groups have children",
            )),
            Some(core) if core.record.org != m.org => Err(KaiwaError::forbidden(
                "a child group belongs to its parent's org",
            )),
            Some(core) => rules::membership::require_admin(core.role(&m.by))
                .and_then(|_| rules::hierarchy::check_link(&core.record.id, &m.child, &[], None)),
        };
        if let Err(e) = check {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        let store = self.engine.store.clone();
        let key = child_key(&self.id, &m.child);
        Box::pin(
            async move {
                store
                    .write(vec![Write::PutKv {
                        key,
                        value: Vec::new(),
                    }])
                    .await
            }
            .into_actor(self)
            .map(move |res, act, _ctx| {
                res?;
                if let Some(core) = act.core.as_mut() {
                    core.children.push(m.child);
                    core.children.sort();
                }
                Ok(())
            }),
        )
    }
}

/// A parent tells a child it was linked or unlinked.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct SetParent(pub Option<Id>);

impl Handler<SetParent> for GroupActor {
    type Result = ();

    fn handle(&mut self, m: SetParent, _ctx: &mut Context<Self>) {
        if let Some(next) = self.successor() {
            return next.do_send(m);
        }
        if let Some(core) = self.core.as_mut() {
            core.record.parent = m.0;
        }
    }
}

/// A parent copies an action down: the child appends it to its own log (its own seq and msg
/// id, the same origin) and answers once the copy is durable. Idempotent: a repeated copy is
/// recognised by its origin.
#[derive(actix::Message)]
#[rtype(result = "KResult<()>")]
pub struct Cascade {
    pub msg: StoredMessage,
}

impl Handler<Cascade> for GroupActor {
    type Result = ResponseFuture<KResult<()>>;

    fn handle(&mut self, m: Cascade, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(next) = self.successor() {
            let answer = next.send(m);
            return Box::pin(async move { answer.await.map_err(internal)? });
        }
        let Some(core) = &self.core else {
            return Box::pin(async { Err(KaiwaError::not_found("no such group")) });
        };
        let Some(origin) = m.msg.msg.origin.clone() else {
            return Box::pin(async { Err(KaiwaError::bad_frame("a copied action has an origin")) });
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let p = SendMsg {
            conv: core.record.id.clone(),
            client_msg_id: format!("~{}", origin.msg_id),
            body: m.msg.msg.body,
            to: None,
        };
        let mut draft = Self::draft(core, m.msg.msg.from, p, None);
        draft.origin = OriginSpec::Inherit(origin);
        draft.notify = Some(tx);
        conversation::append(self, ctx, draft, None);
        Box::pin(async move { rx.await.map_err(internal)?.map(|_| ()) })
    }
}

impl Handler<SubtreeReaction> for GroupActor {
    type Result = ();

    fn handle(&mut self, r: SubtreeReaction, ctx: &mut Context<Self>) {
        if let Some(next) = self.successor() {
            return next.do_send(r);
        }
        action_book::from_child(self, ctx, r);
    }
}
