//! Worker processes: past one process's file limit, the binary re-executes itself with the hidden
//! `worker` subcommand; each worker holds a slice of the receivers and speaks JSON lines:
//! stdin gets the job, then the acked seqs; stdout answers `progress`, `ready` and `result`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

use crate::clock;
use crate::live::Live;
use crate::net::ConnectStats;
use crate::receivers::{LocalReceivers, ReceiverJob, ReceiverResult};

/// First line a worker reads.
#[derive(Serialize, Deserialize)]
struct Start {
    job: ReceiverJob,
    /// The parent's clock epoch, so that latency stamps compare across processes.
    epoch_unix_ns: u64,
}

/// Second line a worker reads: conv → acked seqs.
#[derive(Serialize, Deserialize)]
struct Finish {
    acked: HashMap<String, Vec<u64>>,
}

/// Lines a worker writes.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Report {
    Progress {
        deliveries: u64,
        connects: u64,
        disconnects: u64,
    },
    Ready(ConnectStats),
    Result(Box<ReceiverResult>),
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    ready: ConnectStats,
    result: oneshot::Receiver<ReceiverResult>,
}

/// Receivers held by worker processes.
pub struct RemoteReceivers {
    workers: Vec<Worker>,
}

impl RemoteReceivers {
    /// Splits the job into slices of at most `per_process` and starts one worker per slice; returns
    /// once every worker has connected its slice.
    pub async fn start(
        job: ReceiverJob,
        per_process: usize,
        live: Arc<Live>,
        worker_exe: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let exe = match worker_exe {
            Some(p) => p.to_path_buf(),
            None => std::env::current_exe().context("cannot find own executable")?,
        };
        let mut workers = Vec::new();
        for (i, slice) in job.members.chunks(per_process).enumerate() {
            let sub = ReceiverJob {
                members: slice.to_vec(),
                first_index: job.first_index + i * per_process,
                ..job.clone()
            };
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a worker process")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let start = Start {
                job: sub,
                epoch_unix_ns: clock::epoch_unix_ns(),
            };
            let mut line = serde_json::to_vec(&start)?;
            line.push(b'\n');
            stdin.write_all(&line).await?;
            let (ready_tx, ready_rx) = oneshot::channel();
            let (result_tx, result_rx) = oneshot::channel();
            tokio::spawn(read_reports(stdout, live.clone(), ready_tx, result_tx));
            workers.push((child, stdin, ready_rx, result_rx));
        }
        let mut ready = Vec::new();
        for (child, stdin, ready_rx, result) in workers {
            let stats = ready_rx
                .await
                .context("a worker exited before connecting its receivers")?;
            ready.push(Worker {
                child,
                stdin,
                ready: stats,
                result,
            });
        }
        Ok(RemoteReceivers { workers: ready })
    }

    /// All workers' connection phases together.
    pub fn connect_stats(&self) -> ConnectStats {
        let mut all = ConnectStats::default();
        for w in &self.workers {
            all.merge(&w.ready);
        }
        all
    }

    /// Hands the acked seqs to every worker and merges their results.
    pub async fn finish(self, acked: &HashMap<String, Vec<u64>>) -> anyhow::Result<ReceiverResult> {
        let mut line = serde_json::to_vec(&Finish {
            acked: acked.clone(),
        })?;
        line.push(b'\n');
        let mut all = ReceiverResult::default();
        let mut pending = Vec::new();
        for mut w in self.workers {
            w.stdin.write_all(&line).await?;
            w.stdin.flush().await?;
            pending.push(w);
        }
        for mut w in pending {
            let r = tokio::time::timeout(Duration::from_secs(120), w.result)
                .await
                .context("a worker did not report within 120 s")?
                .context("a worker died before reporting")?;
            all.merge(&r);
            let _ = tokio::time::timeout(Duration::from_secs(5), w.child.wait()).await;
        }
        Ok(all)
    }
}

async fn read_reports(
    stdout: tokio::process::ChildStdout,
    live: Arc<Live>,
    ready: oneshot::Sender<ConnectStats>,
    result: oneshot::Sender<ReceiverResult>,
) {
    let mut lines = BufReader::new(stdout).lines();
    let (mut ready, mut result) = (Some(ready), Some(result));
    let mut last = [0u64; 3];
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<Report>(&line) {
            Ok(Report::Progress {
                deliveries,
                connects,
                disconnects,
            }) => {
                let now = [deliveries, connects, disconnects];
                let counters = [&live.deliveries, &live.connects, &live.disconnects];
                for ((c, n), l) in counters.iter().zip(now).zip(last) {
                    c.fetch_add(n.saturating_sub(l), Relaxed);
                }
                last = now;
            }
            Ok(Report::Ready(stats)) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(stats);
                }
            }
            Ok(Report::Result(r)) => {
                if let Some(tx) = result.take() {
                    let _ = tx.send(*r);
                }
            }
            Err(e) => eprintln!("worker sent an unreadable line ({e}): {line}"),
        }
    }
}

fn emit(report: &Report) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, report);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// The hidden `worker` subcommand: holds a slice of receivers for the parent process.
pub async fn run_worker(max_s: f64) -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let start: Start = match stdin.next_line().await? {
        Some(l) => serde_json::from_str(&l).context("bad worker job")?,
        None => bail!("no job on stdin"),
    };
    clock::align_to(start.epoch_unix_ns);
    let live = Arc::new(Live::default());
    let receivers = LocalReceivers::start(&start.job, live.clone()).await?;
    let progress_live = live.clone();
    let progress = tokio::spawn(async move {
        loop {
            emit(&Report::Progress {
                deliveries: progress_live.deliveries.load(Relaxed),
                connects: progress_live.connects.load(Relaxed),
                disconnects: progress_live.disconnects.load(Relaxed),
            });
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    emit(&Report::Ready(receivers.connect_stats().clone()));
    // Bounded: a worker whose parent vanished gives up after max_s.
    let finish: Finish =
        match tokio::time::timeout(Duration::from_secs_f64(max_s), stdin.next_line()).await {
            Ok(Ok(Some(l))) => serde_json::from_str(&l).context("bad finish line")?,
            _ => Finish {
                acked: HashMap::new(),
            },
        };
    progress.abort();
    let result = receivers.finish(&finish.acked).await;
    emit(&Report::Result(Box::new(result)));
    Ok(())
}
