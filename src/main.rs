//! `kaiwa`: the Kaiwa server. `kaiwa serve` runs a node; `kaiwa token --user U` mints a
//! development token.

mod auth;
mod config;
mod http;

use std::sync::Arc;

use actix_web::web;
use clap::{Parser, Subcommand};
use kaiwa_actors::bus::local::LocalBus;
use kaiwa_actors::bus::redis::RedisBus;
use kaiwa_actors::bus::Bus;
use kaiwa_actors::cluster::redis_conn::RedisConn;
use kaiwa_actors::cluster::Cluster;
use kaiwa_actors::engine::Engine;
use kaiwa_actors::hub::Hub;
use kaiwa_actors::store::embedded::EmbeddedStore;
use kaiwa_actors::store::redis::RedisStore;
use kaiwa_actors::store::Store;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::config::{ServeConfig, DEV_ADMIN_KEY, DEV_SECRET};

/// mimalloc instead of the system allocator: a node allocates and frees small buffers on every
/// message from several threads, where glibc's malloc spent a sixth of the node's CPU (plus the
/// kernel zeroing the pages it kept giving back and faulting in again).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Kaiwa, a realtime messaging engine for organisations.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node.
    Serve(ServeConfig),
    /// Print a client token for a user (signed with the node's secret).
    Token {
        /// The user id (`sub` of the token).
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_s: u64,
        #[command(flatten)]
        cfg: ServeConfig,
    },
}

/// Keeps the node's memory in 4 KiB pages. The allocator asks for transparent huge pages, and
/// every 2 MiB page it touches after giving memory back is zeroed whole by the kernel at the
/// fault: 8% of the node's CPU in chat at 25,000 msgs/s, for no gain in speed.
fn no_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!("transparent huge pages stay as the kernel has them");
    }
}

fn main() -> anyhow::Result<()> {
    no_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KAIWA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().cmd {
        Cmd::Serve(cfg) => serve(cfg),
        Cmd::Token { user, ttl_s, cfg } => {
            let s = cfg.resolve()?;
            println!("{}", auth::Auth::new(&s.token_secret).mint(&user, ttl_s)?);
            Ok(())
        }
    }
}

fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let s = cfg.resolve()?;
    if s.token_secret == DEV_SECRET || s.admin_key == DEV_ADMIN_KEY {
        tracing::warn!("running with the development token secret or admin key; set KAIWA_TOKEN_SECRET and KAIWA_ADMIN_KEY");
    }
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ];
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)?
        .install_recorder()?;
    let process = metrics_process::Collector::default();
    process.describe();

    let hub = Arc::new(Hub::new());
    // Alone: the embedded store and the in-process bus. In a cluster: Redis for both.
    let (store, bus, cluster): (Arc<dyn Store>, Arc<dyn Bus>, _) = match &s.cluster {
        None => (
            EmbeddedStore::open_with(&s.data_dir, s.journal_messages)?,
            Arc::new(LocalBus::new(hub.clone())),
            None,
        ),
        Some(c) => {
            let redis = RedisConn::open(&c.redis_url, &c.prefix).map_err(anyhow::Error::msg)?;
            let cluster = Cluster::new(&c.node_id, redis.clone(), hub.clone());
            tracing::info!(node = %c.node_id, redis = %c.redis_url, "joining cluster");
            (
                RedisStore::new(redis, Some(&c.node_id)),
                Arc::new(RedisBus(cluster.clone())),
                Some(cluster),
            )
        }
    };
    actix_web::rt::System::new().block_on(async move {
        let engine_arbiter = actix::Arbiter::new();
        let engine = Engine::new(store, bus, hub, s.limits.clone(), engine_arbiter.handle());
        if let Some(c) = &cluster {
            c.start(&engine);
        }
        let state = web::Data::new(http::AppState {
            engine,
            auth: auth::Auth::new(&s.token_secret),
            admin_key: s.admin_key.clone(),
            prometheus,
            process,
        });
        tracing::info!(host = %s.host, port = s.port, data_dir = %s.data_dir.display(), "kaiwa node listening");
        let listen = http::server::Listen {
            host: &s.host,
            port: s.port,
            workers: s.workers,
        };
        http::server::run(state, listen).await
    })?;
    Ok(())
}
