//! The org actor: an organisation's record (domains, admins, policies). Org conversations are
//! owned by exactly one org; the rules that follow from that live in `rules::org`.

use std::sync::Arc;

use actix::{
    Actor, ActorFutureExt, Context, ContextFutureSpawner, Handler, MessageResult, WrapFuture,
};

use crate::engine::Engine;
use crate::protocol::Id;
use crate::store::OrgRecord;

/// One organisation.
pub struct OrgActor {
    engine: Arc<Engine>,
    id: Id,
    record: Option<OrgRecord>,
}

impl OrgActor {
    /// The actor of org `id`; it loads the org when it starts.
    pub fn new(engine: Arc<Engine>, id: Id) -> Self {
        OrgActor {
            engine,
            id,
            record: None,
        }
    }
}

impl Actor for OrgActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let store = self.engine.store.clone();
        let id = self.id.clone();
        async move { store.org(&id).await }
            .into_actor(self)
            .map(|res, act, _ctx| match res {
                Ok(r) => act.record = r,
                Err(e) => tracing::error!("org {} failed to load: {e}", act.id),
            })
            .wait(ctx);
    }
}

/// The org's record, if it exists.
#[derive(actix::Message)]
#[rtype(result = "Option<OrgRecord>")]
pub struct GetOrg;

impl Handler<GetOrg> for OrgActor {
    type Result = MessageResult<GetOrg>;

    fn handle(&mut self, _: GetOrg, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.record.clone())
    }
}
