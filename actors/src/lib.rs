//! Kaiwa's engine: entity actors (users, chats, groups, orgs, sessions), the pure rules they
//! enforce, the wire protocol, and the store and bus seams. No HTTP in here.

pub mod protocol;
pub mod rules;
pub mod store;
