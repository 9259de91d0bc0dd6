//! Retirement of idle entity actors. A chat or group actor keeps its members, its idempotency
//! window (up to 10,000 client ids) and its reactions in memory; a user actor keeps the user's
//! record. One that has handled nothing for
//! [`Limits::actor_idle`](crate::engine::Limits::actor_idle) leaves the engine's directory, and
//! its memory goes with the actor once nobody holds its address: the next request activates the
//! entity afresh from the store, which rebuilds all of it (a log's window from its tail).
//! Without this, a node would keep every user and conversation it ever touched until it
//! restarts. (Orgs are few and stay.)
//!
//! A retired actor never handles a request again: one that still reaches it (its address was
//! taken just before the retirement) is passed on to the new activation, so nothing is dropped
//! and each log keeps a single writer. Addresses are only ever held for one request (sessions
//! look an entity up each time), so a retired actor ends as soon as the last of those has been
//! passed on.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, AsyncContext, Context};
use metrics::Gauge;

/// Shortest interval between two sweeps of the directory.
const MIN_SWEEP: Duration = Duration::from_millis(50);

/// Longest an activation that found no such entity stays: requests for ids that do not exist
/// must not pile up actors until the idle time.
const NOT_FOUND_GRACE: Duration = Duration::from_secs(5);

/// How often the engine asks every actor in its directory whether it has been idle for `after`:
/// a quarter of it, so an actor leaves at most a quarter late. One sweep for the node instead of
/// a timer per actor, which would cost each connected user's actor ~200 bytes.
pub fn sweep_every(after: Duration) -> Duration {
    (after / 4).max(MIN_SWEEP)
}

/// The engine's periodic question to an actor in its directory: retire if idle this long.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct IdleCheck(pub Duration);

/// Milliseconds since the first call, wrapping after 49 days (differences stay right across a
/// wrap for any span shorter than that).
fn now_ms() -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u32
}

/// An actor's activity record: 8 bytes, since every connected user's actor carries one.
pub struct Idle {
    /// When the actor last handled something, in [`now_ms`].
    last_ms: u32,
    retired: bool,
}

impl Default for Idle {
    fn default() -> Self {
        Idle {
            last_ms: now_ms(),
            retired: false,
        }
    }
}

impl Idle {
    /// Notes activity; every handler calls it.
    pub fn touch(&mut self) {
        self.last_ms = now_ms();
    }

    /// How long ago the actor last handled something.
    fn idle_for(&self) -> Duration {
        Duration::from_millis(u64::from(now_ms().wrapping_sub(self.last_ms)))
    }
}

/// An entity actor that can retire.
pub trait Retiring: Actor<Context = Context<Self>> {
    /// Label of the retirement metric.
    const KIND: &'static str;
    /// The actor's activity record.
    fn idle(&mut self) -> &mut Idle;
    /// True when no write of this actor awaits the store.
    fn quiet(&self) -> bool;
    /// Takes the actor out of the engine's directory, unless another activation has taken its
    /// place there already.
    fn leave_directory(&self, me: &Addr<Self>);
    /// The entity's activation in the directory, started if there is none.
    fn current(&self) -> Option<Addr<Self>>;

    /// Notes activity, as every handler must; once retired, the activation to pass the message
    /// on to.
    fn successor(&mut self) -> Option<Addr<Self>> {
        let idle = self.idle();
        idle.touch();
        if idle.retired {
            self.current()
        } else {
            None
        }
    }
}

/// Answers an [`IdleCheck`]: after `after` without activity, with nothing in flight, the actor
/// retires. The check itself is not activity.
pub fn check<A: Retiring>(act: &mut A, ctx: &mut Context<A>, IdleCheck(after): IdleCheck) {
    let idle = act.idle();
    if !idle.retired && idle.idle_for() >= after && act.quiet() && !ctx.waiting() {
        retire(act, ctx);
    }
}

/// For an activation that found no such entity in the store: it retires soon (after the idle
/// time when that is shorter), unless `exists` says that meanwhile it was created or something
/// is in flight. What reaches it later goes to a fresh activation, which looks again.
pub fn unless_found<A, F>(ctx: &mut Context<A>, after: Option<Duration>, exists: F)
where
    A: Retiring,
    F: Fn(&A) -> bool + 'static,
{
    let grace = after.map_or(NOT_FOUND_GRACE, |a| a.min(NOT_FOUND_GRACE));
    ctx.run_later(grace, move |act, ctx| {
        if !exists(act) && act.quiet() && !ctx.waiting() && !act.idle().retired {
            retire(act, ctx);
        }
    });
}

/// Leaves the directory: from now on the actor passes everything on, and it ends once nobody
/// holds its address.
fn retire<A: Retiring>(act: &mut A, ctx: &mut Context<A>) {
    act.leave_directory(&ctx.address());
    act.idle().retired = true;
    metrics::counter!("kaiwa_retirements_total", "kind" => A::KIND).increment(1);
}

/// Counts a running entity actor, for `kaiwa_actors_running`; called from `started` and
/// `stopped`. The gauges are looked up once: a lookup builds the labelled key anew, and a user
/// actor starts with every connection.
pub fn count(kind: &'static str, delta: f64) {
    static GAUGES: OnceLock<[(&str, Gauge); 3]> = OnceLock::new();
    let gauges = GAUGES.get_or_init(|| {
        ["user", "chat", "group"].map(|k| (k, metrics::gauge!("kaiwa_actors_running", "kind" => k)))
    });
    match gauges.iter().find(|(k, _)| *k == kind) {
        Some((_, g)) => g.increment(delta),
        None => metrics::gauge!("kaiwa_actors_running", "kind" => kind).increment(delta),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bus::local::LocalBus;
    use crate::chat::OpenChat;
    use crate::conversation::ConvRequest;
    use crate::engine::{Engine, Limits};
    use crate::hub::{Conn, Hub};
    use crate::protocol::{Body, Format, Op, SendMsg};
    use crate::reply::Waiter;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{Store, UserRecord, UserState, Write};

    /// The replies queued for a connection without a socket, as JSON values.
    fn replies(conn: &Conn) -> Vec<serde_json::Value> {
        conn.outbox
            .queued()
            .iter()
            .filter_map(|f| {
                let start = f.iter().position(|b| *b == b'{')?;
                serde_json::from_slice(&f[start..]).ok()
            })
            .collect()
    }

    /// Waits (bounded) until the connection has `n` replies.
    async fn replies_n(conn: &Conn, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let r = replies(conn);
            if r.len() >= n {
                return r;
            }
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "{} of {n} replies: {:?}",
            replies(conn).len(),
            replies(conn)
        );
    }

    #[test]
    fn a_request_that_reaches_a_retired_actor_goes_to_its_successor() {
        actix::System::new().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let hub = Arc::new(Hub::new());
            let bus = Arc::new(LocalBus::new(hub.clone()));
            let limits = Limits {
                actor_idle: Some(Duration::from_millis(20)),
                ..Limits::default()
            };
            let engine = Engine::new(store.clone(), bus, hub, limits, actix::Arbiter::current());
            let user = |id: &str| {
                Write::PutUser(UserRecord {
                    id: id.into(),
                    name: id.into(),
                    email: None,
                    phone: None,
                    org: None,
                    title: None,
                    state: UserState::Active,
                })
            };
            store
                .write(vec![user("u_ann"), user("u_bob")])
                .await
                .unwrap();
            let conn = Arc::new(Conn::new(1, "u_ann".into(), 64, Some(Format::Json), None));
            let waiter = |re| Waiter::local(conn.clone(), re, Format::Json);
            let id = crate::ids::chat("u_ann", "u_bob", None);
            engine.chat(&id).unwrap().do_send(OpenChat {
                caller: "u_ann".into(),
                other: "u_bob".into(),
                org: None,
                waiter: waiter(1),
            });
            replies_n(&conn, 1).await;
            let send = |re: u64, cmid: &str| ConvRequest {
                from: "u_ann".into(),
                op: Op::Send(SendMsg {
                    conv: id.clone(),
                    client_msg_id: cmid.into(),
                    body: Body::Text("hi".into()),
                    to: None,
                }),
                waiter: waiter(re),
            };
            // An address taken before the retirement and used after it.
            let old = engine.chat(&id).unwrap();
            actix::clock::sleep(Duration::from_millis(200)).await;
            assert!(
                old.connected(),
                "held addresses keep a retired actor running"
            );
            // The directory starts a new activation, which writes seq 1.
            engine.chat(&id).unwrap().do_send(send(2, "a"));
            assert_eq!(replies_n(&conn, 2).await[1]["ok"]["seq"], 1);
            // The retired actor passes its request on: seq 2 from the same writer, not a
            // second writer that still believes the log ends at 0.
            old.do_send(send(3, "b"));
            let r = replies_n(&conn, 3).await;
            assert_eq!(r[2]["re"], 3);
            assert_eq!(r[2]["ok"]["seq"], 2, "{:?}", r[2]);
            // Once the last address is dropped, the retired actor ends.
            let weak = old.downgrade();
            drop(old);
            actix::clock::sleep(Duration::from_millis(50)).await;
            assert!(weak.upgrade().is_none_or(|a| !a.connected()));

            // An activation the directory forgot (in a cluster: another node owns the chat
            // now) ends as soon as nobody holds its address.
            let current = engine.chat(&id).unwrap().downgrade();
            engine.retain_owned(|_| false);
            actix::clock::sleep(Duration::from_millis(200)).await;
            assert!(current.upgrade().is_none_or(|a| !a.connected()));
        });
    }
}
