//! Admin requests to user and org actors, wherever their one activation lives. On the owner
//! node they go straight to the actor; in a cluster, a request for a user or org that another
//! node owns travels to that node over the bus and its answer comes back to the caller, so
//! that the owner's actor stays the only one that changes (and caches) the entity.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::org::GetOrg;
use crate::protocol::{Id, KResult, KaiwaError};
use crate::store::{OrgRecord, UserRecord, UserState};
use crate::user::{GetUser, SetState};

/// A request for a user or org actor; serializable, since it may cross to the owner node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EntityCall {
    /// The user's record.
    GetUser(Id),
    /// An admin changes the user's state (see [`SetState`]).
    SetUserState(Id, UserState),
    /// The org's record.
    GetOrg(Id),
}

/// The answer to an [`EntityCall`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EntityAnswer {
    User(Option<UserRecord>),
    Org(Option<OrgRecord>),
}

impl EntityCall {
    /// The id of the entity whose activation must answer.
    pub fn entity(&self) -> &str {
        match self {
            EntityCall::GetUser(id) | EntityCall::SetUserState(id, _) | EntityCall::GetOrg(id) => {
                id
            }
        }
    }
}

/// Runs `call` on the node that owns its entity: here, or on the owner over the bus.
pub async fn call(engine: &Arc<Engine>, call: EntityCall) -> KResult<EntityAnswer> {
    if let Some(c) = engine.cluster() {
        let owner = c.owner(call.entity());
        if owner != c.node {
            return c.call_remote(&owner, call).await;
        }
    }
    run_here(engine, call).await
}

/// Runs `call` against this node's activation of its entity (activating it if needed). The
/// cluster calls it for calls other nodes sent here.
pub async fn run_here(engine: &Arc<Engine>, call: EntityCall) -> KResult<EntityAnswer> {
    let gone = |_| KaiwaError::internal("actor unavailable");
    match call {
        EntityCall::GetUser(id) => {
            let a = engine
                .user(&id)
                .ok_or_else(|| KaiwaError::not_found("no such user"))?;
            Ok(EntityAnswer::User(a.send(GetUser).await.map_err(gone)?))
        }
        EntityCall::SetUserState(id, state) => {
            let a = engine
                .user(&id)
                .ok_or_else(|| KaiwaError::not_found("no such user"))?;
            let rec = a.send(SetState(state)).await.map_err(gone)??;
            Ok(EntityAnswer::User(Some(rec)))
        }
        EntityCall::GetOrg(id) => {
            let a = engine
                .org(&id)
                .ok_or_else(|| KaiwaError::not_found("no such org"))?;
            Ok(EntityAnswer::Org(a.send(GetOrg).await.map_err(gone)?))
        }
    }
}

/// The record of user `id` from its owner's actor; `None` when there is no such user.
pub async fn get_user(engine: &Arc<Engine>, id: &str) -> KResult<Option<UserRecord>> {
    match call(engine, EntityCall::GetUser(id.to_string())).await? {
        EntityAnswer::User(u) => Ok(u),
        EntityAnswer::Org(_) => Err(KaiwaError::internal("mismatched answer")),
    }
}

/// Changes the state of user `id` through its owner's actor, which disconnects a suspended
/// or deleted user everywhere. Returns the new record.
pub async fn set_user_state(
    engine: &Arc<Engine>,
    id: &str,
    state: UserState,
) -> KResult<UserRecord> {
    match call(engine, EntityCall::SetUserState(id.to_string(), state)).await? {
        EntityAnswer::User(Some(u)) => Ok(u),
        _ => Err(KaiwaError::internal("mismatched answer")),
    }
}

/// The record of org `id` from its owner's actor; `None` when there is no such org.
pub async fn get_org(engine: &Arc<Engine>, id: &str) -> KResult<Option<OrgRecord>> {
    match call(engine, EntityCall::GetOrg(id.to_string())).await? {
        EntityAnswer::Org(o) => Ok(o),
        EntityAnswer::User(_) => Err(KaiwaError::internal("mismatched answer")),
    }
}
