//! Routing of events between nodes. A conversation publishes each event once; every node that
//! hosts a recipient's connection receives it once and hands the same bytes to its local
//! connections. Single node: [`local::LocalBus`], in process; cluster mode:
//! [`redis::RedisBus`], Redis pub/sub between the nodes, behind the same trait.

pub mod local;
pub mod redis;

use std::sync::Arc;

use crate::protocol::{Id, SharedEvent};

/// What travels on the bus.
#[derive(Debug, Clone)]
pub enum Envelope {
    /// Deliver events, in order, to every connection of these users. A burst (messages
    /// released together) travels as one envelope and goes out member by member, so that each
    /// member's share of it leaves in one socket write.
    Deliver {
        recipients: Arc<[Id]>,
        events: Vec<Arc<SharedEvent>>,
    },
}

/// The cross-node router.
pub trait Bus: Send + Sync + 'static {
    /// Publishes once; the bus reaches each node that hosts a recipient.
    fn publish(&self, envelope: Envelope);
}
