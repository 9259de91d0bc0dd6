//! The Redis store of cluster mode: every node reads and writes the same state, so an entity
//! that moves to another node reloads exactly what was acked.
//!
//! Layout (all under the cluster prefix): `user:<id>`, `org:<id>`, `conv:<id>` hold MessagePack
//! records; `members:<conv>` is a hash user -> role; `uconvs:<user>` a sorted set of conv ids;
//! `log:<log>` a sorted set of messages scored by seq with `last:<log>` its last seq; `kv:<key>`
//! the keyed records with `kvkeys` a lexically sorted index for prefix scans.
//!
//! Writes are sent in the order they are made, by one writer task that pipelines everything
//! queued over one connection (a conversation hands its next append to the store before the
//! previous one is durable, and Redis must see them in seq order). Redis fsyncs the AOF once
//! per event-loop turn, so a pipeline of many writes shares one fsync: group commit.
//!
//! One [`Store::write`] is one Lua script, which Redis runs atomically: it first checks every
//! append (`seq == last + 1`, refused with a conflict otherwise) and only then applies every
//! write, so a call applies all of its writes or none. Whichever node appends, the check runs
//! inside Redis, so a log can never fork.
//!
//! Appends are also fenced: a node's append takes (or renews) the conversation's lease
//! `lease:<conv>` for [`LEASE`], and an append from any other node is refused while the lease is
//! held. So while ownership moves and two nodes briefly hold an activation of the same
//! conversation, only one of them writes: the other's writes all fail, none lands after its
//! client was told it failed, and a retry can never store a message twice. A node gives its
//! leases up ([`release_leases`]) when it lets go of an activation. Durability comes from Redis itself: run it with
//! `appendonly yes` and `appendfsync always`, and a reply (hence an ack) follows the fsync.

use std::sync::Arc;

use deadpool_redis::redis::{self, AsyncCommands};
use futures_util::FutureExt;

use super::*;
use crate::cluster::redis_conn::{RedisConn, RedisFailure};

/// Checks every append of the call, then applies every write. ARGV: prefix, then ops of four
/// fields each (op, a, b, c). Returns the number of appended messages.
const WRITE_SCRIPT: &str = r#"
local p, node, ttl = ARGV[1], ARGV[2], ARGV[3]
local n = #ARGV
local planned = {}
local i = 4
while i <= n do
  if ARGV[i] == 'A' then
    local log, seq, conv = ARGV[i+1], tonumber(ARGV[i+2]), ARGV[i+4]
    if node ~= '' then
      local holder = redis.call('GET', p .. 'lease:' .. conv)
      if holder and holder ~= node then
        return redis.error_reply('CONFLICT conversation ' .. conv .. ' is active on ' .. holder)
      end
    end
    local cur = planned[log]
    if cur == nil then cur = tonumber(redis.call('GET', p .. 'last:' .. log) or '0') end
    if seq ~= cur + 1 then
      return redis.error_reply('CONFLICT log ' .. log .. ': append of seq ' .. seq .. ' after ' .. cur)
    end
    planned[log] = seq
  end
  i = i + 5
end
local appended = 0
i = 4
while i <= n do
  local op, a, b, c, d = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  if op == 'S' then
    redis.call('SET', p .. a, b)
  elseif op == 'M' then
    redis.call('HSET', p .. 'members:' .. a, b, c)
    redis.call('ZADD', p .. 'uconvs:' .. b, 0, a)
  elseif op == 'R' then
    redis.call('HDEL', p .. 'members:' .. a, b)
    redis.call('ZREM', p .. 'uconvs:' .. b, a)
  elseif op == 'A' then
    redis.call('ZADD', p .. 'log:' .. a, tonumber(b), c)
    redis.call('SET', p .. 'last:' .. a, b)
    if node ~= '' then
      redis.call('SET', p .. 'lease:' .. d, node, 'PX', ttl)
    end
    appended = appended + 1
  elseif op == 'K' then
    redis.call('SET', p .. 'kv:' .. a, b)
    redis.call('ZADD', p .. 'kvkeys', 0, a)
  elseif op == 'D' then
    redis.call('DEL', p .. 'kv:' .. a)
    redis.call('ZREM', p .. 'kvkeys', a)
  end
  i = i + 5
end
return appended
"#;

/// Gives up this node's leases on the conversations in ARGV[3..] (only those it holds).
const RELEASE_SCRIPT: &str = r#"
local p, node = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  local k = p .. 'lease:' .. ARGV[i]
  if redis.call('GET', k) == node then redis.call('DEL', k) end
end
return 0
"#;

/// How long a conversation's append lease outlives the holder's last append.
pub const LEASE: std::time::Duration = std::time::Duration::from_millis(3000);

/// Keys and values of every keyed record whose key starts with ARGV[2] (flat list).
const SCAN_SCRIPT: &str = r#"
local p = ARGV[1]
local keys = redis.call('ZRANGEBYLEX', p .. 'kvkeys', '[' .. ARGV[2], '(' .. ARGV[2] .. '\255')
local out = {}
for _, k in ipairs(keys) do
  local v = redis.call('GET', p .. 'kv:' .. k)
  if v then
    table.insert(out, k)
    table.insert(out, v)
  end
end
return out
"#;

/// The Redis-backed store. Cheap to share: clone the `Arc`.
pub struct RedisStore {
    conn: Arc<RedisConn>,
    /// The node whose appends take the leases; `None` appends unfenced.
    node: Option<String>,
    writes: tokio::sync::mpsc::UnboundedSender<WriteJob>,
    scan_script: Arc<redis::Script>,
}

/// One `write` call: the write script's arguments and where to answer.
struct WriteJob {
    args: Vec<Vec<u8>>,
    done: tokio::sync::oneshot::Sender<Result<u64, RedisFailure>>,
}

/// Most write calls one pipeline carries.
const MAX_BATCH: usize = 512;

/// Sends queued writes in order, everything queued in one pipeline, and answers each caller
/// with its own script's result.
async fn writer(conn: Arc<RedisConn>, mut rx: tokio::sync::mpsc::UnboundedReceiver<WriteJob>) {
    let script = redis::Script::new(WRITE_SCRIPT);
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        // Loading is idempotent and cheap; it makes EVALSHA safe after a Redis restart.
        pipe.cmd("SCRIPT").arg("LOAD").arg(WRITE_SCRIPT).ignore();
        for j in &jobs {
            let c = pipe.cmd("EVALSHA").arg(script.get_hash()).arg(0);
            for a in &j.args {
                c.arg(a.as_slice());
            }
        }
        let n = jobs.len();
        let pool = conn.pool.clone();
        let sent = async move {
            let mut c = pool
                .get()
                .await
                .map_err(|e| RedisFailure::Unavailable(e.to_string()))?;
            let r: Vec<redis::RedisResult<u64>> = pipe
                .query_async(&mut *c)
                .await
                .map_err(crate::cluster::redis_conn::classify)?;
            Ok::<_, RedisFailure>(r)
        };
        let started = std::time::Instant::now();
        let res = match tokio::time::timeout(crate::cluster::redis_conn::CALL_TIMEOUT, sent).await {
            Ok(r) => r,
            Err(_) => Err(RedisFailure::Unavailable("write timed out".into())),
        };
        metrics::histogram!("kaiwa_store_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("kaiwa_store_batch_writes").record(n as f64);
        match res {
            Ok(results) if results.len() == n => {
                for (j, r) in jobs.drain(..).zip(results) {
                    let _ = j.done.send(r.map_err(crate::cluster::redis_conn::classify));
                }
            }
            Ok(_) => {
                for j in jobs.drain(..) {
                    let _ = j
                        .done
                        .send(Err(RedisFailure::Reply("short pipeline reply".into())));
                }
            }
            Err(e) => {
                for j in jobs.drain(..) {
                    let _ = j.done.send(Err(e.clone()));
                }
            }
        }
    }
}

fn failure(e: RedisFailure) -> StoreError {
    match e {
        RedisFailure::Reply(m) if m.contains("CONFLICT") => StoreError::Conflict(m),
        e => StoreError::Backend(e.to_string()),
    }
}

fn enc<T: serde::Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    rmp_serde::to_vec_named(v).map_err(backend)
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> StoreResult<T> {
    rmp_serde::from_slice(b).map_err(backend)
}

fn role_code(r: Role) -> &'static str {
    match r {
        Role::Member => "0",
        Role::Admin => "1",
        Role::Owner => "2",
    }
}

fn role_of(c: &str) -> Role {
    match c {
        "2" => Role::Owner,
        "1" => Role::Admin,
        _ => Role::Member,
    }
}

impl RedisStore {
    /// A store over `conn` for `node` (whose appends take conversation leases; `None` for
    /// tools that append unfenced); nothing is read until the first call.
    pub fn new(conn: Arc<RedisConn>, node: Option<&str>) -> Arc<Self> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        conn.spawn(writer(conn.clone(), rx));
        Arc::new(RedisStore {
            conn,
            node: node.map(str::to_string),
            writes: tx,
            scan_script: Arc::new(redis::Script::new(SCAN_SCRIPT)),
        })
    }

    fn get_bytes(&self, key: String) -> StoreFuture<Option<Vec<u8>>> {
        let f = self.conn.call(move |mut c| async move {
            let v: Option<Vec<u8>> = c.get(key).await?;
            Ok(v)
        });
        async move { f.await.map_err(failure) }.boxed()
    }

    fn get_record<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: String,
    ) -> StoreFuture<Option<T>> {
        let f = self.get_bytes(key);
        async move {
            match f.await? {
                Some(b) => Ok(Some(dec(&b)?)),
                None => Ok(None),
            }
        }
        .boxed()
    }

    fn scored(&self, log: &str, after: u64, limit: usize) -> StoreFuture<Vec<Vec<u8>>> {
        let key = self.conn.key(&format!("log:{log}"));
        let f = self.conn.call(move |mut c| async move {
            let v: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
                .arg(key)
                .arg(format!("({after}"))
                .arg("+inf")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut *c)
                .await?;
            Ok(v)
        });
        async move { f.await.map_err(failure) }.boxed()
    }
}

/// Gives up `node`'s append leases on `convs`, so that their new owners may write at once.
pub async fn release_leases(
    conn: &RedisConn,
    node: &str,
    convs: Vec<Id>,
) -> Result<(), RedisFailure> {
    if convs.is_empty() {
        return Ok(());
    }
    let mut args = vec![conn.prefix.clone(), node.to_string()];
    args.extend(convs);
    conn.call(move |mut c| async move {
        let script = redis::Script::new(RELEASE_SCRIPT);
        let mut inv = script.prepare_invoke();
        for a in &args {
            inv.arg(a.as_str());
        }
        inv.invoke_async::<i64>(&mut *c).await?;
        Ok(())
    })
    .await
}

/// The script arguments of one write: op and four fields.
fn encode_write(w: &Write, args: &mut Vec<Vec<u8>>, stored: &mut u64) -> StoreResult<()> {
    let s = |v: &str| v.as_bytes().to_vec();
    let mut push = |op: &str, a: Vec<u8>, b: Vec<u8>, c: Vec<u8>, d: Vec<u8>| {
        args.push(s(op));
        args.push(a);
        args.push(b);
        args.push(c);
        args.push(d);
    };
    match w {
        Write::PutUser(u) => push("S", s(&format!("user:{}", u.id)), enc(u)?, vec![], vec![]),
        Write::PutOrg(o) => push("S", s(&format!("org:{}", o.id)), enc(o)?, vec![], vec![]),
        Write::PutConv(c) => push("S", s(&format!("conv:{}", c.id)), enc(c)?, vec![], vec![]),
        Write::PutMember { conv, user, role } => {
            push("M", s(conv), s(user), s(role_code(*role)), vec![])
        }
        Write::RemoveMember { conv, user } => push("R", s(conv), s(user), vec![], vec![]),
        Write::Append { log, msg } => {
            *stored += 1;
            let seq = s(&msg.msg.seq.to_string());
            push("A", s(log), seq, enc(msg)?, s(&msg.msg.conv))
        }
        Write::PutKv { key, value } => push("K", s(key), value.clone(), vec![], vec![]),
        Write::DeleteKv { key } => push("D", s(key), vec![], vec![], vec![]),
    }
    Ok(())
}

impl Store for RedisStore {
    fn write(&self, writes: Vec<Write>) -> StoreFuture<()> {
        let mut args = vec![
            self.conn.prefix.as_bytes().to_vec(),
            self.node.clone().unwrap_or_default().into_bytes(),
            LEASE.as_millis().to_string().into_bytes(),
        ];
        let mut stored = 0;
        for w in &writes {
            if let Err(e) = encode_write(w, &mut args, &mut stored) {
                return std::future::ready(Err(e)).boxed();
            }
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        if self.writes.send(WriteJob { args, done }).is_err() {
            return std::future::ready(Err(backend("store writer stopped"))).boxed();
        }
        async move {
            let n = rx.await.map_err(|_| backend("store writer stopped"))?;
            let n = n.map_err(failure)?;
            metrics::counter!("kaiwa_messages_stored_total").increment(n.min(stored));
            Ok(())
        }
        .boxed()
    }

    fn user(&self, id: &str) -> StoreFuture<Option<UserRecord>> {
        self.get_record(self.conn.key(&format!("user:{id}")))
    }

    fn org(&self, id: &str) -> StoreFuture<Option<OrgRecord>> {
        self.get_record(self.conn.key(&format!("org:{id}")))
    }

    fn conv(&self, id: &str) -> StoreFuture<Option<ConvRecord>> {
        self.get_record(self.conn.key(&format!("conv:{id}")))
    }

    fn members(&self, conv: &str) -> StoreFuture<Vec<(Id, Role)>> {
        let key = self.conn.key(&format!("members:{conv}"));
        let f = self.conn.call(move |mut c| async move {
            let v: Vec<(String, String)> = c.hgetall(key).await?;
            Ok(v)
        });
        async move {
            let mut out: Vec<(Id, Role)> = f
                .await
                .map_err(failure)?
                .into_iter()
                .map(|(u, r)| (u, role_of(&r)))
                .collect();
            out.sort();
            Ok(out)
        }
        .boxed()
    }

    fn user_convs(&self, user: &str) -> StoreFuture<Vec<Id>> {
        let key = self.conn.key(&format!("uconvs:{user}"));
        let f = self.conn.call(move |mut c| async move {
            let v: Vec<String> = c.zrange(key, 0, -1).await?;
            Ok(v)
        });
        async move { f.await.map_err(failure) }.boxed()
    }

    fn messages(
        &self,
        log: &str,
        after: u64,
        limit: usize,
    ) -> StoreFuture<(Vec<StoredMessage>, bool)> {
        let f = self.scored(log, after, limit + 1);
        async move {
            let raw = f.await?;
            let more = raw.len() > limit;
            let out = raw
                .iter()
                .take(limit)
                .map(|b| dec(b))
                .collect::<StoreResult<Vec<StoredMessage>>>()?;
            Ok((out, more))
        }
        .boxed()
    }

    fn tail(&self, log: &str, limit: usize) -> StoreFuture<Vec<StoredMessage>> {
        if limit == 0 {
            return std::future::ready(Ok(Vec::new())).boxed();
        }
        let key = self.conn.key(&format!("log:{log}"));
        let f = self.conn.call(move |mut c| async move {
            let v: Vec<Vec<u8>> = c.zrange(key, -(limit as isize), -1).await?;
            Ok(v)
        });
        async move { f.await.map_err(failure)?.iter().map(|b| dec(b)).collect() }.boxed()
    }

    fn last_seq(&self, log: &str) -> StoreFuture<u64> {
        let key = self.conn.key(&format!("last:{log}"));
        let f = self.conn.call(move |mut c| async move {
            let v: Option<u64> = c.get(key).await?;
            Ok(v.unwrap_or(0))
        });
        async move { f.await.map_err(failure) }.boxed()
    }

    fn kv(&self, key: &str) -> StoreFuture<Option<Vec<u8>>> {
        self.get_bytes(self.conn.key(&format!("kv:{key}")))
    }

    fn kv_scan(&self, prefix: &str) -> StoreFuture<Vec<(String, Vec<u8>)>> {
        let script = self.scan_script.clone();
        let (p, pre) = (self.conn.prefix.clone(), prefix.to_string());
        let f = self.conn.call(move |mut c| async move {
            let v: Vec<Vec<u8>> = script.arg(p).arg(pre).invoke_async(&mut *c).await?;
            Ok(v)
        });
        async move {
            let flat = f.await.map_err(failure)?;
            let mut out = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((String::from_utf8(k).map_err(backend)?, v));
            }
            Ok(out)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::cluster::test_redis::TestRedis;
    use crate::protocol::Body;
    use crate::store::conformance::{self, msg, runtime as rt, stored};

    fn open(r: &TestRedis) -> Arc<RedisStore> {
        RedisStore::new(RedisConn::open(&r.url(), "t:").unwrap(), None)
    }

    fn open_as(r: &TestRedis, node: &str) -> (Arc<RedisConn>, Arc<RedisStore>) {
        let conn = RedisConn::open(&r.url(), "t:").unwrap();
        (conn.clone(), RedisStore::new(conn, Some(node)))
    }

    #[test]
    fn appends_are_gapless_and_survive_a_redis_restart() {
        let mut r = TestRedis::start();
        let rt = rt();
        conformance::append_three(open(&r).as_ref(), &rt);
        r.restart();
        conformance::read_three(open(&r).as_ref(), &rt);
    }

    #[test]
    fn a_write_applies_all_or_nothing() {
        let r = TestRedis::start();
        conformance::all_or_nothing(open(&r).as_ref(), &rt());
    }

    #[test]
    fn records_members_and_kv_scan_by_prefix() {
        let r = TestRedis::start();
        conformance::records_members_and_kv(open(&r).as_ref(), &rt());
    }

    #[test]
    fn concurrent_appenders_never_fork_a_log() {
        let r = TestRedis::start();
        let rt = rt();
        let (s1, s2) = (open(&r), open(&r));
        let run = |s: Arc<RedisStore>, who: &'static str| async move {
            let mut won = Vec::new();
            let mut next = 1;
            while next <= 200 {
                let w = Write::Append {
                    log: "shared".into(),
                    msg: {
                        let mut m = stored("shared", next);
                        m.msg.body = Body::Text(who.into());
                        m
                    },
                };
                match s.write(vec![w]).await {
                    Ok(()) => {
                        won.push(next);
                        next += 1;
                    }
                    Err(StoreError::Conflict(_)) => next = s.last_seq("shared").await.unwrap() + 1,
                    Err(e) => panic!("{e}"),
                }
            }
            won
        };
        let (a, b) = rt.block_on(async {
            futures_util::future::join(run(s1.clone(), "one"), run(s2.clone(), "two")).await
        });
        let mut all: Vec<u64> = a.iter().chain(b.iter()).copied().collect();
        all.sort();
        assert_eq!(all, (1..=200).collect::<Vec<u64>>(), "each seq won once");
        let (log, _) = rt.block_on(s1.messages("shared", 0, 1000)).unwrap();
        assert_eq!(log.len(), 200);
        for m in &log {
            let Body::Text(t) = &m.msg.body else { panic!() };
            let winner = if a.contains(&m.msg.seq) { "one" } else { "two" };
            assert_eq!(t, winner, "the stored message is the winner's");
        }
    }

    #[test]
    fn calls_fail_fast_while_redis_is_down_and_resume_after() {
        let mut r = TestRedis::start();
        let rt = rt();
        let s = open(&r);
        rt.block_on(s.write(vec![msg("a", 1)])).unwrap();
        r.kill();
        let started = Instant::now();
        let e = rt.block_on(s.write(vec![msg("a", 2)])).unwrap_err();
        assert!(matches!(e, StoreError::Backend(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        r.restart();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match rt.block_on(s.write(vec![msg("a", 2)])) {
                Ok(()) => break,
                Err(e) => assert!(Instant::now() < deadline, "never recovered: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(rt.block_on(s.last_seq("a")).unwrap(), 2);
    }

    /// While one node holds a conversation's lease, another node's appends are refused even
    /// when their seq is right; once the holder lets go, the other may write.
    #[test]
    fn appends_are_fenced_by_the_holders_lease() {
        let r = TestRedis::start();
        let rt = rt();
        let (c1, n1) = open_as(&r, "n1");
        let (_c2, n2) = open_as(&r, "n2");
        rt.block_on(n1.write(vec![msg("c", 1)])).unwrap();
        let e = rt.block_on(n2.write(vec![msg("c", 2)])).unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict(ref m) if m.contains("n1")),
            "{e}"
        );
        rt.block_on(n1.write(vec![msg("c", 2)])).unwrap();
        rt.block_on(release_leases(&c1, "n1", vec!["c".into()]))
            .unwrap();
        rt.block_on(n2.write(vec![msg("c", 3)])).unwrap();
        assert!(rt.block_on(n1.write(vec![msg("c", 4)])).is_err());
        assert_eq!(rt.block_on(n1.last_seq("c")).unwrap(), 3);
    }

    /// A conversation hands the store its next appends before the earlier ones are durable:
    /// they must reach Redis in the order they were made.
    #[test]
    fn writes_in_flight_apply_in_call_order() {
        let r = TestRedis::start();
        let rt = rt();
        let s = open(&r);
        let pending: Vec<_> = (1..=500).map(|seq| s.write(vec![msg("p", seq)])).collect();
        let results = rt.block_on(futures_util::future::join_all(pending));
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(rt.block_on(s.last_seq("p")).unwrap(), 500);
    }
}
