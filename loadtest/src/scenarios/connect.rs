//! `connect`: N authenticated idle connections opened in paced batches and held; measures
//! handshakes/s and the server's resident memory per connection (from `/metrics`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::{create_users, Ctx};
use crate::admin::{sum_over_nodes, Admin};
use crate::live::{Live, Sampler};
use crate::net::Target;
use crate::publisher::PublishResult;
use crate::receivers::ReceiverSpec;
use crate::report::Report;

/// The Prometheus metric with the server's resident memory.
pub const RSS_METRIC: &str = "process_resident_memory_bytes";

/// The resident memory of every node the run targets, summed, if each one's `/metrics` can be
/// read (connections are spread over all of them).
pub async fn server_rss(admin: Option<&Admin>, target: &Target) -> Option<f64> {
    sum_over_nodes(admin, target, RSS_METRIC).await
}

/// Creates `n` users with tokens.
pub async fn setup(ctx: &Ctx, admin: &Admin, n: usize) -> anyhow::Result<Vec<String>> {
    Ok(create_users(admin, &ctx.run_id, "connect", n).await?.tokens)
}

/// Opens one connection per token, holds them for `ctx.duration`, reads RSS before and after
/// (`admin` None skips the memory reading).
pub async fn run(ctx: &Ctx, admin: Option<&Admin>, tokens: &[String]) -> anyhow::Result<Report> {
    let rss_before = server_rss(admin, &ctx.target).await;
    let live = Arc::new(Live::default());
    let sampler = Sampler::start(live.clone(), "connect", ctx.progress);
    let pool = ctx
        .start_receivers(
            0,
            tokens
                .iter()
                .map(|t| ReceiverSpec {
                    token: t.clone(),
                    convs: vec![],
                })
                .collect(),
            &live,
        )
        .await?;
    let started = Instant::now();
    tokio::time::sleep(ctx.duration).await;
    let rss_after = server_rss(admin, &ctx.target).await;
    let held = started.elapsed().as_secs_f64();
    let timeline = sampler.finish().await;
    let rx = pool.finish(&HashMap::new()).await?;
    let params = json!({"connections": tokens.len(), "hold_s": ctx.duration.as_secs_f64(),
        "batch": ctx.pacing.batch, "batch_pause_ms": ctx.pacing.pause_ms});
    let mut report = Report::new(
        "connect",
        params,
        &ctx.target,
        held,
        &rx,
        &PublishResult::default(),
        timeline,
    );
    report
        .extra
        .insert("rss_before_bytes".into(), json!(rss_before));
    report
        .extra
        .insert("rss_after_bytes".into(), json!(rss_after));
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        let per = (a - b) / rx.connect.ok.max(1) as f64;
        report
            .extra
            .insert("rss_per_connection_bytes".into(), json!(per.round()));
    }
    report.extra.insert(
        "still_open_at_end".into(),
        json!(rx
            .connect
            .ok
            .saturating_sub(rx.closed_by_server.values().sum::<u64>())),
    );
    Ok(report)
}
