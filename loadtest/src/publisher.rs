//! Sending side of a run: one publisher sends stamped messages into one conversation, at a fixed
//! rate or as fast as a bounded window of un-acked sends allows, and records acks.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::client::Client;
use crate::clock;
use crate::live::Live;
use crate::stats::{Errors, Latency};

/// What a publisher sends.
#[derive(Clone, Debug)]
pub enum BodyKind {
    /// `{"text": <stamp + padding>}`.
    Text,
    /// `{"announcement": {"text": <stamp>, "likes": true, "comments": true}}` (tree actions).
    Announcement,
}

/// One publisher's orders.
#[derive(Clone, Debug)]
pub struct PublishPlan {
    pub conv: String,
    /// Messages per second for this publisher; None = as fast as the window allows.
    pub rate: Option<f64>,
    /// Where in its send interval this publisher starts, as a fraction in [0, 1). Publishers of
    /// one run get evenly spread phases, so that a total rate arrives as a steady stream and not
    /// as one burst from every publisher at each tick.
    pub phase: f64,
    /// At most this many sends without an ack.
    pub window: usize,
    /// Body text size in bytes.
    pub payload: usize,
    /// Stop sending at this instant.
    pub until: Instant,
    /// Sends before this instant are warm-up: acked and delivered, but their latencies are
    /// not recorded.
    pub measure_from: Instant,
    /// At most this many messages (None = until the deadline).
    pub max_messages: Option<u64>,
    /// Makes `client_msg_id`s unique across publishers and runs.
    pub id_prefix: String,
    pub body: BodyKind,
    /// At max rate, also wait for the receivers: see [`DeliveryBound`].
    pub delivery_bound: Option<DeliveryBound>,
}

/// At max rate, the readers set the pace: a publisher waits while more than `messages` acked
/// messages (of every publisher of the run, counted in [`Live`]) have not yet reached all
/// `receivers`. Acks come once a message is durable, long before a thousand readers have read
/// it, so a window of un-acked sends alone lets a publisher outrun a busy tool, and the node
/// then rightly cuts the readers that fall too far behind off as slow consumers.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryBound {
    pub receivers: u64,
    pub messages: u64,
}

impl DeliveryBound {
    /// Acked messages not yet delivered to every receiver, as counted so far.
    pub fn undelivered(&self, live: &Live) -> u64 {
        let owed = live.acked.load(Relaxed) * self.receivers;
        owed.saturating_sub(live.deliveries.load(Relaxed)) / self.receivers.max(1)
    }
}

/// How long a send answered `rate_limited` holds its place in the window: a client told to slow
/// down does, instead of retrying at once (each refusal costs the node a request).
const RATE_LIMITED_PAUSE: Duration = Duration::from_millis(10);

/// What a publisher measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishResult {
    pub sent: u64,
    /// Seqs of acked messages, sorted.
    pub acked: Vec<u64>,
    /// Send → ack time (publishers record into [`Live::ack_latency`]; scenarios move it here).
    pub ack_latency: Latency,
    pub errors: Errors,
}

impl PublishResult {
    /// Sorts the acked seqs (after merges).
    pub fn sort(&mut self) {
        self.acked.sort_unstable();
    }

    /// Adds another publisher's result (acked seqs are only comparable within one conv). The
    /// acked seqs are appended unsorted: call [`PublishResult::sort`] after the last merge.
    pub fn merge(&mut self, o: &PublishResult) {
        self.sent += o.sent;
        self.acked.extend(&o.acked);
        self.ack_latency.merge(&o.ack_latency);
        crate::stats::merge_errors(&mut self.errors, &o.errors);
    }
}

/// Builds the body of one stamped message (marked as warm-up when `warmup`).
pub fn make_body(kind: &BodyKind, payload: usize, warmup: bool) -> Value {
    let text = if warmup {
        clock::warmup_text(payload)
    } else {
        clock::stamped_text(payload)
    };
    match kind {
        BodyKind::Text => json!({ "text": text }),
        BodyKind::Announcement => {
            json!({"announcement": {"text": text, "likes": true, "comments": true}})
        }
    }
}

/// Sends until the plan's deadline (or message budget), then waits (bounded) for outstanding acks.
pub async fn publish(client: Arc<Client>, plan: PublishPlan, live: Arc<Live>) -> PublishResult {
    let window = plan.window.max(1);
    let permits = Arc::new(Semaphore::new(window));
    let result = Arc::new(Mutex::new(PublishResult::default()));
    let offset = plan
        .rate
        .map(|r| plan.phase.clamp(0.0, 1.0) / r.max(0.001))
        .unwrap_or(0.0);
    let start = Instant::now() + Duration::from_secs_f64(offset);
    let mut n: u64 = 0;
    loop {
        if Instant::now() >= plan.until || plan.max_messages.is_some_and(|m| n >= m) {
            break;
        }
        if let Some(rate) = plan.rate {
            let due = start + Duration::from_secs_f64(n as f64 / rate.max(0.001));
            if due >= plan.until {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        if let (None, Some(bound)) = (plan.rate, plan.delivery_bound) {
            while bound.undelivered(&live) > bound.messages && Instant::now() < plan.until {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore open"),
            _ = tokio::time::sleep_until(plan.until.into()) => break,
        };
        n += 1;
        let warmup = Instant::now() < plan.measure_from;
        let params = json!({
            "conv": plan.conv,
            "client_msg_id": format!("{}-{n}", plan.id_prefix),
            "body": make_body(&plan.body, plan.payload, warmup),
        });
        let (client, live, result) = (client.clone(), live.clone(), result.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            Live::bump(&live.sent);
            let reply = client.request("send", params).await;
            let took = t0.elapsed().as_nanos() as u64;
            let limited = record_reply(&result, &live, reply, took, warmup);
            if limited {
                tokio::time::sleep(RATE_LIMITED_PAUSE).await;
            }
            drop(permit);
        });
    }
    // Outstanding sends finish within the client's request timeout.
    let _ = tokio::time::timeout(
        crate::client::REQUEST_TIMEOUT + Duration::from_secs(1),
        permits.acquire_many(window as u32),
    )
    .await;
    let mut r = std::mem::take(&mut *result.lock().unwrap());
    r.acked.sort_unstable();
    r
}

/// Counts one send's reply; true when the server said `rate_limited`.
fn record_reply(
    result: &Mutex<PublishResult>,
    live: &Live,
    reply: anyhow::Result<Result<Value, crate::client::ErrorBody>>,
    took: u64,
    warmup: bool,
) -> bool {
    let mut r = result.lock().unwrap();
    r.sent += 1;
    match reply {
        Ok(Ok(ok)) => match ok.get("seq").and_then(Value::as_u64) {
            Some(seq) => {
                r.acked.push(seq);
                if !warmup {
                    live.ack_latency.lock().unwrap().record_ns(took);
                }
                Live::bump(&live.acked);
            }
            None => {
                *r.errors.entry("ack_without_seq".into()).or_default() += 1;
                Live::bump(&live.errors);
            }
        },
        Ok(Err(e)) => {
            let limited = e.code == "rate_limited";
            *r.errors.entry(e.code).or_default() += 1;
            Live::bump(&live.errors);
            return limited;
        }
        Err(e) => {
            let kind = if e.to_string().contains("no reply") {
                "timeout"
            } else {
                "transport"
            };
            *r.errors.entry(kind.into()).or_default() += 1;
            Live::bump(&live.errors);
        }
    }
    false
}

/// Reads and discards a connection's events (publishers' own echoes), so their queue never fills.
pub fn drain(client: Arc<Client>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(item) = client.next(Duration::from_secs(3600)).await {
            if matches!(item, crate::client::Incoming::Closed(_)) {
                break;
            }
        }
    })
}
