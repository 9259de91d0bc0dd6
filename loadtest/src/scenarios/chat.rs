//! `chat`: K concurrent 1:1 pairs; both sides of each pair send into their chat and receive the
//! other's messages. Measures send→ack latency, acked msgs/s, delivery latency and loss.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::json;

use super::{create_users, Ctx};
use crate::admin::Admin;
use crate::cpu::CpuWatch;
use crate::live::{wait_deliveries, Live, Sampler};
use crate::publisher::{publish, BodyKind, PublishPlan, PublishResult};
use crate::receivers::{LocalReceivers, ReceiverJob, ReceiverSpec};
use crate::report::Report;

/// Chat knobs.
#[derive(Clone, Debug)]
pub struct ChatOpts {
    /// Total messages per second over all senders; None = max rate within the window.
    pub rate: Option<f64>,
    /// Un-acked sends per sender.
    pub window: usize,
}

/// The pairs: tokens `[a0, b0, a1, b1, ...]` and user ids in the same order.
#[derive(Clone, Debug)]
pub struct ChatPlan {
    pub tokens: Vec<String>,
    pub users: Vec<String>,
}

/// Creates 2K users.
pub async fn setup(ctx: &Ctx, admin: &Admin, pairs: usize) -> anyhow::Result<ChatPlan> {
    let users = create_users(admin, &ctx.run_id, "chat", pairs * 2).await?;
    Ok(ChatPlan {
        tokens: users.tokens,
        users: users.ids,
    })
}

/// Connects every user, opens each pair's chat (`chat.open`), chats for `ctx.duration`.
pub async fn run(ctx: &Ctx, plan: &ChatPlan, opts: &ChatOpts) -> anyhow::Result<Report> {
    if plan.tokens.len() > ctx.per_process {
        bail!(
            "chat keeps both sides of every pair in this process: at most {} users",
            ctx.per_process
        );
    }
    let live = Arc::new(Live::default());
    let job = ReceiverJob {
        target: ctx.target.clone(),
        first_index: 0,
        pacing: ctx.pacing,
        members: plan
            .tokens
            .iter()
            .map(|t| ReceiverSpec {
                token: t.clone(),
                convs: vec![],
            })
            .collect(),
        connect_timeout_s: 300.0,
        pure: false,
    };
    let mut rx = LocalReceivers::start(&job, live.clone()).await?;
    let clients = rx.clients().to_vec();
    // Open the chats (A opens with B), 64 at a time.
    let opened: Vec<(usize, anyhow::Result<String>)> =
        futures_util::stream::iter((0..plan.tokens.len() / 2).map(|k| {
            let (a, peer) = (clients[2 * k].clone(), plan.users[2 * k + 1].clone());
            async move {
                let r = async {
                    let a = a.context("user not connected")?;
                    let ok = a
                        .request("chat.open", json!({ "user": peer }))
                        .await?
                        .map_err(|e| anyhow::anyhow!("chat.open: {e}"))?;
                    ok["conv"]
                        .as_str()
                        .map(str::to_owned)
                        .context("chat.open without conv")
                }
                .await;
                (k, r)
            }
        }))
        .buffer_unordered(64)
        .collect()
        .await;
    let mut convs = vec![None; plan.tokens.len() / 2];
    let mut open_errors = 0u64;
    for (k, r) in opened {
        match r {
            Ok(conv) => {
                rx.set_convs(2 * k, vec![conv.clone()]);
                rx.set_convs(2 * k + 1, vec![conv.clone()]);
                convs[k] = Some(conv);
            }
            Err(_) => open_errors += 1,
        }
    }
    let cpu = CpuWatch::start(ctx.admin.as_ref(), &ctx.target).await;
    let sampler = Sampler::start(live.clone(), "chat", ctx.progress);
    let started = Instant::now();
    let until = started + ctx.duration;
    let senders: Vec<(usize, String)> = convs
        .iter()
        .enumerate()
        .filter_map(|(k, c)| c.clone().map(|c| (k, c)))
        .flat_map(|(k, c)| [(2 * k, c.clone()), (2 * k + 1, c)])
        .filter(|(i, _)| clients[*i].is_some())
        .collect();
    let per_sender = opts.rate.map(|r| r / senders.len().max(1) as f64);
    let tasks: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(s, (i, conv))| {
            let plan = PublishPlan {
                conv: conv.clone(),
                rate: per_sender,
                phase: s as f64 / senders.len() as f64,
                window: opts.window,
                payload: ctx.payload,
                until,
                measure_from: started + ctx.warmup,
                max_messages: None,
                id_prefix: format!("{}-c{i}", ctx.run_id),
                body: BodyKind::Text,
                delivery_bound: None,
            };
            let c = clients[*i].clone().expect("filtered");
            (conv.clone(), tokio::spawn(publish(c, plan, live.clone())))
        })
        .collect();
    let mut results = Vec::new();
    for (conv, t) in tasks {
        results.push((conv, t.await?));
    }
    // The traffic phase ends with the last publisher; merging below is bookkeeping.
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu.finish().await;
    let mut total = PublishResult::default();
    let mut acked: HashMap<String, Vec<u64>> = HashMap::new();
    for (conv, r) in results {
        acked.entry(conv).or_default().extend(&r.acked);
        total.merge(&r);
    }
    total.sort();
    total.ack_latency.merge(&live.take_ack_latency());
    // Every acked message reaches both sides of its pair.
    wait_deliveries(
        &live,
        total.acked.len() as u64 * 2,
        Duration::from_secs(1),
        Duration::from_secs(10),
    )
    .await;
    let timeline = sampler.finish().await;
    drop(clients);
    for seqs in acked.values_mut() {
        seqs.sort_unstable();
    }
    let result = rx.finish(&acked).await;
    let params = json!({
        "pairs": plan.tokens.len() / 2, "rate": opts.rate, "window": opts.window,
        "payload": ctx.payload, "duration_s": ctx.duration.as_secs_f64(),
    });
    let mut report = Report::new(
        "chat",
        params,
        &ctx.target,
        elapsed,
        &result,
        &total,
        timeline,
    );
    report
        .extra
        .insert("chat_open_errors".into(), json!(open_errors));
    cpu.record(&mut report.extra);
    Ok(report)
}
