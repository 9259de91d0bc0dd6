//! `churn`: sessions connect and disconnect at a steady rate while a fan-out flows; measures
//! connects/disconnects per second, churn handshake latency, and that the fan-out stays whole.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::fanout::{plan_for, FanoutPlan};
use super::{create_users, Ctx};
use crate::admin::Admin;
use crate::cpu::CpuWatch;
use crate::live::{wait_deliveries, Live, Sampler};
use crate::net::{connect_error_kind, ConnectStats};
use crate::publisher::{drain, publish, BodyKind, PublishPlan};
use crate::report::Report;

/// Churn knobs.
#[derive(Clone, Debug)]
pub struct ChurnOpts {
    /// Connects per second (each followed, once `live` are open, by one disconnect).
    pub churn_rate: f64,
    /// Churning sessions kept open at once.
    pub live: usize,
    /// The fan-out's messages per second.
    pub rate: f64,
}

/// The steady group plus the churning users' tokens (also members of the group).
#[derive(Clone, Debug)]
pub struct ChurnPlan {
    pub fanout: FanoutPlan,
    pub churners: Vec<String>,
}

/// One flat group of `members` steady members plus `churners` churning ones.
pub async fn setup(
    ctx: &Ctx,
    admin: &Admin,
    members: usize,
    churners: usize,
) -> anyhow::Result<ChurnPlan> {
    let steady = create_users(admin, &ctx.run_id, "churn-steady", members.max(2)).await?;
    let churn = create_users(admin, &ctx.run_id, "churn-churner", churners.max(1)).await?;
    let mut all = steady.ids[1..].to_vec();
    all.extend(churn.ids.iter().cloned());
    let conv = admin
        .create_group(
            &steady.ids[0],
            &format!("kaiwa-lt-{}-churn", ctx.run_id),
            "flat",
            None,
            &all,
        )
        .await
        .context("creating the churn group")?;
    Ok(ChurnPlan {
        fanout: plan_for(conv, &steady.tokens, 1),
        churners: churn.tokens,
    })
}

/// Runs the fan-out and the churn side by side for `ctx.duration`.
pub async fn run(ctx: &Ctx, plan: &ChurnPlan, opts: &ChurnOpts) -> anyhow::Result<Report> {
    let live = Arc::new(Live::default());
    let fan = &plan.fanout;
    let pool = ctx.start_receivers(1, fan.receivers.clone(), &live).await?;
    let publisher = Arc::new(ctx.target.connect(0, &fan.publishers[0]).await?);
    let drainer = drain(publisher.clone());
    let cpu = CpuWatch::start(ctx.admin.as_ref(), &ctx.target).await;
    let sampler = Sampler::start(live.clone(), "churn", ctx.progress);
    let started = Instant::now();
    let until = started + ctx.duration;
    let pub_task = tokio::spawn(publish(
        publisher.clone(),
        PublishPlan {
            conv: fan.conv.clone(),
            rate: Some(opts.rate),
            phase: 0.0,
            window: 64,
            payload: ctx.payload,
            until,
            measure_from: started + ctx.warmup,
            max_messages: None,
            id_prefix: format!("{}-churn", ctx.run_id),
            body: BodyKind::Text,
            delivery_bound: None,
        },
        live.clone(),
    ));
    let first_index = 1 + fan.receivers.len();
    let churn = churn_loop(ctx, &plan.churners, first_index, opts, until, live.clone()).await;
    let mut sent = pub_task.await?;
    sent.ack_latency.merge(&live.take_ack_latency());
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu.finish().await;
    wait_deliveries(
        &live,
        u64::MAX,
        Duration::from_secs(1),
        Duration::from_secs(10),
    )
    .await;
    let timeline = sampler.finish().await;
    drainer.abort();
    let acked = HashMap::from([(fan.conv.clone(), sent.acked.clone())]);
    let rx = pool.finish(&acked).await?;
    let params = json!({
        "members": fan.receivers.len() + 1, "churners": plan.churners.len(),
        "churn_rate": opts.churn_rate, "live": opts.live, "rate": opts.rate,
        "duration_s": ctx.duration.as_secs_f64(),
    });
    let mut report = Report::new("churn", params, &ctx.target, elapsed, &rx, &sent, timeline);
    cpu.record(&mut report.extra);
    let (stats, disconnects) = churn;
    report.extra.insert(
        "churn_connects_per_s".into(),
        json!(stats.ok as f64 / elapsed.max(0.001)),
    );
    report.extra.insert(
        "churn_disconnects_per_s".into(),
        json!(disconnects as f64 / elapsed.max(0.001)),
    );
    report.extra.insert(
        "churn_handshake".into(),
        serde_json::to_value(stats.handshake.percentiles())?,
    );
    report
        .extra
        .insert("churn_connect_errors".into(), json!(stats.errors));
    Ok(report)
}

/// Opens a churner every `1/churn_rate` s (round robin over the tokens); past `live` open ones,
/// closes the oldest. Returns connect stats and the number of disconnects.
async fn churn_loop(
    ctx: &Ctx,
    tokens: &[String],
    first_index: usize,
    opts: &ChurnOpts,
    until: Instant,
    live: Arc<Live>,
) -> (ConnectStats, u64) {
    let mut stats = ConnectStats::default();
    let mut open = VecDeque::new();
    let mut disconnects = 0u64;
    let period = Duration::from_secs_f64(1.0 / opts.churn_rate.max(0.01));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0usize;
    while Instant::now() < until {
        tick.tick().await;
        let i = n % tokens.len().max(1);
        n += 1;
        stats.attempted += 1;
        let t0 = Instant::now();
        match ctx.target.connect(first_index + i, &tokens[i]).await {
            Ok(c) => {
                stats.ok += 1;
                stats.handshake.record_ns(t0.elapsed().as_nanos() as u64);
                Live::bump(&live.connects);
                // Churners must read, or their queue fills; nothing is measured on them.
                let c = Arc::new(c);
                open.push_back((c.clone(), drain(c)));
            }
            Err(e) => {
                *stats.errors.entry(connect_error_kind(&e)).or_default() += 1;
                Live::bump(&live.errors);
            }
        }
        while open.len() > opts.live {
            let (c, d) = open.pop_front().expect("non-empty");
            d.abort();
            let _ = d.await;
            close_arc(c).await;
            disconnects += 1;
            Live::bump(&live.disconnects);
        }
    }
    for (c, d) in open {
        d.abort();
        let _ = d.await;
        close_arc(c).await;
    }
    stats.elapsed_s = ctx.duration.as_secs_f64();
    (stats, disconnects)
}

async fn close_arc(c: Arc<crate::client::Client>) {
    if let Ok(c) = Arc::try_unwrap(c) {
        // Closing must not stall the churn clock: bounded.
        let _ = tokio::time::timeout(Duration::from_millis(500), c.close()).await;
    }
}
