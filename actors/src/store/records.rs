//! Records of the entities, as the store keeps them (MessagePack with named fields).

use serde::{Deserialize, Serialize};

use crate::protocol::{ConvType, Id};

/// The lifecycle state of a user (Yammer's pending/active/suspended/deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserState {
    Pending,
    Active,
    Suspended,
    Deleted,
}

/// A user's profile and state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: Id,
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub org: Option<Id>,
    #[serde(default)]
    pub title: Option<String>,
    pub state: UserState,
}

/// What an organisation allows in the chats and groups it owns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgPolicies {
    /// Members may forward, copy or share messages out of org conversations.
    #[serde(default)]
    pub allow_forward: bool,
}

/// An organisation: its email domains, admins and policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgRecord {
    pub id: Id,
    pub name: String,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub admins: Vec<Id>,
    #[serde(default)]
    pub policies: OrgPolicies,
}

/// A conversation: a 1:1 chat or a group. Members are kept apart (see `Store::members`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvRecord {
    pub id: Id,
    pub kind: ConvType,
    #[serde(default)]
    pub name: Option<String>,
    /// The owning org of an org conversation; `None` for a private one.
    #[serde(default)]
    pub org: Option<Id>,
    #[serde(default)]
    pub owner: Option<Id>,
    #[serde(default)]
    pub parent: Option<Id>,
    pub created_ts: i64,
}
