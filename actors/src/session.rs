//! The session actor: one per WebSocket connection. It decodes and checks every frame (size,
//! shape, rate), never trusts the client, and hands each request to the actor that owns the
//! rule: the conversation, the chat being opened, or the user itself. Replies and events do not
//! pass through it: they go straight into the connection's outbox.

use std::sync::Arc;
use std::time::Instant;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, ContextFutureSpawner,
    StreamHandler, WrapFuture,
};
use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::chat::OpenChat;
use crate::conversation::ConvRequest;
use crate::engine::{ConvAddr, Engine};
use crate::group::GroupSpec;
use crate::hub::Conn;
use crate::ids;
use crate::outbox::{Outgoing, CLOSE_PING_TIMEOUT, CLOSE_TOO_BIG, CLOSE_USER_DISABLED};
use crate::protocol::codec::{decode_head, decode_request, reply_err};
use crate::protocol::{Empty, ErrorCode, Format, Id, KaiwaError, Op, Request};
use crate::reply::Waiter;
use crate::user::Convs;

/// What the transport hands the session: decoded WebSocket messages.
#[derive(Debug)]
pub enum Inbound {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close,
    /// A frame past the transport's hard limit; the connection cannot continue.
    TooLarge,
    /// The transport failed (protocol violation, reset).
    Broken(String),
}

/// One connection.
pub struct Session {
    engine: Arc<Engine>,
    conn: Arc<Conn>,
    last_seen: Instant,
    limiter: DefaultDirectRateLimiter,
    frames_in: metrics::Counter,
}

impl Session {
    /// The session of an attached connection.
    pub fn new(engine: Arc<Engine>, conn: Arc<Conn>) -> Self {
        let quota =
            Quota::per_second(engine.limits.rate_per_sec).allow_burst(engine.limits.rate_burst);
        Session {
            engine,
            conn,
            last_seen: Instant::now(),
            limiter: RateLimiter::direct(quota),
            frames_in: metrics::counter!("kaiwa_frames_in_total"),
        }
    }

    fn err_unsolicited(&self, format: Format, e: &KaiwaError) {
        metrics::counter!("kaiwa_errors_total", "code" => e.code.as_str()).increment(1);
        self.conn.outbox.push(reply_err(format, None, e));
    }

    fn frame(&mut self, format: Format, bytes: Bytes) {
        self.frames_in.increment(1);
        self.conn.saw_client_format(format);
        if bytes.len() > self.engine.limits.max_frame {
            let limit = self.engine.limits.max_frame;
            let e = KaiwaError::too_large(format!("frames are limited to {limit} bytes"));
            return match decode_head(format, &bytes) {
                Some(re) => Waiter::local(self.conn.clone(), re, format).err(&e),
                None => self.err_unsolicited(format, &e),
            };
        }
        let req = match decode_request(format, &bytes) {
            Ok(r) => r,
            Err((None, e)) => return self.err_unsolicited(format, &e),
            Err((Some(re), e)) => return Waiter::local(self.conn.clone(), re, format).err(&e),
        };
        let waiter = Waiter::local(self.conn.clone(), req.id, format);
        if self.limiter.check().is_err() {
            return waiter.err(&KaiwaError::new(
                ErrorCode::RateLimited,
                "too many requests; slow down",
            ));
        }
        if let Some(cluster) = self.engine.cluster() {
            if let Some(entity) = placed_entity(&self.conn.user, &req.op) {
                let owner = cluster.owner(&entity);
                if owner != cluster.node {
                    let binary = format == Format::MsgPack;
                    return cluster.forward(&owner, waiter, binary, bytes);
                }
            }
        }
        self.dispatch(req, waiter);
    }

    /// The conversation's current activation, looked up for each request and not kept: an
    /// idle conversation may retire (see [`crate::retire`]), and in a cluster activations move
    /// between nodes, so an address kept across requests could outlive either.
    fn conv_addr(&mut self, id: &str) -> Option<ConvAddr> {
        self.engine.conv(id)
    }

    fn dispatch(&mut self, req: Request, waiter: Waiter) {
        let me = self.conn.user.clone();
        if let Some(conv) = req.op.conv().map(str::to_string) {
            return match self.conv_addr(&conv) {
                Some(a) => a.request(ConvRequest {
                    from: me,
                    op: req.op,
                    waiter,
                }),
                None => waiter.err(&KaiwaError::not_found("no such conversation")),
            };
        }
        route(&self.engine, me, req.op, waiter);
    }
}

/// The entity whose single activation must answer `op` from `user`: the conversation it
/// addresses, the chat it opens, the parent of the group it creates, or the user. `None` for ops any
/// node answers.
pub fn placed_entity(user: &str, op: &Op) -> Option<String> {
    match op {
        Op::ChatOpen(p) => Some(ids::chat(user, &p.user, p.org.as_deref())),
        // A child group is created on its parent's node, so that the tree starts out on one
        // node and its parent/child messages stay local.
        Op::GroupCreate(p) => p.parent.clone(),
        // The user's own actor lists their conversations.
        Op::Convs => Some(user.to_string()),
        op => op.conv().map(str::to_string),
    }
}

/// Hands a decoded request of `me` to the actor that owns its rule, on this node. Sessions
/// call it for their own requests; the cluster calls it for requests forwarded by other nodes.
pub fn route(engine: &Arc<Engine>, me: Id, op: Op, waiter: Waiter) {
    match op {
        Op::Ping => waiter.ok(&Empty {}),
        Op::Convs => match engine.user(&me) {
            Some(u) => u.do_send(Convs(waiter)),
            None => waiter.err(&KaiwaError::internal("user actor unavailable")),
        },
        Op::ChatOpen(p) => {
            let id = ids::chat(&me, &p.user, p.org.as_deref());
            match engine.chat(&id) {
                Some(c) => c.do_send(OpenChat {
                    caller: me,
                    other: p.user,
                    org: p.org,
                    waiter,
                }),
                None => waiter.err(&KaiwaError::internal("chat actor unavailable")),
            }
        }
        Op::GroupCreate(p) => {
            let spec = GroupSpec {
                owner: me,
                name: p.name,
                kind: p.kind,
                org: p.org,
                parent: p.parent,
                members: Vec::new(),
            };
            engine.create_group(spec, Box::new(move |r| waiter.reply(&r)));
        }
        op => {
            let Some(conv) = op.conv().map(str::to_string) else {
                return waiter.err(&KaiwaError::bad_frame("op needs `conv`"));
            };
            match engine.conv(&conv) {
                Some(a) => a.request(ConvRequest {
                    from: me,
                    op,
                    waiter,
                }),
                None => waiter.err(&KaiwaError::not_found("no such conversation")),
            }
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.engine.hub.register(self.conn.clone());
        if let Some(c) = self.engine.cluster() {
            c.session_opened(&self.conn.user);
            // The user may have been suspended on another node between the check before the
            // upgrade and this registration, too early for the close to find this session:
            // check again now that it is registered.
            let (store, conn) = (self.engine.store.clone(), self.conn.clone());
            async move { store.user(&conn.user).await }
                .into_actor(self)
                .map(|res, act, _| {
                    // A failed read proves nothing: the session keeps the check it passed.
                    if let Ok(rec) = res {
                        let ok = rec.is_some_and(|r| {
                            crate::rules::user_state::can_connect(r.state).is_ok()
                        });
                        if !ok {
                            act.conn
                                .outbox
                                .close(CLOSE_USER_DISABLED, "user is no longer active");
                        }
                    }
                })
                .spawn(ctx);
        }
        let every = self.engine.limits.ping_interval;
        ctx.run_interval(every, |act, ctx| {
            if act.last_seen.elapsed() > act.engine.limits.ping_timeout {
                act.conn
                    .outbox
                    .close(CLOSE_PING_TIMEOUT, "no answer to pings");
                ctx.stop();
            } else {
                act.conn.outbox.push_control(Outgoing::Ping);
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.engine.hub.unregister(&self.conn);
        if let Some(c) = self.engine.cluster() {
            c.session_closed(&self.conn.user);
        }
        self.conn.outbox.close(1000, "bye");
    }
}

impl StreamHandler<Inbound> for Session {
    fn handle(&mut self, item: Inbound, ctx: &mut Context<Self>) {
        match item {
            Inbound::Text(b) => self.frame(Format::Json, b),
            Inbound::Binary(b) => self.frame(Format::MsgPack, b),
            Inbound::Ping(b) => {
                self.last_seen = Instant::now();
                self.conn.outbox.push_control(Outgoing::Pong(b));
            }
            Inbound::Pong => self.last_seen = Instant::now(),
            Inbound::Close => ctx.stop(),
            Inbound::TooLarge => {
                let e = KaiwaError::too_large("frame exceeds the hard frame limit; closing");
                self.err_unsolicited(self.conn.event_format(), &e);
                self.conn.outbox.close(CLOSE_TOO_BIG, "frame too large");
                ctx.stop();
            }
            Inbound::Broken(why) => {
                tracing::debug!("connection {} broken: {why}", self.conn.id);
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
