//! Receiving side of a run: connections that read `message` events, measure send→deliver latency,
//! remember which seqs arrived, and at the end sync whatever acked message they missed live.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use rustc_hash::FxHashMap;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{Client, Data, Incoming, Tap, WireFormat};
use crate::clock;
use crate::live::Live;
use crate::net::{connect_all, connect_all_raw, ConnectStats, Pacing, Target};
use crate::reactor::Reactor;
use crate::stats::{Errors, Latency, SeqSet};

/// One receiving connection: whose token, and which conversations it must see all of.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceiverSpec {
    pub token: String,
    pub convs: Vec<String>,
}

/// Everything a process needs to hold a set of receivers (serializable: workers get it as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceiverJob {
    pub target: Target,
    /// Global index of the first receiver (picks node and source address).
    pub first_index: usize,
    pub pacing: Pacing,
    pub members: Vec<ReceiverSpec>,
    /// Hard bound on the connection phase, seconds.
    pub connect_timeout_s: f64,
    /// The receivers only read during the run (nothing sends on their connections): one
    /// thread reads them all ([`crate::reactor`]) instead of a task per connection.
    #[serde(default)]
    pub pure: bool,
}

/// Loss accounting: acked messages each receiver should have seen, and what became of them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Loss {
    /// (receiver, acked message) pairs that were expected.
    pub expected: u64,
    /// Pairs not delivered live.
    pub missed_live: u64,
    /// Of those, pairs that `sync` returned.
    pub recovered_by_sync: u64,
    /// Pairs neither delivered live nor synced: must be 0.
    pub lost: u64,
    /// The distinct lost seqs per conv (at most 1000 listed per conv).
    pub lost_seqs: BTreeMap<String, Vec<u64>>,
    /// Receivers whose sync failed (their missing messages count as lost).
    pub sync_failures: u64,
}

impl Loss {
    /// Adds another receiver set's loss numbers.
    pub fn merge(&mut self, o: &Loss) {
        self.expected += o.expected;
        self.missed_live += o.missed_live;
        self.recovered_by_sync += o.recovered_by_sync;
        self.lost += o.lost;
        self.sync_failures += o.sync_failures;
        for (conv, seqs) in &o.lost_seqs {
            let mine = self.lost_seqs.entry(conv.clone()).or_default();
            mine.extend(seqs);
            mine.sort_unstable();
            mine.dedup();
            mine.truncate(1000);
        }
    }
}

/// What a set of receivers measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReceiverResult {
    pub connect: ConnectStats,
    pub deliveries: u64,
    pub duplicates: u64,
    pub latency: Latency,
    /// Connections the server closed during the run, by close code.
    pub closed_by_server: Errors,
    /// Receivers that got a message carrying `origin` (a tree action), and the last arrival time
    /// (ns on the tool's clock).
    pub origin_received: u64,
    pub origin_last_ns: u64,
    pub loss: Loss,
}

impl ReceiverResult {
    /// Adds another set's (another worker's) result.
    pub fn merge(&mut self, o: &ReceiverResult) {
        self.connect.merge(&o.connect);
        self.deliveries += o.deliveries;
        self.duplicates += o.duplicates;
        self.latency.merge(&o.latency);
        crate::stats::merge_errors(&mut self.closed_by_server, &o.closed_by_server);
        self.origin_received += o.origin_received;
        self.origin_last_ns = self.origin_last_ns.max(o.origin_last_ns);
        self.loss.merge(&o.loss);
    }
}

/// What one connection saw.
#[derive(Default)]
pub(crate) struct Seen {
    /// Fx-hashed: looked up on every delivery, and the keys are the server's ids.
    pub(crate) per_conv: FxHashMap<String, SeqSet>,
    pub(crate) deliveries: u64,
    pub(crate) duplicates: u64,
    pub(crate) closed: Option<String>,
    pub(crate) origin_ns: Option<u64>,
}

/// Latency histograms are big (~170 KiB); connections share a few shards instead of one each.
const SHARDS: usize = 16;

/// What one connection has seen so far, shared by its reader's tap and its receive task.
type SharedSeen = Arc<Mutex<Seen>>;

/// Receivers held by this process.
pub struct LocalReceivers {
    specs: Vec<ReceiverSpec>,
    connect: ConnectStats,
    reading: Reading,
    format: WireFormat,
    /// Where the receivers connected, for reconnecting those cut off before the final sync.
    target: Target,
    first_index: usize,
}

/// How the receivers are read during the run.
enum Reading {
    /// Pure receivers: one thread reads them all.
    Reactor(Reactor),
    /// A client per connection, for connections that also send: its reader task taps
    /// `message` events, and a receive task per connection takes what the tap leaves.
    Clients {
        clients: Vec<Option<Arc<Client>>>,
        seen: Vec<SharedSeen>,
        tasks: Vec<Option<JoinHandle<()>>>,
        stop: watch::Sender<bool>,
        latency: Arc<Vec<Mutex<Latency>>>,
    },
}

impl LocalReceivers {
    /// Connects every member (paced) and starts reading; counts into `live`. Fails only when
    /// the reading thread of pure receivers cannot start (connection failures are counted).
    pub async fn start(job: &ReceiverJob, live: Arc<Live>) -> anyhow::Result<LocalReceivers> {
        let tokens: Vec<String> = job.members.iter().map(|m| m.token.clone()).collect();
        let deadline = Instant::now() + Duration::from_secs_f64(job.connect_timeout_s);
        let live2 = live.clone();
        let format = job.target.format();
        if job.pure {
            let (raws, connect) = connect_all_raw(
                &job.target,
                &tokens,
                job.first_index,
                job.pacing,
                deadline,
                &move || Live::bump(&live2.connects),
            )
            .await;
            let reactor = Reactor::start(raws, live).context("starting the receivers' thread")?;
            return Ok(LocalReceivers {
                specs: job.members.clone(),
                connect,
                reading: Reading::Reactor(reactor),
                format,
                target: job.target.clone(),
                first_index: job.first_index,
            });
        }
        let latency: Arc<Vec<Mutex<Latency>>> =
            Arc::new((0..SHARDS).map(|_| Mutex::default()).collect());
        let seen: Vec<SharedSeen> = (0..tokens.len()).map(|_| Arc::default()).collect();
        let make_tap = |i: usize| -> Option<Tap> {
            let (seen, live, latency) = (seen[i].clone(), live.clone(), latency.clone());
            Some(Box::new(move |msg: Data<'_>| {
                tap_message(msg, &seen, &live, &latency[i % SHARDS])
            }))
        };
        let (clients, connect) = connect_all(
            &job.target,
            &tokens,
            job.first_index,
            job.pacing,
            deadline,
            &move || Live::bump(&live2.connects),
            &make_tap,
        )
        .await;
        let (stop, stop_rx) = watch::channel(false);
        let tasks = clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.as_ref().map(|c| {
                    tokio::spawn(receive(
                        c.clone(),
                        seen[i].clone(),
                        live.clone(),
                        latency.clone(),
                        i % SHARDS,
                        stop_rx.clone(),
                    ))
                })
            })
            .collect();
        Ok(LocalReceivers {
            specs: job.members.clone(),
            connect,
            reading: Reading::Clients {
                clients,
                seen,
                tasks,
                stop,
                latency,
            },
            format,
            target: job.target.clone(),
            first_index: job.first_index,
        })
    }

    /// The connections (None where connecting failed), e.g. for scenarios that also send on them.
    /// Pure receivers have none during the run: their thread reads the sockets.
    pub fn clients(&self) -> &[Option<Arc<Client>>] {
        match &self.reading {
            Reading::Clients { clients, .. } => clients,
            Reading::Reactor(_) => &[],
        }
    }

    /// Tells receiver `i` which convs it must see all of, once they are known (e.g. after
    /// `chat.open` on its own connection).
    pub fn set_convs(&mut self, i: usize, convs: Vec<String>) {
        self.specs[i].convs = convs;
    }

    /// How the connection phase went.
    pub fn connect_stats(&self) -> &ConnectStats {
        &self.connect
    }

    /// Stops reading, syncs what each receiver missed of `acked` (conv → acked seqs) and returns
    /// the measurements. Closes the connections.
    pub async fn finish(self, acked: &HashMap<String, Vec<u64>>) -> ReceiverResult {
        let mut result = ReceiverResult {
            connect: self.connect,
            ..Default::default()
        };
        let mut work = Vec::new();
        let mut shards = None;
        match self.reading {
            Reading::Reactor(reactor) => match reactor.finish() {
                // Pure receivers become clients again, for the sync.
                Ok((finished, latency)) => {
                    result.latency.merge(&latency);
                    for (f, spec) in finished.into_iter().zip(self.specs) {
                        let client = f
                            .raw
                            .map(|raw| Arc::new(Client::from_raw(raw, self.format, None)));
                        work.push((client, spec, f.seen));
                    }
                }
                Err(e) => eprintln!("receivers: {e:#}"),
            },
            Reading::Clients {
                clients,
                seen,
                tasks,
                stop,
                latency,
            } => {
                let _ = stop.send(true);
                let slots = clients.into_iter().zip(self.specs).zip(tasks);
                for (((client, spec), task), seen) in slots.zip(seen) {
                    if let Some(t) = task {
                        let _ = t.await;
                    }
                    // Events that still arrive (during the sync below) go to a fresh, discarded
                    // record.
                    let seen = std::mem::take(&mut *seen.lock().unwrap());
                    work.push((client, spec, seen));
                }
                shards = Some(latency);
            }
        }
        let (target, first_index) = (&self.target, self.first_index);
        let checked: Vec<(Seen, Loss)> = futures_util::stream::iter(work.into_iter().enumerate())
            .map(|(i, (client, spec, mut seen))| async move {
                // A receiver the server cut off (a slow consumer) or that never got in syncs on
                // a new connection, as a real client would after reconnecting.
                let client = match client {
                    Some(c) if seen.closed.is_none() => Some(c),
                    _ => target
                        .connect(first_index + i, &spec.token)
                        .await
                        .ok()
                        .map(Arc::new),
                };
                let loss = check(client.as_deref(), &spec, &mut seen, acked).await;
                if let Some(c) = client {
                    if let Ok(c) = Arc::try_unwrap(c) {
                        c.close().await;
                    }
                }
                (seen, loss)
            })
            .buffer_unordered(256)
            .collect()
            .await;
        for (seen, loss) in checked {
            result.deliveries += seen.deliveries;
            result.duplicates += seen.duplicates;
            if let Some(code) = seen.closed {
                *result.closed_by_server.entry(code).or_default() += 1;
            }
            if let Some(t) = seen.origin_ns {
                result.origin_received += 1;
                result.origin_last_ns = result.origin_last_ns.max(t);
            }
            result.loss.merge(&loss);
        }
        for shard in shards.iter().flat_map(|s| s.iter()) {
            result.latency.merge(&shard.lock().unwrap());
        }
        result
    }
}

/// The send time stamped in a message body (`text`, or an announcement's `text`).
pub fn body_stamp(body: &Value) -> Option<u64> {
    let text = body
        .get("text")
        .or_else(|| body.get("announcement").and_then(|a| a.get("text")))?
        .as_str()?;
    clock::parse_stamp(text)
}

/// The fields of a `message` event that receivers look at; the rest is skipped unread.
#[derive(Deserialize)]
pub(crate) struct MessagePeek<'a> {
    #[serde(borrow)]
    pub(crate) ev: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) conv: Cow<'a, str>,
    pub(crate) seq: u64,
    #[serde(borrow, default)]
    pub(crate) body: Option<BodyPeek<'a>>,
    #[serde(default)]
    pub(crate) origin: Option<IgnoredAny>,
}

#[derive(Deserialize)]
pub(crate) struct BodyPeek<'a> {
    #[serde(borrow, default)]
    pub(crate) text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) announcement: Option<AnnouncementPeek<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct AnnouncementPeek<'a> {
    #[serde(borrow, default)]
    pub(crate) text: Option<Cow<'a, str>>,
}

/// The fields of a `message` event, read without decoding the rest; None for anything else.
pub(crate) fn peek(msg: Data<'_>) -> Option<MessagePeek<'_>> {
    let p: MessagePeek = match msg {
        Data::Text(t) => serde_json::from_str(t).ok()?,
        Data::Binary(b) => rmp_serde::from_slice(b).ok()?,
    };
    (p.ev == "message").then_some(p)
}

/// A receiver's tap: records `message` events straight from the reader; leaves anything else.
fn tap_message(msg: Data<'_>, seen: &Mutex<Seen>, live: &Live, latency: &Mutex<Latency>) -> bool {
    let Some(p) = peek(msg) else {
        return false;
    };
    let now = clock::now_ns();
    let stamp = p.body.as_ref().and_then(|b| {
        b.text
            .as_deref()
            .or_else(|| b.announcement.as_ref()?.text.as_deref())
            .and_then(clock::parse_stamp)
    });
    record(
        &mut seen.lock().unwrap(),
        live,
        latency,
        &p.conv,
        p.seq,
        now,
        stamp,
        p.origin.is_some(),
    );
    true
}

/// Counts one received `message` event.
#[allow(clippy::too_many_arguments)]
fn record(
    seen: &mut Seen,
    live: &Live,
    latency: &Mutex<Latency>,
    conv: &str,
    seq: u64,
    now: u64,
    stamp: Option<u64>,
    origin: bool,
) {
    let set = match seen.per_conv.get_mut(conv) {
        Some(s) => s,
        None => seen.per_conv.entry(conv.to_owned()).or_default(),
    };
    if !set.insert(seq) {
        seen.duplicates += 1;
        return;
    }
    seen.deliveries += 1;
    Live::bump(&live.deliveries);
    if let Some(sent) = stamp {
        latency.lock().unwrap().record_ns(now.saturating_sub(sent));
    }
    if origin && seen.origin_ns.is_none() {
        seen.origin_ns = Some(now);
    }
}

/// Reads what the tap left: closes, and events in a shape the tap does not know.
async fn receive(
    client: Arc<Client>,
    seen: SharedSeen,
    live: Arc<Live>,
    latency: Arc<Vec<Mutex<Latency>>>,
    shard: usize,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let item = tokio::select! {
            item = client.next(Duration::from_secs(3600)) => item,
            _ = stop.changed() => break,
        };
        let ev = match item {
            Some(Incoming::Event(ev)) => ev,
            Some(Incoming::Closed(close)) => {
                let code = close.map(|(c, _)| c.to_string()).unwrap_or("none".into());
                seen.lock().unwrap().closed = Some(code);
                Live::bump(&live.disconnects);
                break;
            }
            Some(Incoming::Unsolicited(_)) => continue,
            None => break,
        };
        if ev.get("ev").and_then(Value::as_str) != Some("message") {
            continue;
        }
        let now = clock::now_ns();
        let (Some(conv), Some(seq)) = (
            ev.get("conv").and_then(Value::as_str),
            ev.get("seq").and_then(Value::as_u64),
        ) else {
            continue;
        };
        record(
            &mut seen.lock().unwrap(),
            &live,
            &latency[shard],
            conv,
            seq,
            now,
            ev.get("body").and_then(body_stamp),
            ev.get("origin").is_some_and(|o| !o.is_null()),
        );
    }
}

/// Compares what `spec`'s receiver saw with `acked`, syncing from its first gap.
async fn check(
    client: Option<&Client>,
    spec: &ReceiverSpec,
    seen: &mut Seen,
    acked: &HashMap<String, Vec<u64>>,
) -> Loss {
    let mut loss = Loss::default();
    for conv in &spec.convs {
        let Some(acked) = acked.get(conv) else {
            continue;
        };
        let set = seen.per_conv.entry(conv.clone()).or_default();
        loss.expected += acked.len() as u64;
        let missing: Vec<u64> = acked
            .iter()
            .copied()
            .filter(|s| !set.contains(*s))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let n_missing = missing.len() as u64;
        loss.missed_live += n_missing;
        let synced = match client {
            Some(c) => sync_range(c, conv, missing[0] - 1, *missing.last().unwrap(), set).await,
            None => Err(anyhow::anyhow!("not connected")),
        };
        if synced.is_err() {
            loss.sync_failures += 1;
        }
        let lost: Vec<u64> = missing.into_iter().filter(|s| !set.contains(*s)).collect();
        loss.recovered_by_sync += n_missing - lost.len() as u64;
        loss.lost += lost.len() as u64;
        if !lost.is_empty() {
            let mut listed = lost;
            listed.truncate(1000);
            loss.lost_seqs.insert(conv.clone(), listed);
        }
    }
    loss
}

/// Pages `sync {conv, after, limit}` until `more` is false or `until` is passed, marking every
/// returned seq in `set`.
pub async fn sync_range(
    client: &Client,
    conv: &str,
    mut after: u64,
    until: u64,
    set: &mut SeqSet,
) -> anyhow::Result<()> {
    loop {
        let reply = client
            .request("sync", json!({"conv": conv, "after": after, "limit": 1000}))
            .await?
            .map_err(|e| anyhow::anyhow!("sync failed: {e}"))?;
        let messages = reply
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for m in &messages {
            if let Some(seq) = m.get("seq").and_then(Value::as_u64) {
                set.insert(seq);
                after = after.max(seq);
            }
        }
        let more = reply.get("more").and_then(Value::as_bool).unwrap_or(false);
        if !more || messages.is_empty() || after >= until {
            return Ok(());
        }
    }
}

/// Convenience for scenarios: the deliveries counter as a plain number.
pub fn deliveries(live: &Live) -> u64 {
    live.deliveries.load(Relaxed)
}
