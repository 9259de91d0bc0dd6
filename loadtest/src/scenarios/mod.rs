//! The load scenarios. Each one splits into a setup through the admin API (users, tokens, groups)
//! and a `run_*` that only needs WebSocket URLs and tokens, so tests can drive the same measuring
//! code against a stand-in server.

pub mod chat;
pub mod churn;
pub mod connect;
pub mod fanout;
pub mod tree;

use std::time::Duration;

use crate::admin::Admin;
use crate::net::{Pacing, Target};

/// What every scenario needs to know about the run.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub target: Target,
    /// How long the traffic phase lasts.
    pub duration: Duration,
    /// The first part of the traffic phase whose latencies are not recorded (connections,
    /// caches and the tool's own tasks settle); it still counts for throughput and loss.
    pub warmup: Duration,
    /// Message body text size in bytes.
    pub payload: usize,
    /// Draw the live progress line.
    pub progress: bool,
    /// Receivers per process before worker processes take over.
    pub per_process: usize,
    pub pacing: Pacing,
    /// The binary that worker processes run (None: this executable, which is the binary itself;
    /// tests point it at the built `kaiwa-loadtest`).
    pub worker_exe: Option<std::path::PathBuf>,
    /// Unique per run: names users and makes `client_msg_id`s unique.
    pub run_id: String,
    /// Reads the nodes' `/metrics` (CPU during traffic); None measures the tool only.
    pub admin: Option<crate::admin::Admin>,
}

impl Ctx {
    /// Connects `members` as receivers (socket indexes from `first_index`, which spreads them
    /// over source addresses after the scenario's own clients), in this process or, past
    /// `per_process`, in worker processes.
    pub async fn start_receivers(
        &self,
        first_index: usize,
        members: Vec<crate::receivers::ReceiverSpec>,
        live: &std::sync::Arc<crate::live::Live>,
    ) -> anyhow::Result<crate::pool::Pool> {
        let job = crate::receivers::ReceiverJob {
            target: self.target.clone(),
            first_index,
            pacing: self.pacing,
            members,
            connect_timeout_s: 300.0,
            pure: true,
        };
        crate::pool::Pool::start(
            job,
            self.per_process,
            live.clone(),
            self.worker_exe.as_deref(),
        )
        .await
    }

    /// A context with the defaults the binary uses, for library users and tests.
    pub fn new(target: Target, duration: Duration) -> Ctx {
        Ctx {
            target,
            duration,
            warmup: Duration::ZERO,
            payload: 100,
            progress: false,
            per_process: crate::pool::DEFAULT_PER_PROCESS,
            pacing: Pacing::default(),
            worker_exe: None,
            run_id: format!("{}", crate::clock::epoch_unix_ns() / 1_000_000),
            admin: None,
        }
    }
}

/// Users created for a run: ids and tokens, index-aligned.
#[derive(Clone, Debug, Default)]
pub struct Users {
    pub ids: Vec<String>,
    pub tokens: Vec<String>,
}

/// Creates `n` users named `kaiwa-lt-{run}-{label}-{i}` with a token each, 1000 per request.
pub async fn create_users(
    admin: &Admin,
    run_id: &str,
    label: &str,
    n: usize,
) -> anyhow::Result<Users> {
    let mut users = Users::default();
    let names: Vec<String> = (0..n)
        .map(|i| format!("kaiwa-lt-{run_id}-{label}-{i}"))
        .collect();
    for chunk in names.chunks(1000) {
        let ids = admin.create_users_bulk(chunk, None).await?;
        let tokens = admin.tokens_bulk(&ids).await?;
        users.ids.extend(ids);
        users.tokens.extend(tokens);
    }
    Ok(users)
}
