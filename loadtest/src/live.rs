//! Live counters shared by every task of a run, sampled once a second for the progress line and the
//! throughput-over-time series.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

/// Monotonic counters; tasks bump them, the sampler reads them.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub deliveries: AtomicU64,
    pub errors: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    /// Send→ack latencies of every publisher of the run, in one histogram: a histogram is
    /// ~200 KiB, and a chat run has ten thousand publishers.
    pub ack_latency: std::sync::Mutex<crate::stats::Latency>,
}

impl Live {
    /// Takes the send→ack histogram recorded so far.
    pub fn take_ack_latency(&self) -> crate::stats::Latency {
        std::mem::take(&mut *self.ack_latency.lock().unwrap())
    }

    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> [u64; 6] {
        [
            self.sent.load(Relaxed),
            self.acked.load(Relaxed),
            self.deliveries.load(Relaxed),
            self.errors.load(Relaxed),
            self.connects.load(Relaxed),
            self.disconnects.load(Relaxed),
        ]
    }
}

/// One second of a run: how much of each thing happened in it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the sampler started (end of this interval).
    pub t_s: f64,
    pub sent: u64,
    pub acked: u64,
    pub deliveries: u64,
    pub errors: u64,
    pub connects: u64,
    pub disconnects: u64,
}

/// Samples [`Live`] every second and draws the progress line (hidden when stderr is no terminal).
pub struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling; `label` names the scenario on the progress line.
    pub fn start(live: Arc<Live>, label: &str, show: bool) -> Sampler {
        let bar = if show {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {prefix} {msg}").unwrap());
        bar.set_prefix(label.to_owned());
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut samples = Vec::new();
            let mut last = live.snapshot();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let now = live.snapshot();
                let d: Vec<u64> = now.iter().zip(last).map(|(a, b)| a - b).collect();
                last = now;
                let s = Sample {
                    t_s: t0.elapsed().as_secs_f64(),
                    sent: d[0],
                    acked: d[1],
                    deliveries: d[2],
                    errors: d[3],
                    connects: d[4],
                    disconnects: d[5],
                };
                bar.set_message(format!(
                    "conns {} | acks/s {} | deliveries/s {} | errors {} (total acked {}, delivered {})",
                    now[4] - now[5],
                    s.acked,
                    s.deliveries,
                    now[3],
                    now[1],
                    now[2]
                ));
                bar.tick();
                samples.push(s);
            }
            bar.finish_and_clear();
            samples
        });
        Sampler { stop, task }
    }

    /// Stops sampling and returns the per-second series.
    pub async fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// Waits until `deliveries` reaches `expected` or stops growing for `quiet`, at most `max`: the
/// tail of a run still has messages in flight when the last ack arrives.
pub async fn wait_deliveries(live: &Live, expected: u64, quiet: Duration, max: Duration) {
    let end = Instant::now() + max;
    let mut last = live.deliveries.load(Relaxed);
    let mut last_change = Instant::now();
    while Instant::now() < end {
        let now = live.deliveries.load(Relaxed);
        if now >= expected {
            return;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= quiet {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
