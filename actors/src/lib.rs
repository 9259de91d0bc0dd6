//! Kaiwa's engine: entity actors (users, chats, groups, orgs, sessions), the pure rules they
//! enforce, the wire protocol, and the store and bus seams. No HTTP in here.

pub mod action_book;
pub mod bus;
pub mod chat;
pub mod cluster;
pub mod conv_log;
pub mod conversation;
pub mod engine;
pub mod entity_call;
pub mod group;
pub mod hub;
pub mod ids;
pub mod org;
pub mod outbox;
pub mod protocol;
pub mod provision;
pub mod reply;
pub mod retire;
pub mod rules;
pub mod session;
pub mod store;
pub mod user;
