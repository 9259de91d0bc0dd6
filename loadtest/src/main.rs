//! `kaiwa-loadtest`: load scenarios against a Kaiwa server or cluster on this machine.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use kaiwa_loadtest::admin::Admin;
use kaiwa_loadtest::client::WireFormat;
use kaiwa_loadtest::net::{Pacing, Target};
use kaiwa_loadtest::report::Report;
use kaiwa_loadtest::scenarios::{chat, churn, connect, fanout, tree, Ctx};
use kaiwa_loadtest::{chart, floor, pool, workers};

/// mimalloc instead of the system allocator: a chat run builds, sends, parses and drops a few
/// JSON documents per message, and glibc's malloc (with its free-chunk merging) was a quarter
/// of the tool's CPU at max rate.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load scenarios for Kaiwa (loopback targets only; every run is bounded in time).
#[derive(Parser)]
#[command(name = "kaiwa-loadtest", version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args)]
struct Common {
    /// WebSocket base URL(s), comma separated (one per cluster node); admin REST is the first
    /// one's host with http://.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Admin API key.
    #[arg(
        long,
        global = true,
        env = "KAIWA_ADMIN_KEY",
        default_value = "dev-admin-key"
    )]
    admin_key: String,
    /// Wire encoding.
    #[arg(long, global = true, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Length of the measured phase, seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    duration: f64,
    /// Write the full result as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Draw throughput and latency charts into this SVG file.
    #[arg(long, global = true)]
    chart: Option<PathBuf>,
    /// Seconds at the start of the traffic whose latencies are not recorded (they still count
    /// for throughput and loss).
    #[arg(long, global = true, default_value_t = 0.0)]
    warmup: f64,
    /// Message body size in bytes.
    #[arg(long, global = true, default_value_t = 100)]
    payload: usize,
    /// Number of 127.0.0.x source addresses to spread sockets over.
    #[arg(long, global = true, default_value_t = 8)]
    sources: usize,
    /// Connections opened concurrently per batch.
    #[arg(long, global = true, default_value_t = 200)]
    batch: usize,
    /// Pause between connection batches, milliseconds.
    #[arg(long, global = true, default_value_t = 20)]
    batch_pause_ms: u64,
    /// Sockets per process before worker processes take over.
    #[arg(long, global = true, default_value_t = pool::DEFAULT_PER_PROCESS)]
    per_process: usize,
    /// Hard bound on setup plus run, seconds, on top of --duration.
    #[arg(long, global = true, default_value_t = 600.0)]
    setup_timeout: f64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Msgpack,
}

#[derive(Subcommand)]
enum Scenario {
    /// N authenticated idle connections: handshakes/s, server memory per connection.
    Connect {
        #[arg(long, short = 'n', default_value_t = 1000)]
        connections: usize,
    },
    /// A flat group of N connected members, P publishers.
    Fanout {
        #[arg(long, short = 'n', default_value_t = 1000)]
        members: usize,
        #[arg(long, short = 'p', default_value_t = 1)]
        publishers: usize,
        /// Total messages per second; omitted = max rate within the window.
        #[arg(long)]
        rate: Option<f64>,
        /// Un-acked sends per publisher.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Extra members that connect and never read (left out of every figure).
        #[arg(long, default_value_t = 0)]
        stalled: usize,
    },
    /// K concurrent 1:1 pairs chatting.
    Chat {
        #[arg(long, short = 'k', default_value_t = 1000)]
        pairs: usize,
        /// Total messages per second; omitted = max rate within the window.
        #[arg(long)]
        rate: Option<f64>,
        /// Un-acked sends per sender.
        #[arg(long, default_value_t = 4)]
        window: usize,
    },
    /// An announcement at the root of a hierarchical tree: time until the last member has it.
    Tree {
        #[arg(long, default_value_t = 3)]
        depth: usize,
        #[arg(long, default_value_t = 4)]
        branching: usize,
        /// Members per group.
        #[arg(long, default_value_t = 20)]
        members: usize,
    },
    /// Connects and disconnects per second while a fan-out flows.
    Churn {
        /// Steady members of the fan-out group.
        #[arg(long, short = 'n', default_value_t = 200)]
        members: usize,
        /// Churning users (members too).
        #[arg(long, default_value_t = 500)]
        churners: usize,
        /// Connects per second.
        #[arg(long, default_value_t = 50.0)]
        churn_rate: f64,
        /// Churning sessions open at once.
        #[arg(long, default_value_t = 100)]
        live: usize,
        /// Fan-out messages per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
    },
    /// The loopback floor, no server: the tool writes one record to each of N sockets per
    /// round from one core while a child process reads them on another. What a fan-out to N
    /// members cannot go below on this machine.
    Floor {
        #[arg(long, short = 'n', default_value_t = 1000)]
        connections: usize,
        /// Rounds per second (a round writes every socket once).
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Bytes per write (the default is the size on the wire of a `message` event frame
        /// with a 100-byte body).
        #[arg(long, default_value_t = 287)]
        bytes: usize,
        /// Core for the writer (the node's core in the standard setup).
        #[arg(long)]
        send_cpu: Option<usize>,
        /// Core for the reader process (the tool's core).
        #[arg(long)]
        recv_cpu: Option<usize>,
        /// Write the sockets in a random order, not in accept order.
        #[arg(long)]
        shuffle: bool,
    },
    /// Internal: holds receivers for a parent run (JSON lines on stdin/stdout).
    #[command(hide = true)]
    Worker,
    /// Internal: the reading side of `floor`.
    #[command(hide = true)]
    FloorReader {
        #[arg(long)]
        port: u16,
        #[arg(short = 'n')]
        connections: usize,
        #[arg(long)]
        bytes: usize,
        #[arg(long)]
        cpu: Option<usize>,
        #[arg(long)]
        bound_s: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let c = &cli.common;
    let bound = Duration::from_secs_f64(c.duration + c.setup_timeout);
    match cli.scenario {
        Scenario::Worker => return workers::run_worker(bound.as_secs_f64()).await,
        Scenario::FloorReader {
            port,
            connections,
            bytes,
            cpu,
            bound_s,
        } => return floor::run_reader(port, connections, bytes, cpu, Duration::from_secs(bound_s)),
        Scenario::Floor {
            connections,
            rate,
            bytes,
            send_cpu,
            recv_cpu,
            shuffle,
        } => {
            let opts = floor::FloorOpts {
                connections,
                rate,
                bytes,
                duration: Duration::from_secs_f64(c.duration),
                warmup: Duration::from_secs_f64(c.warmup.clamp(0.0, c.duration)),
                send_cpu,
                recv_cpu,
                reader_exe: None,
                shuffle,
            };
            let report = tokio::task::spawn_blocking(move || floor::run(&opts)).await??;
            return finish(&report, c);
        }
        _ => {}
    }
    let format = match c.format {
        Format::Json => WireFormat::Json,
        Format::Msgpack => WireFormat::MsgPack,
    };
    let target = Target::new(&c.url, c.sources, format)?;
    let admin = Admin::new(&target.http_base(), &c.admin_key);
    let mut ctx = Ctx::new(target, Duration::from_secs_f64(c.duration));
    ctx.admin = Some(admin.clone());
    ctx.payload = c.payload;
    ctx.warmup = Duration::from_secs_f64(c.warmup.clamp(0.0, c.duration));
    ctx.progress = std::io::stderr().is_terminal();
    ctx.per_process = c.per_process;
    ctx.pacing = Pacing {
        batch: c.batch,
        pause_ms: c.batch_pause_ms,
    };
    let report = tokio::time::timeout(bound, run(&ctx, &admin, &cli.scenario))
        .await
        .context("the run exceeded its time bound")??;
    finish(&report, c)
}

/// Prints the summary and writes the files asked for.
fn finish(report: &Report, c: &Common) -> anyhow::Result<()> {
    print!("{}", report.summary());
    if let Some(path) = &c.json {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &c.chart {
        chart::draw(report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn run(ctx: &Ctx, admin: &Admin, scenario: &Scenario) -> anyhow::Result<Report> {
    eprintln!("setting up through {} ...", admin.base());
    match *scenario {
        Scenario::Connect { connections } => {
            let tokens = connect::setup(ctx, admin, connections).await?;
            connect::run(ctx, Some(admin), &tokens).await
        }
        Scenario::Fanout {
            members,
            publishers,
            rate,
            window,
            stalled,
        } => {
            let plan = fanout::setup(ctx, admin, members, publishers, stalled).await?;
            fanout::run(ctx, &plan, &fanout::FanoutOpts { rate, window }).await
        }
        Scenario::Chat {
            pairs,
            rate,
            window,
        } => {
            let plan = chat::setup(ctx, admin, pairs).await?;
            chat::run(ctx, &plan, &chat::ChatOpts { rate, window }).await
        }
        Scenario::Tree {
            depth,
            branching,
            members,
        } => {
            let opts = tree::TreeOpts {
                depth,
                branching,
                members,
            };
            let plan = tree::setup(ctx, admin, opts).await?;
            tree::run(ctx, &plan).await
        }
        Scenario::Churn {
            members,
            churners,
            churn_rate,
            live,
            rate,
        } => {
            let plan = churn::setup(ctx, admin, members, churners).await?;
            let opts = churn::ChurnOpts {
                churn_rate,
                live,
                rate,
            };
            churn::run(ctx, &plan, &opts).await
        }
        Scenario::Worker | Scenario::FloorReader { .. } | Scenario::Floor { .. } => {
            unreachable!("handled in main")
        }
    }
}
