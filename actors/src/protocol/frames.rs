//! Frame types: requests a client sends, the `ok` payloads of replies, and pushed events.
//!
//! A request is `{"id": u64, "op": name, ...params}`. Decoding happens in two steps (see
//! [`crate::protocol::codec::decode_request`]): first the `id` and `op`, so that every later
//! error can name the request it answers, then the parameters of that op.

use serde::{Deserialize, Serialize};

use super::actions::{
    ActionRespond, ActionResponseEvent, ActionResultsEvent, ActionResultsReq, LikeReq,
};
use super::body::Body;

/// An entity id (user, org, conversation, message). Opaque to clients.
pub type Id = String;

/// The kinds of conversation, as `convs` reports them in `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvType {
    Chat,
    Flat,
    Hierarchical,
    Public,
}

/// The group kinds a client may ask `group.create` for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    Flat,
    Hierarchical,
    Public,
}

impl From<GroupKind> for ConvType {
    fn from(k: GroupKind) -> Self {
        match k {
            GroupKind::Flat => ConvType::Flat,
            GroupKind::Hierarchical => ConvType::Hierarchical,
            GroupKind::Public => ConvType::Public,
        }
    }
}

/// A member's role in a conversation. Owners are admins too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    /// Owners and admins manage membership.
    pub fn is_admin(self) -> bool {
        matches!(self, Role::Admin | Role::Owner)
    }
}

/// The part of every request that is read first.
#[derive(Debug, Deserialize)]
pub struct Head {
    pub id: Option<u64>,
    pub op: Option<String>,
}

/// `chat.open`: the one 1:1 chat of the caller and `user` (inside `org` when given).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatOpen {
    pub user: Id,
    #[serde(default)]
    pub org: Option<Id>,
}

/// `group.create`.
#[derive(Debug, Clone, Deserialize)]
pub struct GroupCreate {
    pub name: String,
    pub kind: GroupKind,
    #[serde(default)]
    pub org: Option<Id>,
    #[serde(default)]
    pub parent: Option<Id>,
}

/// `group.add` / `group.remove`.
#[derive(Debug, Clone, Deserialize)]
pub struct GroupMember {
    pub conv: Id,
    pub user: Id,
}

/// Ops that name only a conversation (`group.members`).
#[derive(Debug, Clone, Deserialize)]
pub struct ConvRef {
    pub conv: Id,
}

/// `group.unlink` (and `group.link`): a parent group and one of its children.
#[derive(Debug, Clone, Deserialize)]
pub struct GroupLink {
    pub conv: Id,
    pub child: Id,
}

/// `send`.
#[derive(Debug, Clone, Deserialize)]
pub struct SendMsg {
    pub conv: Id,
    pub client_msg_id: String,
    pub body: Body,
    /// Public groups: the member thread an owner or admin answers into.
    #[serde(default)]
    pub to: Option<Id>,
}

/// `sync`: everything after `after`, paged.
#[derive(Debug, Clone, Deserialize)]
pub struct SyncReq {
    pub conv: Id,
    #[serde(default)]
    pub after: u64,
    #[serde(default)]
    pub limit: Option<u32>,
    /// Public groups: the member thread to read.
    #[serde(default)]
    pub thread: Option<Id>,
}

/// A decoded request: the id it will be answered with, and the op with its parameters.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: u64,
    pub op: Op,
}

/// Every op the server understands.
#[derive(Debug, Clone)]
pub enum Op {
    ChatOpen(ChatOpen),
    GroupCreate(GroupCreate),
    GroupAdd(GroupMember),
    GroupRemove(GroupMember),
    GroupMembers(ConvRef),
    Send(SendMsg),
    Sync(SyncReq),
    Convs,
    Ping,
    GroupChildren(ConvRef),
    GroupLink(GroupLink),
    GroupUnlink(GroupLink),
    ActionRespond(ActionRespond),
    ActionResults(ActionResultsReq),
    Like(LikeReq),
}

impl Op {
    /// The conversation an op addresses, for ops that the conversation actor answers.
    pub fn conv(&self) -> Option<&str> {
        match self {
            Op::GroupAdd(p) | Op::GroupRemove(p) => Some(&p.conv),
            Op::GroupMembers(p) => Some(&p.conv),
            Op::Send(p) => Some(&p.conv),
            Op::Sync(p) => Some(&p.conv),
            Op::GroupChildren(p) => Some(&p.conv),
            Op::GroupLink(p) | Op::GroupUnlink(p) => Some(&p.conv),
            Op::ActionRespond(p) => Some(&p.conv),
            Op::ActionResults(p) => Some(&p.conv),
            Op::Like(p) => Some(&p.conv),
            _ => None,
        }
    }
}

/// A stored message, as `sync` returns it and the `message` event carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub conv: Id,
    pub seq: u64,
    pub msg_id: Id,
    pub from: Id,
    /// Milliseconds since the Unix epoch, assigned by the server.
    pub ts: i64,
    pub body: Body,
    /// Public groups: the member thread the message belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<Id>,
    /// Hierarchical groups: where an action copied into this group was first posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// The group and message where an action was posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub conv: Id,
    pub msg_id: Id,
}

/// `ok` of `chat.open` and `group.create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvOk {
    pub conv: Id,
}

/// `ok` of `send`: the message is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub seq: u64,
    pub msg_id: Id,
    pub ts: i64,
}

/// One entry of `group.members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub user: Id,
    pub role: Role,
    /// The member's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Shown only where the visibility rules allow (a flat group's owner sees phones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// `ok` of `group.members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersOk {
    pub members: Vec<MemberView>,
}

/// `ok` of `sync`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncOk {
    pub messages: Vec<Message>,
    pub more: bool,
}

/// One entry of `convs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvSummary {
    pub conv: Id,
    #[serde(rename = "type")]
    pub kind: ConvType,
    pub name: Option<String>,
    pub org: Option<Id>,
    pub last_seq: u64,
}

/// `ok` of `convs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvsOk {
    pub convs: Vec<ConvSummary>,
}

/// An empty `ok` payload: `{}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Empty {}

/// Events the server pushes: `{"ev": name, ...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    Message(Message),
    MemberAdded { conv: Id, user: Id },
    MemberRemoved { conv: Id, user: Id },
    ActionResponse(ActionResponseEvent),
    ActionResults(ActionResultsEvent),
}

/// `ok` of `group.children`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildrenOk {
    pub children: Vec<Id>,
}
