//! Durable state. The [`Store`] trait is what the actors see; the embedded backend (redb, one
//! node) lives in [`embedded`], and the Redis backend of cluster mode plugs in beside it without
//! touching the actors.
//!
//! Writes go through [`Store::write`]: the future resolves only once the writes are durable, and
//! a backend is free to commit many callers' writes together (group commit).

pub mod blocks;
#[cfg(test)]
pub mod conformance;
pub mod embedded;
pub mod journal;
pub mod records;
pub mod redis;

use futures_util::future::BoxFuture;

pub use records::*;

use crate::protocol::{ErrorCode, Id, KaiwaError, Message, Role};

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// An append did not continue its log (another writer got there first, or a gap): the
    /// caller's view of the log is stale and must be reloaded.
    #[error("log conflict: {0}")]
    Conflict(String),
    /// The backend failed (disk, connection, corrupt record).
    #[error("store failure: {0}")]
    Backend(String),
}

impl From<StoreError> for KaiwaError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => KaiwaError::new(ErrorCode::Conflict, m),
            StoreError::Backend(m) => KaiwaError::new(ErrorCode::Internal, m),
        }
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Wraps a backend's own error (redb, Redis, I/O) as [`StoreError::Backend`].
pub(crate) fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}
/// A pending store call; `'static` so that actors can hold it across mailbox turns.
pub type StoreFuture<T> = BoxFuture<'static, StoreResult<T>>;

/// One write. A call to [`Store::write`] applies all of its writes or none of them.
#[derive(Debug, Clone)]
pub enum Write {
    PutUser(UserRecord),
    PutOrg(OrgRecord),
    PutConv(ConvRecord),
    PutMember {
        conv: Id,
        user: Id,
        role: Role,
    },
    RemoveMember {
        conv: Id,
        user: Id,
    },
    /// Appends to a log; refused with [`StoreError::Conflict`] unless `msg.seq` is exactly one
    /// past the log's last seq. This keeps every log gapless and never forked.
    Append {
        log: Id,
        msg: StoredMessage,
    },
    /// A small keyed record for state that has no table of its own (links, tallies, ...).
    PutKv {
        key: String,
        value: Vec<u8>,
    },
    DeleteKv {
        key: String,
    },
}

/// Durable state of one node or of a whole cluster.
pub trait Store: Send + Sync + 'static {
    /// Applies `writes` atomically; resolves once they are durable.
    fn write(&self, writes: Vec<Write>) -> StoreFuture<()>;
    fn user(&self, id: &str) -> StoreFuture<Option<UserRecord>>;
    fn org(&self, id: &str) -> StoreFuture<Option<OrgRecord>>;
    fn conv(&self, id: &str) -> StoreFuture<Option<ConvRecord>>;
    /// Members of a conversation with their roles, in user id order.
    fn members(&self, conv: &str) -> StoreFuture<Vec<(Id, Role)>>;
    /// Conversations a user is a member of.
    fn user_convs(&self, user: &str) -> StoreFuture<Vec<Id>>;
    /// Up to `limit` messages of a log after seq `after`, and whether more follow.
    fn messages(
        &self,
        log: &str,
        after: u64,
        limit: usize,
    ) -> StoreFuture<(Vec<StoredMessage>, bool)>;
    /// The newest `limit` messages of a log, oldest first (used to rebuild idempotency windows).
    fn tail(&self, log: &str, limit: usize) -> StoreFuture<Vec<StoredMessage>>;
    /// The last seq of a log (0 when empty).
    fn last_seq(&self, log: &str) -> StoreFuture<u64>;
    fn kv(&self, key: &str) -> StoreFuture<Option<Vec<u8>>>;
    /// All keyed records whose key starts with `prefix`, in key order.
    fn kv_scan(&self, prefix: &str) -> StoreFuture<Vec<(String, Vec<u8>)>>;
}

/// A stored message: what clients see, plus the sender's idempotency key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredMessage {
    pub msg: Message,
    pub client_msg_id: String,
}
