//! The Redis pub/sub backend of the [`Bus`]: how nodes of a cluster talk. Each node
//! subscribes to its own inbox channel (`inbox:<node>`) and to the `presence` channel; what
//! travels is a [`Wire`] envelope in MessagePack. A publisher task sends outgoing messages in
//! order, many per pipeline; a subscriber task keeps a dedicated connection subscribed,
//! reconnecting with backoff, and hands each message to the cluster part it is for.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_redis::redis;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Bus, Envelope};
use crate::cluster::redis_conn::CALL_TIMEOUT;
use crate::cluster::Cluster;
use crate::entity_call::{EntityAnswer, EntityCall};
use crate::protocol::{Event, Id, KResult, SharedEvent};
use crate::reply::Waiter;

/// Most jobs the publisher sends in one pipeline.
const PUBLISH_BATCH: usize = 512;

/// What travels between nodes, MessagePack-encoded (rmp-serde, named fields).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Wire {
    /// Events, in order, for these users, all of whom have a session on the receiving node.
    Deliver { users: Vec<Id>, events: Vec<Event> },
    /// A client request for an entity the receiving node owns, as the client sent it.
    Request {
        node: String,
        user: Id,
        conn: u64,
        binary: bool,
        frame: Bytes,
    },
    /// The encoded reply to request `re` forwarded by connection `conn` of the receiving node.
    Reply {
        user: Id,
        conn: u64,
        re: u64,
        binary: bool,
        data: Bytes,
    },
    /// An admin request for a user or org the receiving node owns; answered with
    /// [`Wire::Answer`] to `node`'s inbox.
    Call {
        node: String,
        id: u64,
        call: EntityCall,
    },
    /// The owner's answer to call `id` of the receiving node.
    Answer {
        id: u64,
        answer: KResult<EntityAnswer>,
    },
    /// The user was suspended or deleted: the receiving node closes the user's sessions.
    CloseUser { user: Id },
    /// A user's sessions on `node` started (`online`) or all ended.
    Presence {
        node: String,
        user: Id,
        online: bool,
    },
}

/// A request sent to another node that waits for its answer.
pub(crate) enum Pending {
    /// A client's request forwarded as it was sent.
    Request(Waiter),
    /// An admin call, by id.
    Call(u64),
}

/// Work for the publisher task, sent in order.
pub(crate) enum Job {
    Publish {
        channel: String,
        payload: Vec<u8>,
        /// Told when nobody received the message (the owner is gone) or Redis failed.
        on_fail: Option<Pending>,
    },
    /// Re-checks whether the user still has a session here and announces the truth.
    Presence(Id),
}

/// The cluster bus: events go out through [`Cluster::fan_out`].
pub struct RedisBus(pub Arc<Cluster>);

impl Bus for RedisBus {
    fn publish(&self, envelope: Envelope) {
        match envelope {
            Envelope::Deliver { recipients, events } => self.0.fan_out(&recipients, &events),
        }
    }
}

impl Cluster {
    /// The inbox channel of `node`.
    pub(crate) fn inbox(&self, node: &str) -> String {
        self.redis.key(&format!("inbox:{node}"))
    }

    /// Queues `wire` for publishing on `channel`; `on_fail` hears if nobody received it.
    pub(crate) fn send(&self, channel: String, wire: &Wire, on_fail: Option<Pending>) {
        match rmp_serde::to_vec_named(wire) {
            Ok(payload) => {
                let _ = self.jobs.send(Job::Publish {
                    channel,
                    payload,
                    on_fail,
                });
            }
            Err(e) => tracing::error!("bus envelope failed to encode: {e}"),
        }
    }

    /// Delivers events: to this node's sessions directly, and once to each other node that
    /// hosts a recipient, naming only that node's recipients.
    pub fn fan_out(&self, recipients: &Arc<[Id]>, events: &[Arc<SharedEvent>]) {
        let n = self.hub.deliver_to(recipients, events);
        self.deliveries.increment(n);
        for (node, users) in self.remote_recipients(recipients) {
            let wire = Wire::Deliver {
                users,
                events: events.iter().map(|e| e.event().clone()).collect(),
            };
            self.send(self.inbox(&node), &wire, None);
        }
    }

    /// Sends queued jobs in order, many per pipeline.
    pub(crate) async fn publisher(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Job>) {
        let latency = metrics::histogram!("kaiwa_bus_publish_seconds");
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
            let mut pipe = redis::pipe();
            // Per job: the index of its PUBLISH reply, when it needs checking.
            let mut checks: Vec<(usize, Pending)> = Vec::new();
            let mut replies = 0usize;
            let mut published = 0u64;
            for job in batch.drain(..) {
                match job {
                    Job::Publish {
                        channel,
                        payload,
                        on_fail,
                    } => {
                        pipe.publish(channel, payload);
                        if let Some(w) = on_fail {
                            checks.push((replies, w));
                        }
                        replies += 1;
                        published += 1;
                    }
                    Job::Presence(user) => published += self.announce(&mut pipe, user),
                }
            }
            let started = Instant::now();
            let res = self
                .redis
                .call(move |mut c| async move {
                    let v: Vec<i64> = pipe.query_async(&mut *c).await?;
                    Ok(v)
                })
                .await;
            latency.record(started.elapsed().as_secs_f64());
            self.bus_out.increment(published);
            match res {
                Ok(counts) => {
                    for (i, w) in checks {
                        if counts.get(i).copied().unwrap_or(0) == 0 {
                            self.fail_pending(
                                &w,
                                "the node that owns this entity is unreachable; retry",
                            );
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("bus publish failed: {e}");
                    for (_, w) in checks {
                        self.fail_pending(&w, "cluster bus unavailable; retry");
                    }
                }
            }
        }
    }

    /// Keeps a dedicated pub/sub connection subscribed to this node's inbox and to presence,
    /// reconnecting with backoff whenever it breaks.
    pub(crate) async fn subscriber(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.subscribe_once().await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => tracing::warn!("bus subscription failed: {e}"),
            }
            self.subscribed.store(false, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn subscribe_once(&self) -> Result<(), String> {
        let connect = async {
            let mut ps = self.redis.client.get_async_pubsub().await?;
            ps.subscribe(self.inbox(&self.node)).await?;
            ps.subscribe(self.redis.key("presence")).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = tokio::time::timeout(CALL_TIMEOUT, connect)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        self.republish_own_presence().await;
        self.reload_presence().await;
        self.subscribed.store(true, Ordering::Relaxed);
        tracing::info!(node = %self.node, "bus subscribed");
        let mut stream = ps.into_on_message();
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) => self.received(m.get_payload_bytes()),
                    None => return Err("subscription closed".into()),
                },
                _ = self.resubscribe.notified() => return Err("redis unreachable".into()),
            }
        }
    }

    /// One message from the bus, handed to the part it is for.
    fn received(&self, payload: &[u8]) {
        self.bus_in.increment(1);
        let wire: Wire = match rmp_serde::from_slice(payload) {
            Ok(w) => w,
            Err(e) => return tracing::warn!("unreadable bus envelope: {e}"),
        };
        match wire {
            Wire::Deliver { users, events } => {
                let events: Vec<_> = events
                    .into_iter()
                    .map(|e| Arc::new(SharedEvent::new(e)))
                    .collect();
                let n = self.hub.deliver(&users, &events);
                self.deliveries.increment(n);
            }
            Wire::Reply {
                user,
                conn,
                re,
                binary,
                data,
            } => self.on_reply(user, conn, re, binary, data),
            Wire::Request {
                node,
                user,
                conn,
                binary,
                frame,
            } => self.on_request(node, user, conn, binary, frame),
            Wire::Call { node, id, call } => self.on_call(node, id, call),
            Wire::Answer { id, answer } => self.on_answer(id, answer),
            Wire::CloseUser { user } => self.close_local_sessions(&user),
            Wire::Presence { node, user, online } => self.on_presence(node, user, online),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Body, Message};

    #[test]
    fn envelopes_round_trip_in_messagepack() {
        let w = Wire::Deliver {
            users: vec!["u1".into()],
            events: vec![Event::Message(Message {
                conv: "c".into(),
                seq: 7,
                msg_id: "m".into(),
                from: "u2".into(),
                ts: 1,
                body: Body::Text("hi".into()),
                thread: None,
                origin: None,
            })],
        };
        let b = rmp_serde::to_vec_named(&w).unwrap();
        let Wire::Deliver { users, events } = rmp_serde::from_slice(&b).unwrap() else {
            panic!()
        };
        assert_eq!(users, vec!["u1".to_string()]);
        let [Event::Message(m)] = &events[..] else {
            panic!()
        };
        assert_eq!(m.seq, 7);
    }
}
