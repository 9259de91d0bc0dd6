//! The user actor: a user's profile and state, the gate every connection passes, and the
//! list of the user's conversations.

use std::sync::Arc;

use actix::{
    Actor, ActorFutureExt, Addr, Context, ContextFutureSpawner, Handler, Response, WrapFuture,
};

use crate::engine::Engine;
use crate::outbox::CLOSE_USER_DISABLED;
use crate::protocol::{ConvSummary, ConvType, ConvsOk, Id, KResult, KaiwaError};
use crate::reply::Waiter;
use crate::retire::{self, Idle, IdleCheck, Retiring};
use crate::rules;
use crate::store::{StoreResult, UserRecord, UserState, Write};

/// One user.
pub struct UserActor {
    engine: Arc<Engine>,
    id: Id,
    record: Option<UserRecord>,
    idle: Idle,
}

impl UserActor {
    /// The actor of user `id`; it loads the user when it starts.
    pub fn new(engine: Arc<Engine>, id: Id) -> Self {
        UserActor {
            engine,
            id,
            record: None,
            idle: Idle::default(),
        }
    }
}

impl Retiring for UserActor {
    const KIND: &'static str = "user";

    fn idle(&mut self) -> &mut Idle {
        &mut self.idle
    }

    /// A user actor's only write (a state change) answers before the actor is idle again.
    fn quiet(&self) -> bool {
        true
    }

    fn leave_directory(&self, me: &Addr<Self>) {
        self.engine.retire_user(&self.id, me)
    }

    fn current(&self) -> Option<Addr<Self>> {
        self.engine.user(&self.id)
    }
}

impl Handler<IdleCheck> for UserActor {
    type Result = ();

    fn handle(&mut self, m: IdleCheck, ctx: &mut Context<Self>) {
        retire::check(self, ctx, m);
    }
}

/// Forwards `m` to `next` and answers with its answer; `gone` when the successor is.
fn pass_on<M>(next: Addr<UserActor>, m: M, gone: M::Result) -> Response<M::Result>
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
    UserActor: Handler<M>,
{
    let answer = next.send(m);
    Response::fut(async move { answer.await.unwrap_or(gone) })
}

impl Actor for UserActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        retire::count(Self::KIND, 1.0);
        let store = self.engine.store.clone();
        let id = self.id.clone();
        async move { store.user(&id).await }
            .into_actor(self)
            .map(|res, act, _ctx| match res {
                Ok(r) => act.record = r,
                Err(e) => tracing::error!("user {} failed to load: {e}", act.id),
            })
            .wait(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        retire::count(Self::KIND, -1.0);
    }
}

/// A connection asks to attach: answered with the user's record, or why it may not connect.
#[derive(actix::Message)]
#[rtype(result = "KResult<UserRecord>")]
pub struct Attach;

/// Answered at once (no task per connect) unless the actor has retired.
impl Handler<Attach> for UserActor {
    type Result = Response<KResult<UserRecord>>;

    fn handle(&mut self, m: Attach, _: &mut Context<Self>) -> Self::Result {
        if let Some(next) = self.successor() {
            return pass_on(next, m, Err(unavailable()));
        }
        let answer = match &self.record {
            None => Err(KaiwaError::new(
                crate::protocol::ErrorCode::Unauthorized,
                "no such user",
            )),
            Some(r) => rules::user_state::can_connect(r.state).map(|_| r.clone()),
        };
        Response::reply(answer)
    }
}

fn unavailable() -> KaiwaError {
    KaiwaError::internal("user actor unavailable")
}

/// Whether user `id` may open a connection (before the WebSocket upgrade): `unauthorized`
/// for no such user, `forbidden` for a suspended or deleted one. Alone, the user actor
/// answers; in a cluster the shared store does, so that connecting on any node neither
/// activates the user there nor waits on a trip to the owner node.
pub async fn admit(engine: &Arc<Engine>, id: &str) -> KResult<()> {
    let no_user = || KaiwaError::new(crate::protocol::ErrorCode::Unauthorized, "no such user");
    if engine.cluster().is_some() {
        if !id.starts_with(crate::ids::USER) {
            return Err(no_user());
        }
        let rec = engine.store.user(id).await?.ok_or_else(no_user)?;
        return rules::user_state::can_connect(rec.state);
    }
    let user = engine.user(id).ok_or_else(no_user)?;
    user.send(Attach)
        .await
        .map_err(|_| unavailable())?
        .map(|_| ())
}

/// The user's record, if the user exists.
#[derive(actix::Message)]
#[rtype(result = "Option<UserRecord>")]
pub struct GetUser;

impl Handler<GetUser> for UserActor {
    type Result = Response<Option<UserRecord>>;

    fn handle(&mut self, m: GetUser, _: &mut Context<Self>) -> Self::Result {
        if let Some(next) = self.successor() {
            return pass_on(next, m, None);
        }
        Response::reply(self.record.clone())
    }
}

/// An admin changes the user's state; suspended and deleted users are disconnected at once.
#[derive(actix::Message)]
#[rtype(result = "KResult<UserRecord>")]
pub struct SetState(pub UserState);

impl Handler<SetState> for UserActor {
    type Result = actix::ResponseActFuture<Self, KResult<UserRecord>>;

    fn handle(&mut self, m: SetState, _: &mut Context<Self>) -> Self::Result {
        if let Some(next) = self.successor() {
            let answer = next.send(m);
            return Box::pin(
                async move { answer.await.unwrap_or_else(|_| Err(unavailable())) }.into_actor(self),
            );
        }
        let Some(mut rec) = self.record.clone() else {
            return Box::pin(actix::fut::ready(Err(KaiwaError::not_found(
                "no such user",
            ))));
        };
        rec.state = m.0;
        let store = self.engine.store.clone();
        let write = rec.clone();
        Box::pin(
            async move { store.write(vec![Write::PutUser(write)]).await }
                .into_actor(self)
                .map(move |res, act, _ctx| {
                    res?;
                    act.record = Some(rec.clone());
                    if rules::user_state::can_connect(rec.state).is_err() {
                        match act.engine.cluster() {
                            // Sessions may be on any node: presence says which.
                            Some(c) => c.close_user_everywhere(&act.id),
                            None => {
                                for c in act.engine.hub.conns_of(&act.id) {
                                    c.outbox
                                        .close(CLOSE_USER_DISABLED, "user is no longer active");
                                }
                            }
                        }
                    }
                    Ok(rec)
                }),
        )
    }
}

/// `convs`: every conversation of the user, with its last seq.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Convs(pub Waiter);

async fn list_convs(engine: Arc<Engine>, user: Id) -> StoreResult<ConvsOk> {
    let mut convs = Vec::new();
    for id in engine.store.user_convs(&user).await? {
        let Some(rec) = engine.store.conv(&id).await? else {
            continue;
        };
        // A public group's member sees their own thread.
        let log = match rec.kind {
            ConvType::Public => crate::conversation::thread_log(&id, &user),
            _ => id.clone(),
        };
        let last_seq = engine.store.last_seq(&log).await?;
        convs.push(ConvSummary {
            conv: rec.id,
            kind: rec.kind,
            name: rec.name,
            org: rec.org,
            last_seq,
        });
    }
    Ok(ConvsOk { convs })
}

impl Handler<Convs> for UserActor {
    type Result = ();

    fn handle(&mut self, m: Convs, ctx: &mut Context<Self>) {
        if let Some(next) = self.successor() {
            return next.do_send(m);
        }
        list_convs(self.engine.clone(), self.id.clone())
            .into_actor(self)
            .map(move |res, _act, _ctx| match res {
                Ok(c) => m.0.ok(&c),
                Err(e) => m.0.err(&e.into()),
            })
            .spawn(ctx);
    }
}
