//! Presence: which node hosts a session of which user. Each node announces its own users in
//! the set `presence:<node>` and on the `presence` channel, and keeps a replica of the other
//! nodes' announcements, so that an event is published only to nodes that host a recipient.

use std::collections::HashMap;

use deadpool_redis::redis;

use super::Cluster;
use crate::bus::redis::Wire;
use crate::outbox::CLOSE_USER_DISABLED;
use crate::protocol::Id;

impl Cluster {
    /// A session of `user` started on this node.
    pub fn session_opened(&self, user: &str) {
        let _ = self
            .jobs
            .send(crate::bus::redis::Job::Presence(user.to_string()));
    }

    /// A session of `user` ended on this node.
    pub fn session_closed(&self, user: &str) {
        if !self.hub.is_online(user) {
            let _ = self
                .jobs
                .send(crate::bus::redis::Job::Presence(user.to_string()));
        }
    }

    /// Adds to `pipe` the announcement of whether `user` still has a session here (checked
    /// now, so that announcements queued out of order still end on the truth). Returns how
    /// many messages it publishes.
    pub(crate) fn announce(&self, pipe: &mut redis::Pipeline, user: Id) -> u64 {
        let online = self.hub.is_online(&user);
        let set = self.redis.key(&format!("presence:{}", self.node));
        if online {
            self.local_users.insert(user.clone(), ());
            pipe.sadd(&set, &user).ignore();
        } else {
            self.local_users.remove(&user);
            pipe.srem(&set, &user).ignore();
        }
        let wire = Wire::Presence {
            node: self.node.clone(),
            user,
            online,
        };
        match rmp_serde::to_vec_named(&wire) {
            Ok(p) => {
                pipe.publish(self.redis.key("presence"), p).ignore();
                1
            }
            Err(_) => 0,
        }
    }

    /// Another node's announcement, into the replica.
    pub(crate) fn on_presence(&self, node: String, user: Id, online: bool) {
        if node == self.node {
            return;
        }
        if online {
            self.presence.entry(user).or_default().insert(node);
        } else {
            self.presence.remove_if_mut(&user, |_, nodes| {
                nodes.remove(&node);
                nodes.is_empty()
            });
        }
    }

    /// The other live nodes that host a session of some of `recipients`, each with its own
    /// recipients only.
    pub(crate) fn remote_recipients(&self, recipients: &[Id]) -> HashMap<String, Vec<Id>> {
        let mut per_node: HashMap<String, Vec<Id>> = HashMap::new();
        for u in recipients {
            if let Some(nodes) = self.presence.get(u) {
                for node in nodes.iter() {
                    per_node.entry(node.clone()).or_default().push(u.clone());
                }
            }
        }
        if per_node.is_empty() {
            return per_node;
        }
        let live = self.live_nodes();
        per_node.retain(|node, _| *node != self.node && live.contains(node));
        per_node
    }

    /// Closes every session of `user` in the cluster (suspended or deleted): those of this
    /// node at once, and those of every other node that hosts one, through its inbox.
    pub fn close_user_everywhere(&self, user: &str) {
        self.close_local_sessions(user);
        let users = [user.to_string()];
        for node in self.remote_recipients(&users).into_keys() {
            let wire = Wire::CloseUser {
                user: user.to_string(),
            };
            self.send(self.inbox(&node), &wire, None);
        }
    }

    /// Closes this node's sessions of a user who may no longer connect.
    pub(crate) fn close_local_sessions(&self, user: &str) {
        for c in self.hub.conns_of(user) {
            c.outbox
                .close(CLOSE_USER_DISABLED, "user is no longer active");
        }
    }

    /// Rebuilds the presence replica from the `presence:<node>` sets of the live nodes.
    pub(crate) async fn reload_presence(&self) {
        let live = self.live_nodes();
        let others: Vec<String> = live.iter().filter(|n| **n != self.node).cloned().collect();
        let keys: Vec<String> = others
            .iter()
            .map(|n| self.redis.key(&format!("presence:{n}")))
            .collect();
        let res = self
            .redis
            .call(move |mut c| async move {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.smembers(k);
                }
                let v: Vec<Vec<String>> = pipe.query_async(&mut *c).await?;
                Ok(v)
            })
            .await;
        let Ok(sets) = res else { return };
        self.presence.clear();
        for (node, users) in others.into_iter().zip(sets) {
            for u in users {
                self.presence.entry(u).or_default().insert(node.clone());
            }
        }
    }

    /// Re-announces this node's users after Redis came back (it may have lost them).
    pub(crate) async fn republish_own_presence(&self) {
        let set = self.redis.key(&format!("presence:{}", self.node));
        let users: Vec<Id> = self.local_users.iter().map(|e| e.key().clone()).collect();
        let _ = self
            .redis
            .call(move |mut c| async move {
                let mut pipe = redis::pipe();
                pipe.del(&set).ignore();
                if !users.is_empty() {
                    pipe.sadd(&set, users).ignore();
                }
                pipe.query_async::<()>(&mut *c).await
            })
            .await;
    }
}
