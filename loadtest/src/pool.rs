//! A set of receivers held either by this process or, past one process's socket budget, by worker
//! processes; the scenarios see one interface.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::live::Live;
use crate::net::ConnectStats;
use crate::receivers::{LocalReceivers, ReceiverJob, ReceiverResult};
use crate::workers::RemoteReceivers;

/// Sockets one process may hold: the open-file limit is 20,000 (hard), and the process needs some
/// descriptors of its own.
pub const DEFAULT_PER_PROCESS: usize = 18_000;

/// Receivers, wherever they live.
pub enum Pool {
    /// Held by this process.
    Local(Box<LocalReceivers>),
    /// Held by worker processes.
    Workers(RemoteReceivers),
}

impl Pool {
    /// Connects the job's receivers here, or over `ceil(n / per_process)` workers when there are
    /// more than `per_process`. Workers run `worker_exe` (default: this executable).
    pub async fn start(
        job: ReceiverJob,
        per_process: usize,
        live: Arc<Live>,
        worker_exe: Option<&Path>,
    ) -> anyhow::Result<Pool> {
        if job.members.len() <= per_process.max(1) {
            Ok(Pool::Local(Box::new(
                LocalReceivers::start(&job, live).await?,
            )))
        } else {
            Ok(Pool::Workers(
                RemoteReceivers::start(job, per_process.max(1), live, worker_exe).await?,
            ))
        }
    }

    /// How connecting went (workers: as reported when they became ready).
    pub fn connect_stats(&self) -> ConnectStats {
        match self {
            Pool::Local(l) => l.connect_stats().clone(),
            Pool::Workers(w) => w.connect_stats(),
        }
    }

    /// Stops the receivers, runs the loss check against `acked` (conv → acked seqs), returns all.
    pub async fn finish(self, acked: &HashMap<String, Vec<u64>>) -> anyhow::Result<ReceiverResult> {
        match self {
            Pool::Local(l) => Ok((*l).finish(acked).await),
            Pool::Workers(w) => w.finish(acked).await,
        }
    }
}
