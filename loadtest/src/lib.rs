//! Kaiwa's load-test toolkit: a small WebSocket + admin client (used by the server's integration
//! tests too) and the load scenarios that the `kaiwa-loadtest` binary runs against a local cluster.

pub mod admin;
pub mod chart;
pub mod client;
pub mod clock;
pub mod cpu;
pub mod floor;
pub mod live;
pub mod net;
pub mod publisher;
pub mod reactor;
pub mod receivers;
pub mod report;
pub mod stats;

pub use admin::Admin;
pub use client::{Client, ConnectError, ErrorBody, Incoming, WireFormat};
pub mod pool;
pub mod scenarios;
pub mod workers;
