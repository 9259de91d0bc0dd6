//! Provisioning by operators (the admin API): creating orgs and users. The checks live here so
//! that every way in (REST, bulk, tools) applies the same rules.

use std::sync::Arc;

use serde::Deserialize;

use crate::engine::Engine;
use crate::ids;
use crate::protocol::{Id, KResult, KaiwaError};
use crate::store::{OrgPolicies, OrgRecord, UserRecord, UserState, Write};

/// Longest name of a user or org, in characters.
pub const MAX_NAME: usize = 200;

/// A new org as an operator describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct NewOrg {
    pub name: String,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub admins: Vec<Id>,
    #[serde(default)]
    pub policies: OrgPolicies,
}

/// A new user as an operator describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct NewUser {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub org: Option<Id>,
    #[serde(default)]
    pub title: Option<String>,
    /// Defaults to active.
    #[serde(default)]
    pub state: Option<UserState>,
}

fn check_name(name: &str) -> KResult<String> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > MAX_NAME {
        return Err(KaiwaError::bad_frame(format!(
            "a name has 1 to {MAX_NAME} characters"
        )));
    }
    Ok(n.to_string())
}

/// Creates an org; returns its id.
pub async fn create_org(engine: &Arc<Engine>, o: NewOrg) -> KResult<Id> {
    let name = check_name(&o.name)?;
    let domains: Vec<String> = o
        .domains
        .iter()
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    if domains.iter().any(|d| d.is_empty() || !d.contains('.')) {
        return Err(KaiwaError::bad_frame("a domain looks like example.com"));
    }
    let id = ids::new_org();
    let rec = OrgRecord {
        id: id.clone(),
        name,
        domains,
        admins: o.admins,
        policies: o.policies,
    };
    engine.store.write(vec![Write::PutOrg(rec)]).await?;
    Ok(id)
}

/// Creates users in one durable write; all or none. Returns their ids in order.
pub async fn create_users(engine: &Arc<Engine>, users: Vec<NewUser>) -> KResult<Vec<Id>> {
    let mut orgs_seen: Vec<Id> = Vec::new();
    let mut writes = Vec::with_capacity(users.len());
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        let name = check_name(&u.name)?;
        if let Some(org) = &u.org {
            if !orgs_seen.contains(org) {
                engine
                    .store
                    .org(org)
                    .await?
                    .ok_or_else(|| KaiwaError::not_found(format!("no such org {org}")))?;
                orgs_seen.push(org.clone());
            }
        }
        let id = ids::new_user();
        writes.push(Write::PutUser(UserRecord {
            id: id.clone(),
            name,
            email: u.email,
            phone: u.phone,
            org: u.org,
            title: u.title,
            state: u.state.unwrap_or(UserState::Active),
        }));
        out.push(id);
    }
    engine.store.write(writes).await?;
    Ok(out)
}
