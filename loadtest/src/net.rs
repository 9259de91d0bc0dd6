//! Where connections go and come from: loopback-only targets, several server URLs (cluster nodes),
//! several 127.0.0.x source addresses, and connecting in paced batches.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::client::{ws_url, Client, RawConn, Tap, WireFormat};
use crate::stats::{Errors, Latency};

/// Where the tool connects: one or more WebSocket bases (one per cluster node), all on loopback.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    /// `ws://127.0.0.1:8080`-style bases; connection `i` uses `urls[i % len]`.
    pub urls: Vec<String>,
    /// How many 127.0.0.x source addresses to spread sockets over (1 = let the kernel choose).
    pub sources: usize,
    /// Wire encoding of every connection.
    pub msgpack: bool,
}

impl Target {
    /// Parses a comma-separated URL list and refuses anything that is not loopback: a load test
    /// must never leave this machine.
    pub fn new(urls: &str, sources: usize, format: WireFormat) -> anyhow::Result<Target> {
        let urls: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            bail!("no URL given");
        }
        for u in &urls {
            check_loopback(u)?;
        }
        Ok(Target {
            urls,
            sources: sources.max(1),
            msgpack: format == WireFormat::MsgPack,
        })
    }

    /// The wire format as the client library names it.
    pub fn format(&self) -> WireFormat {
        if self.msgpack {
            WireFormat::MsgPack
        } else {
            WireFormat::Json
        }
    }

    /// The admin REST base of the first node (same host and port, `http://`).
    pub fn http_base(&self) -> String {
        http_base(&self.urls[0])
    }

    /// Opens connection number `index` (which picks its node and source address).
    pub async fn connect(&self, index: usize, token: &str) -> anyhow::Result<Client> {
        self.connect_tapped(index, token, None).await
    }

    /// Like [`Target::connect`], with a [`Tap`] that sees pushed frames first.
    pub async fn connect_tapped(
        &self,
        index: usize,
        token: &str,
        tap: Option<Tap>,
    ) -> anyhow::Result<Client> {
        let base = &self.urls[index % self.urls.len()];
        let url = ws_url(base, token, self.format());
        let source = self.source_for(base, index);
        Ok(Client::connect_url_tapped(&url, self.format(), source, tap).await?)
    }

    /// Opens connection number `index` and hands it over raw, right after its upgrade.
    pub async fn connect_raw(&self, index: usize, token: &str) -> anyhow::Result<RawConn> {
        let base = &self.urls[index % self.urls.len()];
        let url = ws_url(base, token, self.format());
        let source = self.source_for(base, index);
        Ok(crate::client::connect_raw(&url, source).await?)
    }

    fn source_for(&self, base: &str, index: usize) -> Option<IpAddr> {
        if self.sources <= 1 || !host_of(base).is_ok_and(|h| h.starts_with("127.")) {
            return None;
        }
        let n = 1 + (index % self.sources.min(250)) as u8;
        Some(IpAddr::from([127, 0, 0, n]))
    }
}

/// `ws://h:p` → `http://h:p` (and `wss` → `https`).
pub fn http_base(ws: &str) -> String {
    if let Some(rest) = ws.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = ws.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        ws.to_owned()
    }
}

fn host_of(url: &str) -> anyhow::Result<String> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad url {url}"))?;
    Ok(uri
        .host()
        .context("url has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned())
}

/// Fails unless `url`'s host is a loopback address (127.0.0.0/8, ::1 or localhost).
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let host = host_of(url)?;
    let ok = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !ok {
        bail!("refusing {url}: the load tool only targets loopback addresses");
    }
    Ok(())
}

/// How a connection phase went.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnectStats {
    /// Connections attempted.
    pub attempted: u64,
    /// Connections established.
    pub ok: u64,
    /// Failures by kind (`http_401`, `io`, ...).
    pub errors: Errors,
    /// Handshake time (TCP connect + upgrade) of each successful connection.
    pub handshake: Latency,
    /// Wall time of the whole phase, seconds.
    pub elapsed_s: f64,
}

impl ConnectStats {
    /// Successful handshakes per second over the phase.
    pub fn rate(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.ok as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    /// Adds another phase's (another worker's) numbers; elapsed is the longest of both.
    pub fn merge(&mut self, o: &ConnectStats) {
        self.attempted += o.attempted;
        self.ok += o.ok;
        crate::stats::merge_errors(&mut self.errors, &o.errors);
        self.handshake.merge(&o.handshake);
        self.elapsed_s = self.elapsed_s.max(o.elapsed_s);
    }
}

/// Pacing of a connection phase: servers (and kernels) dislike 50,000 SYNs at once.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Pacing {
    /// Connections opened concurrently per batch.
    pub batch: usize,
    /// Pause between batches.
    pub pause_ms: u64,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            batch: 200,
            pause_ms: 20,
        }
    }
}

/// Short name of a connect failure, for the error tally.
pub fn connect_error_kind(e: &anyhow::Error) -> String {
    match e.downcast_ref::<crate::client::ConnectError>() {
        Some(ce) => match ce.status() {
            Some(s) => format!("http_{s}"),
            None => "connect_io".into(),
        },
        None => "connect_other".into(),
    }
}

/// Opens one connection per token, `first_index + i` choosing node and source, in paced batches;
/// stops early at `deadline`. Failed slots are `None`. `on_ok` is called per success (progress);
/// `tap(i)` gives slot `i`'s connection its [`Tap`].
pub async fn connect_all(
    target: &Target,
    tokens: &[String],
    first_index: usize,
    pacing: Pacing,
    deadline: Instant,
    on_ok: &(dyn Fn() + Sync),
    tap: &(dyn Fn(usize) -> Option<Tap> + Sync),
) -> (Vec<Option<Arc<Client>>>, ConnectStats) {
    let (clients, stats) = connect_paced(tokens, pacing, deadline, on_ok, |slot, token| {
        let target = target.clone();
        let tap = tap(slot);
        async move { target.connect_tapped(first_index + slot, &token, tap).await }
    })
    .await;
    (
        clients.into_iter().map(|c| c.map(Arc::new)).collect(),
        stats,
    )
}

/// Like [`connect_all`], but hands each connection over raw, right after its upgrade (for
/// [`crate::reactor`]).
pub async fn connect_all_raw(
    target: &Target,
    tokens: &[String],
    first_index: usize,
    pacing: Pacing,
    deadline: Instant,
    on_ok: &(dyn Fn() + Sync),
) -> (Vec<Option<RawConn>>, ConnectStats) {
    connect_paced(tokens, pacing, deadline, on_ok, |slot, token| {
        let target = target.clone();
        async move { target.connect_raw(first_index + slot, &token).await }
    })
    .await
}

/// The paced batches of both: `connect(slot, token)` opens one connection.
async fn connect_paced<T, F, Fut>(
    tokens: &[String],
    pacing: Pacing,
    deadline: Instant,
    on_ok: &(dyn Fn() + Sync),
    connect: F,
) -> (Vec<Option<T>>, ConnectStats)
where
    F: Fn(usize, String) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    let mut stats = ConnectStats::default();
    let mut conns = Vec::with_capacity(tokens.len());
    for (b, chunk) in tokens.chunks(pacing.batch.max(1)).enumerate() {
        if Instant::now() >= deadline {
            break;
        }
        let slot = b * pacing.batch.max(1);
        let results = futures_util::future::join_all(chunk.iter().enumerate().map(|(i, t)| {
            let fut = connect(slot + i, t.clone());
            async move {
                let t0 = Instant::now();
                let r = fut.await;
                (r, t0.elapsed())
            }
        }))
        .await;
        for (r, took) in results {
            stats.attempted += 1;
            match r {
                Ok(c) => {
                    stats.ok += 1;
                    stats.handshake.record_ns(took.as_nanos() as u64);
                    on_ok();
                    conns.push(Some(c));
                }
                Err(e) => {
                    *stats.errors.entry(connect_error_kind(&e)).or_default() += 1;
                    conns.push(None);
                }
            }
        }
        if pacing.pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(pacing.pause_ms)).await;
        }
    }
    conns.resize_with(tokens.len(), || None);
    stats.elapsed_s = started.elapsed().as_secs_f64();
    (conns, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_accepted() {
        assert!(check_loopback("ws://127.0.0.1:8080").is_ok());
        assert!(check_loopback("ws://127.3.0.1:1").is_ok());
        assert!(check_loopback("ws://localhost:8080").is_ok());
        assert!(check_loopback("ws://[::1]:8080").is_ok());
        assert!(check_loopback("ws://10.0.0.1:8080").is_err());
        assert!(check_loopback("ws://example.com:8080").is_err());
        assert!(Target::new("ws://127.0.0.1:1,ws://192.168.1.1:1", 1, WireFormat::Json).is_err());
        assert_eq!(http_base("ws://127.0.0.1:9"), "http://127.0.0.1:9");
    }
}
