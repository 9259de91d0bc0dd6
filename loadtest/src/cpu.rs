//! How busy the tool and the nodes were during the traffic phase.
//!
//! A latency figure is the server's only if the tool kept up: a tool whose core is saturated
//! reads frames late and reports its own queueing as the server's latency. Every traffic report
//! therefore says what share of a core this tool process used, and what the nodes used (from
//! their `/metrics`, so remote nodes too), and the summary warns when the tool was saturated.

use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::admin::{sum_over_nodes, Admin};
use crate::net::Target;

/// The Prometheus metric with a node's CPU time (user + system), seconds to the microsecond
/// (`process_cpu_seconds_total` counts whole seconds).
pub const CPU_METRIC: &str = "kaiwa_process_cpu_seconds";

/// Above this share of its core the tool's latency figures include its own queueing.
pub const TOOL_SATURATED: f64 = 0.85;

/// CPU time (user + system) of this process so far, seconds. Worker processes, which hold
/// receivers past `--per-process`, are not counted.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// CPU seconds of every node the run targets, summed, if each one's `/metrics` can be read.
pub async fn nodes_cpu_seconds(admin: Option<&Admin>, target: &Target) -> Option<f64> {
    sum_over_nodes(admin, target, CPU_METRIC).await
}

/// A measurement in progress: started with the traffic, finished when the last send is done.
pub struct CpuWatch {
    started: Instant,
    tool: f64,
    nodes: Option<f64>,
    admin: Option<Admin>,
    target: Target,
}

/// Shares of one core, over the traffic phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShares {
    /// This tool process.
    pub tool: f64,
    /// The nodes, summed (None when their `/metrics` could not be read).
    pub nodes: Option<f64>,
}

impl CpuWatch {
    /// Starts measuring; `admin` None measures the tool only.
    pub async fn start(admin: Option<&Admin>, target: &Target) -> CpuWatch {
        CpuWatch {
            nodes: nodes_cpu_seconds(admin, target).await,
            tool: own_cpu_seconds(),
            started: Instant::now(),
            admin: admin.cloned(),
            target: target.clone(),
        }
    }

    /// The shares of a core used since [`CpuWatch::start`].
    pub async fn finish(self) -> CpuShares {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let tool = (own_cpu_seconds() - self.tool) / wall;
        let nodes = match (
            self.nodes,
            nodes_cpu_seconds(self.admin.as_ref(), &self.target).await,
        ) {
            (Some(a), Some(b)) => Some((b - a) / wall),
            _ => None,
        };
        CpuShares { tool, nodes }
    }
}

impl CpuShares {
    /// Adds the shares to a report's scenario-specific numbers.
    pub fn record(&self, extra: &mut Map<String, Value>) {
        extra.insert("tool_cpu_busy".into(), json!(round(self.tool)));
        if let Some(n) = self.nodes {
            extra.insert("nodes_cpu_busy".into(), json!(round(n)));
        }
        if self.tool >= TOOL_SATURATED {
            extra.insert(
                "warning".into(),
                json!(format!(
                    "the tool used {:.0}% of its core: latencies include its own queueing",
                    self.tool * 100.0
                )),
            );
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_grows_with_work() {
        let before = own_cpu_seconds();
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(own_cpu_seconds() > before);
    }

    #[test]
    fn a_saturated_tool_is_flagged() {
        let mut extra = Map::new();
        CpuShares {
            tool: 0.93,
            nodes: Some(0.671),
        }
        .record(&mut extra);
        assert_eq!(extra["tool_cpu_busy"], json!(0.93));
        assert_eq!(extra["nodes_cpu_busy"], json!(0.671));
        assert!(extra["warning"].as_str().unwrap().contains("93%"));
        let mut calm = Map::new();
        CpuShares {
            tool: 0.4,
            nodes: None,
        }
        .record(&mut calm);
        assert!(!calm.contains_key("warning") && !calm.contains_key("nodes_cpu_busy"));
    }
}
