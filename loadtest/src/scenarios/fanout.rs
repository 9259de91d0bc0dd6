//! `fanout`: one flat group of N connected members, P publishers; measures deliveries/s,
//! send→deliver latency and loss.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::{create_users, Ctx};
use crate::admin::Admin;
use crate::cpu::CpuWatch;
use crate::live::{wait_deliveries, Live, Sampler};
use crate::publisher::{drain, publish, BodyKind, DeliveryBound, PublishPlan, PublishResult};
use crate::receivers::ReceiverSpec;
use crate::report::Report;

/// Fan-out knobs.
#[derive(Clone, Debug)]
pub struct FanoutOpts {
    /// Total messages per second over all publishers; None = max rate within the window.
    pub rate: Option<f64>,
    /// Un-acked sends per publisher.
    pub window: usize,
}

/// Extra members that connect and then stop reading, to show that a stalled reader does not
/// slow the others; they are left out of every figure.
#[derive(Clone, Debug, Default)]
pub struct Stalled {
    pub tokens: Vec<String>,
}

/// Who takes part: the group's conv, the publishers' tokens and the receivers.
#[derive(Clone, Debug)]
pub struct FanoutPlan {
    pub conv: String,
    pub publishers: Vec<String>,
    pub receivers: Vec<ReceiverSpec>,
    /// Members that connect and stop reading (see [`Stalled`]).
    pub stalled: Stalled,
}

/// Creates `members` users (the first `publishers` of them publish) and one flat group of them all.
pub async fn setup(
    ctx: &Ctx,
    admin: &Admin,
    members: usize,
    publishers: usize,
    stalled: usize,
) -> anyhow::Result<FanoutPlan> {
    let publishers = publishers.clamp(1, members.max(1));
    let total = members.max(publishers + 1) + stalled;
    let mut users = create_users(admin, &ctx.run_id, "fanout", total).await?;
    let conv = admin
        .create_group(
            &users.ids[0],
            &format!("kaiwa-lt-{}-fanout", ctx.run_id),
            "flat",
            None,
            &users.ids[1..],
        )
        .await
        .context("creating the fan-out group")?;
    let stalled_tokens = users.tokens.split_off(users.tokens.len() - stalled);
    let mut plan = plan_for(conv, &users.tokens, publishers);
    plan.stalled.tokens = stalled_tokens;
    Ok(plan)
}

/// Splits a member list into publishers (the first `publishers`) and receivers (the rest).
pub fn plan_for(conv: String, tokens: &[String], publishers: usize) -> FanoutPlan {
    FanoutPlan {
        receivers: tokens[publishers..]
            .iter()
            .map(|t| ReceiverSpec {
                token: t.clone(),
                convs: vec![conv.clone()],
            })
            .collect(),
        publishers: tokens[..publishers].to_vec(),
        conv,
        stalled: Stalled::default(),
    }
}

/// Runs the traffic phase of a fan-out: connect receivers (paced), publish for `ctx.duration`, let
/// the tail arrive, check loss by sync.
pub async fn run(ctx: &Ctx, plan: &FanoutPlan, opts: &FanoutOpts) -> anyhow::Result<Report> {
    let live = Arc::new(Live::default());
    let pool = ctx
        .start_receivers(plan.publishers.len(), plan.receivers.clone(), &live)
        .await?;
    let mut pubs = Vec::new();
    for (i, t) in plan.publishers.iter().enumerate() {
        let c = ctx
            .target
            .connect(i, t)
            .await
            .context("connecting a publisher")?;
        pubs.push(Arc::new(c));
    }
    let drains: Vec<_> = pubs.iter().map(|c| drain(c.clone())).collect();
    let mut stalled = Vec::new();
    for (i, t) in plan.stalled.tokens.iter().enumerate() {
        let index = plan.publishers.len() + plan.receivers.len() + i;
        let c = ctx
            .target
            .connect(index, t)
            .await
            .context("connecting a stalled member")?;
        c.pause_reading();
        stalled.push(c);
    }
    let cpu = CpuWatch::start(ctx.admin.as_ref(), &ctx.target).await;
    let sampler = Sampler::start(live.clone(), "fanout", ctx.progress);
    let started = Instant::now();
    let until = started + ctx.duration;
    let per_pub_rate = opts.rate.map(|r| r / pubs.len() as f64);
    let delivery_bound = Some(DeliveryBound {
        receivers: pool.connect_stats().ok,
        messages: (opts.window * pubs.len()) as u64,
    });
    let tasks: Vec<_> = pubs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let plan = PublishPlan {
                conv: plan.conv.clone(),
                rate: per_pub_rate,
                phase: i as f64 / pubs.len() as f64,
                window: opts.window,
                payload: ctx.payload,
                until,
                measure_from: started + ctx.warmup,
                max_messages: None,
                id_prefix: format!("{}-p{i}", ctx.run_id),
                body: BodyKind::Text,
                delivery_bound,
            };
            tokio::spawn(publish(c.clone(), plan, live.clone()))
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu.finish().await;
    let mut sent = PublishResult::default();
    for r in &results {
        sent.merge(r);
    }
    sent.sort();
    sent.ack_latency.merge(&live.take_ack_latency());
    let connected = pool.connect_stats().ok;
    wait_deliveries(
        &live,
        sent.acked.len() as u64 * connected,
        Duration::from_secs(1),
        Duration::from_secs(10),
    )
    .await;
    let timeline = sampler.finish().await;
    let acked = HashMap::from([(plan.conv.clone(), sent.acked.clone())]);
    let rx = pool.finish(&acked).await?;
    for d in drains {
        d.abort();
    }
    drop(stalled);
    let params = json!({
        "members": plan.receivers.len() + plan.publishers.len(),
        "publishers": plan.publishers.len(),
        "stalled": plan.stalled.tokens.len(),
        "rate": opts.rate, "window": opts.window, "payload": ctx.payload,
        "duration_s": ctx.duration.as_secs_f64(),
    });
    let mut report = Report::new("fanout", params, &ctx.target, elapsed, &rx, &sent, timeline);
    cpu.record(&mut report.extra);
    Ok(report)
}
