//! Reactions to messages — answers to polls and surveys, comments, likes — and their tallies.
//!
//! Every conversation keeps, per action, the tally of everything that reached it: its own
//! members' reactions and, in a hierarchical group, those that travelled up from descendant
//! groups. So `action.results` anywhere in a tree is the tally of that group's subtree, and a
//! user counts once per tally however many of its groups they are in. Tallies are persisted
//! with every change; results events to those who may see them are coalesced.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, ContextFutureSpawner, WrapFuture};
use serde::{Deserialize, Serialize};

use crate::conversation::{copy_key, find_message, Conversation};
use crate::engine::Engine;
use crate::ids::now_ms;
use crate::protocol::actions::{
    ActionResponseEvent, ActionResults, ActionResultsEvent, Answer, LikesOk,
};
use crate::protocol::{Body, Empty, Event, Id, KResult, KaiwaError, Origin};
use crate::reply::Waiter;
use crate::rules::actions::{can_like, validate_answer, Tally};
use crate::store::{StoreResult, Write};

/// How long results events wait to gather more changes.
pub const RESULTS_COALESCE: Duration = Duration::from_millis(100);

/// What an action is, stored by every conversation that holds a copy of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionInfo {
    pub body: Body,
    pub creator: Id,
    pub origin: Origin,
}

impl ActionInfo {
    /// The store write that records this action in `conv`.
    pub fn write(&self, conv: &str) -> Write {
        Write::PutKv {
            key: info_key(conv, &self.origin.msg_id),
            value: rmp_serde::to_vec_named(self).unwrap_or_default(),
        }
    }
}

fn info_key(conv: &str, key: &str) -> String {
    format!("action/{conv}/{key}")
}

fn tally_key(conv: &str, key: &str) -> String {
    format!("tally/{conv}/{key}")
}

/// A reaction as it travels: an answer (or comment), or a like switched on or off.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reaction {
    Answer(Answer),
    Like(bool),
}

/// One action (or likeable message) as this conversation knows it.
pub struct Reactions {
    pub info: ActionInfo,
    /// This conversation's copy of the message, for events.
    pub local_msg_id: Id,
    pub tally: Tally,
}

/// The reactions of one conversation, by action key (the origin message id).
#[derive(Default)]
pub struct ActionBook {
    by_key: HashMap<Id, Reactions>,
    key_of: HashMap<Id, Id>,
    dirty: HashSet<Id>,
    flush_scheduled: bool,
}

/// A reaction that travels up a tree to the group where the action was posted.
#[derive(actix::Message, Clone)]
#[rtype(result = "()")]
pub struct SubtreeReaction {
    pub info: ActionInfo,
    pub user: Id,
    pub reaction: Reaction,
}

async fn load_tally(engine: &Engine, conv: &str, key: &str) -> StoreResult<Tally> {
    Ok(match engine.store.kv(&tally_key(conv, key)).await? {
        Some(b) => rmp_serde::from_slice(&b).unwrap_or_default(),
        None => Tally::new(),
    })
}

/// Finds what a local message id refers to: an action copy, or a plain message.
async fn load_by_msg(engine: Arc<Engine>, conv: Id, log: Id, msg_id: Id) -> KResult<Reactions> {
    let m = find_message(engine.clone(), log, msg_id.clone()).await?.msg;
    let info = match m.origin {
        Some(origin) => ActionInfo {
            body: m.body,
            creator: m.from,
            origin,
        },
        None => ActionInfo {
            body: m.body,
            creator: m.from,
            origin: Origin {
                conv: conv.clone(),
                msg_id: msg_id.clone(),
            },
        },
    };
    let tally = load_tally(&engine, &conv, &info.origin.msg_id).await?;
    // A public group's announcement is known by its key, whichever thread's copy was named.
    let local_msg_id = if m.thread.is_some() {
        info.origin.msg_id.clone()
    } else {
        msg_id
    };
    Ok(Reactions {
        info,
        local_msg_id,
        tally,
    })
}

/// Finds an action by its key (the origin message id), as reactions from below name it.
async fn load_by_key(engine: Arc<Engine>, conv: Id, key: Id) -> KResult<Option<Reactions>> {
    let Some(raw) = engine.store.kv(&info_key(&conv, &key)).await? else {
        return Ok(None);
    };
    let info: ActionInfo =
        rmp_serde::from_slice(&raw).map_err(|e| KaiwaError::internal(e.to_string()))?;
    let local_msg_id = match engine.store.kv(&copy_key(&conv, &key)).await? {
        Some(b) => String::from_utf8(b).unwrap_or_else(|_| key.clone()),
        None => key.clone(),
    };
    let tally = load_tally(&engine, &conv, &key).await?;
    Ok(Some(Reactions {
        info,
        local_msg_id,
        tally,
    }))
}

/// Runs `f` with the reactions of `msg_id` (a local message id, or an action key), loading
/// them first when needed.
fn with_reactions<A, F>(act: &mut A, ctx: &mut Context<A>, log: Id, msg_id: Id, f: F)
where
    A: Conversation,
    F: FnOnce(&mut A, &mut Context<A>, KResult<Id>) + 'static,
{
    let Some(core) = act.core_mut() else { return };
    if let Some(key) = core.book.key_of.get(&msg_id).cloned() {
        return f(act, ctx, Ok(key));
    }
    let engine = core.engine.clone();
    let conv = core.record.id.clone();
    let asked = msg_id.clone();
    async move {
        match load_by_key(engine.clone(), conv.clone(), asked.clone()).await? {
            Some(r) => Ok(r),
            None => load_by_msg(engine, conv, log, asked).await,
        }
    }
    .into_actor(act)
    .map(
        move |res: KResult<Reactions>, act, ctx| match (res, act.core_mut()) {
            (Ok(r), Some(core)) => {
                let key = r.info.origin.msg_id.clone();
                core.book.key_of.insert(msg_id, key.clone());
                core.book.key_of.insert(r.local_msg_id.clone(), key.clone());
                core.book.by_key.entry(key.clone()).or_insert(r);
                f(act, ctx, Ok(key));
            }
            (Err(e), _) => f(act, ctx, Err(e)),
            (Ok(_), None) => {}
        },
    )
    .wait(ctx);
}

/// Applies a checked reaction: records it, persists the tally, sends it up the tree when the
/// action started above, and schedules results events. `done` runs once the tally is durable.
fn apply<A, F>(act: &mut A, ctx: &mut Context<A>, key: Id, user: Id, reaction: Reaction, done: F)
where
    A: Conversation,
    F: FnOnce(KResult<u64>) + 'static,
{
    let Some(core) = act.core_mut() else { return };
    let Some(r) = core.book.by_key.get_mut(&key) else {
        return;
    };
    let likes = match &reaction {
        Reaction::Answer(a) => {
            r.tally.record(&user, a.clone());
            r.tally.likes()
        }
        Reaction::Like(on) => r.tally.set_like(&user, *on),
    };
    let conv = core.record.id.clone();
    let value = rmp_serde::to_vec_named(&r.tally).unwrap_or_default();
    let info = r.info.clone();
    let write = core.engine.store.write(vec![Write::PutKv {
        key: tally_key(&conv, &key),
        value,
    }]);
    // Up the tree, unless the action started here.
    if info.origin.conv != conv {
        if let Some(parent) = core
            .record
            .parent
            .as_deref()
            .and_then(|p| core.engine.group(p))
        {
            parent.do_send(SubtreeReaction {
                info: info.clone(),
                user: user.clone(),
                reaction: reaction.clone(),
            });
        }
    } else if matches!(reaction, Reaction::Answer(_)) {
        let ev = Event::ActionResponse(ActionResponseEvent {
            conv: conv.clone(),
            msg_id: key.clone(),
            user,
        });
        core.publish(Arc::from(vec![info.creator.clone()]), ev);
    }
    core.book.dirty.insert(key);
    if !core.book.flush_scheduled {
        core.book.flush_scheduled = true;
        ctx.run_later(RESULTS_COALESCE, |act, _ctx| flush_results(act));
    }
    write
        .into_actor(act)
        .map(move |res, _act, _ctx| done(res.map(|_| likes).map_err(Into::into)))
        .spawn(ctx);
}

/// Sends coalesced `action_results` events to whoever may see the results: every member, but
/// in a public group (where results name who answered) the owner and admins only.
fn flush_results<A: Conversation>(act: &mut A) {
    let Some(core) = act.core_mut() else { return };
    core.book.flush_scheduled = false;
    let to: Arc<[Id]> = if core.is_public() {
        core.admins().into()
    } else {
        core.recipients.clone()
    };
    for key in std::mem::take(&mut core.book.dirty) {
        let Some(r) = core.book.by_key.get(&key) else {
            continue;
        };
        let ev = Event::ActionResults(ActionResultsEvent {
            conv: core.record.id.clone(),
            msg_id: r.local_msg_id.clone(),
            results: r.tally.results(&r.info.body),
        });
        core.publish(to.clone(), ev);
    }
}

/// `action.respond` and `like` from a member of this conversation.
pub fn react<A: Conversation>(
    act: &mut A,
    ctx: &mut Context<A>,
    log: Id,
    user: Id,
    msg_id: Id,
    reaction: Reaction,
    waiter: Waiter,
) {
    with_reactions(act, ctx, log, msg_id, move |act, ctx, key| {
        let key = match key {
            Ok(k) => k,
            Err(e) => return waiter.err(&e),
        };
        let Some(core) = act.core_mut() else { return };
        let Some(r) = core.book.by_key.get(&key) else {
            return;
        };
        let check = match &reaction {
            Reaction::Answer(a) => validate_answer(&r.info.body, a, now_ms()),
            Reaction::Like(_) => can_like(&r.info.body),
        };
        if let Err(e) = check {
            return waiter.err(&e);
        }
        let is_like = matches!(reaction, Reaction::Like(_));
        apply(act, ctx, key, user, reaction, move |res| match res {
            Ok(likes) if is_like => waiter.ok(&LikesOk { likes }),
            Ok(_) => waiter.ok(&Empty {}),
            Err(e) => waiter.err(&e),
        });
    });
}

/// A reaction from a descendant group: recorded here too, then passed further up.
pub fn from_child<A: Conversation>(act: &mut A, ctx: &mut Context<A>, r: SubtreeReaction) {
    let key = r.info.origin.msg_id.clone();
    let Some(core) = act.core_mut() else { return };
    let log = core.record.id.clone();
    with_reactions(act, ctx, log, key, move |act, ctx, key| match key {
        Ok(key) => apply(act, ctx, key, r.user, r.reaction, |res| {
            if let Err(e) = res {
                tracing::warn!("tally of a subtree reaction not stored: {e}");
            }
        }),
        Err(e) => tracing::warn!("subtree reaction for an unknown action: {e}"),
    });
}

/// `action.results`: the tally of this conversation (its subtree, in a tree).
pub fn results<A: Conversation>(
    act: &mut A,
    ctx: &mut Context<A>,
    log: Id,
    msg_id: Id,
    waiter: Waiter,
) {
    with_reactions(act, ctx, log, msg_id, move |act, _ctx, key| {
        let key = match key {
            Ok(k) => k,
            Err(e) => return waiter.err(&e),
        };
        let Some(core) = act.core_mut() else { return };
        match core.book.by_key.get(&key) {
            Some(r) => {
                let res: ActionResults = r.tally.results(&r.info.body);
                waiter.ok(&res)
            }
            None => waiter.err(&KaiwaError::not_found("no such action")),
        }
    });
}
