//! `tree`: a hierarchical group tree; one announcement action at the root; measures the time until
//! the last member of the whole tree has it (a `message` event carrying `origin`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::{create_users, Ctx};
use crate::admin::Admin;
use crate::client::Client;
use crate::clock;
use crate::live::{wait_deliveries, Live, Sampler};
use crate::publisher::{drain, make_body, BodyKind, PublishResult};
use crate::receivers::ReceiverSpec;
use crate::report::Report;

/// Tree shape.
#[derive(Clone, Copy, Debug)]
pub struct TreeOpts {
    /// Levels, the root included.
    pub depth: usize,
    /// Children per group.
    pub branching: usize,
    /// Members per group (besides the owner).
    pub members: usize,
}

/// The built tree: the owner's token, the root conv and every member with their group.
#[derive(Clone, Debug)]
pub struct TreePlan {
    pub owner_token: String,
    pub root: String,
    pub groups: usize,
    pub members: Vec<ReceiverSpec>,
}

async fn ok(client: &Client, op: &str, params: Value) -> anyhow::Result<Value> {
    client
        .request(op, params)
        .await?
        .map_err(|e| anyhow!("{op}: {e}"))
}

/// Creates the users, then builds the tree over WebSocket as its owner: `group.create` with
/// `parent` for every group, `group.add` for every member.
pub async fn setup(ctx: &Ctx, admin: &Admin, opts: TreeOpts) -> anyhow::Result<TreePlan> {
    let groups: usize = (0..opts.depth.max(1))
        .map(|d| opts.branching.pow(d as u32))
        .sum();
    let users = create_users(admin, &ctx.run_id, "tree", 1 + groups * opts.members).await?;
    let owner = ctx.target.connect(0, &users.tokens[0]).await?;
    let mut convs: Vec<String> = Vec::with_capacity(groups);
    let name = |i: usize| format!("kaiwa-lt-{}-tree-{i}", ctx.run_id);
    let root = ok(
        &owner,
        "group.create",
        json!({"name": name(0), "kind": "hierarchical"}),
    )
    .await?;
    convs.push(root["conv"].as_str().context("no conv")?.to_owned());
    // Breadth first: group i's parent is group (i - 1) / branching.
    for i in 1..groups {
        let parent = convs[(i - 1) / opts.branching.max(1)].clone();
        let g = ok(
            &owner,
            "group.create",
            json!({"name": name(i), "kind": "hierarchical", "parent": parent}),
        )
        .await?;
        convs.push(g["conv"].as_str().context("no conv")?.to_owned());
    }
    let adds: Vec<(usize, usize)> = (0..groups)
        .flat_map(|g| (0..opts.members).map(move |m| (g, 1 + g * opts.members + m)))
        .collect();
    let results: Vec<anyhow::Result<Value>> =
        futures_util::stream::iter(adds.iter().map(|&(g, u)| {
            let (owner, conv, user) = (&owner, convs[g].clone(), users.ids[u].clone());
            async move { ok(owner, "group.add", json!({"conv": conv, "user": user})).await }
        }))
        .buffer_unordered(64)
        .collect()
        .await;
    results
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("adding tree members")?;
    owner.close().await;
    Ok(TreePlan {
        owner_token: users.tokens[0].clone(),
        root: convs[0].clone(),
        groups,
        members: adds
            .iter()
            .map(|&(g, u)| ReceiverSpec {
                token: users.tokens[u].clone(),
                convs: vec![convs[g].clone()],
            })
            .collect(),
    })
}

/// Connects every member, posts one announcement at the root and waits (at most `ctx.duration`)
/// until every member has it.
pub async fn run(ctx: &Ctx, plan: &TreePlan) -> anyhow::Result<Report> {
    let live = Arc::new(Live::default());
    let pool = ctx.start_receivers(1, plan.members.clone(), &live).await?;
    let owner = Arc::new(ctx.target.connect(0, &plan.owner_token).await?);
    let drainer = drain(owner.clone());
    let sampler = Sampler::start(live.clone(), "tree", ctx.progress);
    let started = Instant::now();
    let sent_ns = clock::now_ns();
    let mut sent = PublishResult {
        sent: 1,
        ..Default::default()
    };
    let reply = owner
        .request(
            "send",
            json!({
                "conv": plan.root,
                "client_msg_id": format!("{}-tree", ctx.run_id),
                "body": make_body(&BodyKind::Announcement, ctx.payload, false),
            }),
        )
        .await;
    match reply {
        Ok(Ok(ack)) => {
            sent.ack_latency
                .record_ns(clock::now_ns().saturating_sub(sent_ns));
            if let Some(seq) = ack["seq"].as_u64() {
                sent.acked.push(seq);
            }
            Live::bump(&live.acked);
        }
        Ok(Err(e)) => {
            sent.errors.insert(e.code, 1);
        }
        Err(_) => {
            sent.errors.insert("timeout".into(), 1);
        }
    }
    let connected = pool.connect_stats().ok;
    if sent.errors.is_empty() {
        wait_deliveries(&live, connected, ctx.duration, ctx.duration).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let timeline = sampler.finish().await;
    drainer.abort();
    // Each sub-group's copy has its own seq: loss is counted as members who never got it.
    let rx = pool.finish(&HashMap::new()).await?;
    let params = json!({
        "groups": plan.groups, "members": plan.members.len(), "payload": ctx.payload,
    });
    let mut report = Report::new("tree", params, &ctx.target, elapsed, &rx, &sent, timeline);
    let last_ms = rx.origin_last_ns.saturating_sub(sent_ns) as f64 / 1e6;
    report
        .extra
        .insert("tree_groups".into(), json!(plan.groups));
    report
        .extra
        .insert("members_connected".into(), json!(connected));
    report
        .extra
        .insert("members_reached".into(), json!(rx.origin_received));
    report.extra.insert(
        "members_missing".into(),
        json!(connected.saturating_sub(rx.origin_received)),
    );
    report
        .extra
        .insert("time_to_last_member_ms".into(), json!(last_ms));
    Ok(report)
}
