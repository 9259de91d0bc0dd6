//! The in-process bus of a single node: publishing delivers straight into the local hub.

use std::sync::Arc;

use super::{Bus, Envelope};
use crate::hub::Hub;

/// Single-node bus: every recipient is local.
pub struct LocalBus {
    hub: Arc<Hub>,
    deliveries: metrics::Counter,
}

impl LocalBus {
    /// A bus that delivers into `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        LocalBus {
            hub,
            deliveries: metrics::counter!("kaiwa_deliveries_total"),
        }
    }
}

impl Bus for LocalBus {
    fn publish(&self, envelope: Envelope) {
        match envelope {
            Envelope::Deliver { recipients, events } => {
                let n = self.hub.deliver_to(&recipients, &events);
                self.deliveries.increment(n);
            }
        }
    }
}
