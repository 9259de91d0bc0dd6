//! The result of a run: one serializable record (`--json`) and its human summary.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::live::Sample;
use crate::net::Target;
use crate::publisher::PublishResult;
use crate::receivers::{Loss, ReceiverResult};
use crate::stats::{Errors, Percentiles};

/// Connection-phase numbers as reported.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnectSummary {
    pub attempted: u64,
    pub ok: u64,
    pub handshakes_per_s: f64,
    pub handshake: Percentiles,
    pub errors: Errors,
}

/// Everything a run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub params: Value,
    pub format: String,
    pub urls: Vec<String>,
    /// Length of the measured traffic phase, seconds.
    pub duration_s: f64,
    pub connect: ConnectSummary,
    pub sent: u64,
    pub acked: u64,
    pub acks_per_s: f64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub duplicates: u64,
    pub delivery_latency: Percentiles,
    pub ack_latency: Percentiles,
    /// Failed requests by error code.
    pub errors: Errors,
    /// Connections closed by the server during the run, by close code.
    pub closed_by_server: Errors,
    pub loss: Loss,
    /// Per-second throughput.
    pub timeline: Vec<Sample>,
    /// Scenario-specific numbers (server memory, tree timing, churn rates, ...).
    pub extra: Map<String, Value>,
}

impl Report {
    /// Assembles a report from what the receivers and publishers measured.
    pub fn new(
        scenario: &str,
        params: Value,
        target: &Target,
        duration_s: f64,
        rx: &ReceiverResult,
        tx: &PublishResult,
        timeline: Vec<Sample>,
    ) -> Report {
        let per_s = |n: u64| {
            if duration_s > 0.0 {
                n as f64 / duration_s
            } else {
                0.0
            }
        };
        Report {
            scenario: scenario.into(),
            params,
            format: if target.msgpack { "msgpack" } else { "json" }.into(),
            urls: target.urls.clone(),
            duration_s,
            connect: ConnectSummary {
                attempted: rx.connect.attempted,
                ok: rx.connect.ok,
                handshakes_per_s: rx.connect.rate(),
                handshake: rx.connect.handshake.percentiles(),
                errors: rx.connect.errors.clone(),
            },
            sent: tx.sent,
            acked: tx.acked.len() as u64,
            acks_per_s: per_s(tx.acked.len() as u64),
            deliveries: rx.deliveries,
            deliveries_per_s: per_s(rx.deliveries),
            duplicates: rx.duplicates,
            delivery_latency: rx.latency.percentiles(),
            ack_latency: tx.ack_latency.percentiles(),
            errors: tx.errors.clone(),
            closed_by_server: rx.closed_by_server.clone(),
            loss: rx.loss.clone(),
            timeline,
            extra: Map::new(),
        }
    }

    /// The few lines a human reads after a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "== kaiwa-loadtest {} ({}, {}) ==",
            self.scenario,
            self.format,
            self.urls.join(",")
        );
        let c = &self.connect;
        if c.attempted > 0 {
            let _ = writeln!(
                s,
                "connections: {}/{} ok, {:.0} handshakes/s, handshake p50 {:.1} ms p99 {:.1} ms{}",
                c.ok,
                c.attempted,
                c.handshakes_per_s,
                c.handshake.p50_ms,
                c.handshake.p99_ms,
                errors_suffix(&c.errors)
            );
        }
        let _ = writeln!(
            s,
            "traffic: {:.1} s, sent {}, acked {} ({:.0} acks/s), delivered {} ({:.0} deliveries/s), duplicates {}",
            self.duration_s, self.sent, self.acked, self.acks_per_s, self.deliveries,
            self.deliveries_per_s, self.duplicates
        );
        for (name, p) in [
            ("send→deliver", &self.delivery_latency),
            ("send→ack", &self.ack_latency),
        ] {
            if p.count > 0 {
                let _ = writeln!(
                    s,
                    "{name} latency ms: p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} (n={})",
                    p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.count
                );
            }
        }
        let l = &self.loss;
        if l.expected > 0 || l.lost > 0 || l.sync_failures > 0 {
            let _ = writeln!(
                s,
                "loss: {} lost of {} expected (missed live {}, recovered by sync {}, sync failures {})",
                l.lost, l.expected, l.missed_live, l.recovered_by_sync, l.sync_failures
            );
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "errors: {}", fmt_errors(&self.errors));
        }
        if !self.closed_by_server.is_empty() {
            let _ = writeln!(
                s,
                "closed by server (by code): {}",
                fmt_errors(&self.closed_by_server)
            );
        }
        for (k, v) in &self.extra {
            let _ = writeln!(s, "{k}: {v}");
        }
        s
    }

    /// Writes the full report as pretty JSON.
    pub fn write_json(&self, path: &std::path::Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

fn fmt_errors(e: &Errors) -> String {
    e.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn errors_suffix(e: &Errors) -> String {
    if e.is_empty() {
        String::new()
    } else {
        format!(", failures: {}", fmt_errors(e))
    }
}
