//! Membership: which nodes are alive. Each node writes a heartbeat into the sorted set
//! `nodes` (score = expiry in ms) and reads back the unexpired members; the live set drives
//! placement, and a node lets go of the activations it no longer owns at every heartbeat.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};

use super::Cluster;
use crate::store::redis::release_leases;

/// How often a node heartbeats and refreshes its view of the live nodes.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a heartbeat keeps a node alive; a node silent for longer is taken as gone.
pub const NODE_TTL: Duration = Duration::from_millis(3000);

/// Wall-clock milliseconds: heartbeats of different nodes are compared, so this is not a
/// monotonic clock (node clocks must agree to well under [`NODE_TTL`]).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Cluster {
    /// The live nodes as this node sees them.
    pub fn live_nodes(&self) -> Arc<Vec<String>> {
        self.live.read().clone()
    }

    /// Heartbeats, refreshes the live node set and drops activations this node no longer owns.
    pub(crate) async fn heartbeat(self: Arc<Self>) {
        let nodes_key = self.redis.key("nodes");
        let own_presence = self.redis.key(&format!("presence:{}", self.node));
        // A restarted node hosts nobody yet.
        let _ = self
            .redis
            .call({
                let k = own_presence.clone();
                move |mut c| async move { c.del::<_, ()>(k).await }
            })
            .await;
        let gauge = metrics::gauge!("kaiwa_cluster_nodes");
        let up = metrics::gauge!("kaiwa_redis_up");
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            let (k, node) = (nodes_key.clone(), self.node.clone());
            let res = self
                .redis
                .call(move |mut c| async move {
                    let now = now_ms();
                    let (_, _, live): ((), (), Vec<String>) = redis::pipe()
                        .zadd(&k, &node, now + NODE_TTL.as_millis() as i64)
                        .zrembyscore(&k, "-inf", now)
                        .zrangebyscore(&k, now, "+inf")
                        .query_async(&mut *c)
                        .await?;
                    Ok(live)
                })
                .await;
            match res {
                Ok(mut live) => {
                    if !live.contains(&self.node) {
                        live.push(self.node.clone());
                    }
                    live.sort();
                    self.heartbeat_ok.store(true, Ordering::Relaxed);
                    up.set(1.0);
                    gauge.set(live.len() as f64);
                    let changed = **self.live.read() != live;
                    if changed {
                        tracing::info!(node = %self.node, ?live, "cluster membership changed");
                        *self.live.write() = Arc::new(live);
                        self.reload_presence().await;
                    }
                    // Every tick, not only on a change: a request forwarded here by a node
                    // whose view lagged may have activated something this node does not own.
                    if let Some(engine) = self.engine() {
                        let dropped = engine.retain_owned(|id| self.owns(id));
                        if !dropped.is_empty() {
                            let r = release_leases(&self.redis, &self.node, dropped).await;
                            if let Err(e) = r {
                                tracing::warn!("leases not released: {e}");
                            }
                        }
                    }
                }
                Err(e) => {
                    if self.heartbeat_ok.swap(false, Ordering::Relaxed) {
                        tracing::warn!("redis unreachable: {e}");
                        self.resubscribe.notify_one();
                    }
                    up.set(0.0);
                }
            }
        }
    }
}
