//! The tool's own measurements, checked against the in-process fake server: the loss counter finds
//! exactly the messages the server dropped, and the latency histogram sees a known delivery delay.
//! These call the same `fanout::run` the binary uses.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use kaiwa_loadtest::floor;
use kaiwa_loadtest::net::Target;
use kaiwa_loadtest::scenarios::{chat, fanout, Ctx};
use kaiwa_loadtest::WireFormat;

fn ctx(base: &str, format: WireFormat, secs: f64) -> Ctx {
    let target = Target::new(base, 4, format).unwrap();
    Ctx::new(target, Duration::from_secs_f64(secs))
}

fn tokens(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_counter_reports_exactly_the_dropped_messages() {
    let base = common::start(common::FakeConfig {
        drop_seqs: HashSet::from([3, 7, 11]),
        delay: Duration::ZERO,
        cut_at: None,
    })
    .await;
    let ctx = ctx(&base, WireFormat::Json, 0.5);
    let plan = fanout::plan_for("g1".into(), &tokens("u", 6), 1);
    let opts = fanout::FanoutOpts {
        rate: Some(60.0),
        window: 8,
    };
    let report = fanout::run(&ctx, &plan, &opts).await.unwrap();
    assert!(report.acked >= 20, "acked only {}", report.acked);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let receivers = 5;
    assert_eq!(report.loss.expected, report.acked * receivers);
    assert_eq!(report.loss.lost, 3 * receivers);
    assert_eq!(report.loss.missed_live, 3 * receivers);
    assert_eq!(report.loss.recovered_by_sync, 0);
    // The receivers' sockets went back from the reading thread to clients that could sync.
    assert_eq!(report.loss.sync_failures, 0);
    assert_eq!(
        report.loss.lost_seqs,
        BTreeMap::from([("g1".to_string(), vec![3, 7, 11])])
    );
    assert_eq!(report.deliveries, (report.acked - 3) * receivers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_histogram_sees_the_delivery_delay() {
    let base = common::start(common::FakeConfig {
        drop_seqs: HashSet::new(),
        delay: Duration::from_millis(20),
        cut_at: None,
    })
    .await;
    let ctx = ctx(&base, WireFormat::MsgPack, 0.5);
    let plan = fanout::plan_for("g2".into(), &tokens("v", 4), 1);
    let opts = fanout::FanoutOpts {
        rate: Some(100.0),
        window: 16,
    };
    let report = fanout::run(&ctx, &plan, &opts).await.unwrap();
    let p = &report.delivery_latency;
    assert_eq!(report.loss.lost, 0);
    assert_eq!(p.count, report.acked * 3);
    assert!(
        (p.p50_ms - 20.0).abs() < 5.0,
        "p50 {} ms, expected about 20",
        p.p50_ms
    );
    assert!(p.max_ms >= 20.0);

    let svg = std::env::temp_dir().join(format!("kaiwa-lt-chart-{}.svg", std::process::id()));
    kaiwa_loadtest::chart::draw(&report, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(text.contains("<svg") && text.contains("polyline"));
    assert!(report.summary().contains("p99.9"));
    // The tool says how busy it was; without an admin handle it cannot read the nodes'.
    let busy = report.extra["tool_cpu_busy"].as_f64().unwrap();
    assert!((0.0..=1.5).contains(&busy), "tool busy {busy}");
    assert!(!report.extra.contains_key("nodes_cpu_busy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_pairs_count_acks_and_deliveries() {
    let base = common::start(Default::default()).await;
    let ctx = ctx(&base, WireFormat::Json, 0.3);
    // The fake server pushes every message to every session, so use one pair.
    let plan = chat::ChatPlan {
        tokens: tokens("w", 2),
        users: tokens("w", 2),
    };
    let opts = chat::ChatOpts {
        rate: Some(100.0),
        window: 2,
    };
    let report = chat::run(&ctx, &plan, &opts).await.unwrap();
    assert!(report.acked > 5);
    assert_eq!(report.loss.lost, 0);
    assert_eq!(report.deliveries, report.acked * 2);
    assert!(report.ack_latency.count == report.acked);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["scenario"], "chat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_spread_over_worker_processes() {
    let base = common::start(common::FakeConfig {
        drop_seqs: HashSet::from([2]),
        delay: Duration::ZERO,
        cut_at: None,
    })
    .await;
    let mut ctx = ctx(&base, WireFormat::Json, 0.5);
    ctx.per_process = 2;
    ctx.worker_exe = Some(env!("CARGO_BIN_EXE_kaiwa-loadtest").into());
    let plan = fanout::plan_for("g3".into(), &tokens("x", 6), 1);
    let opts = fanout::FanoutOpts {
        rate: Some(40.0),
        window: 4,
    };
    let report = fanout::run(&ctx, &plan, &opts).await.unwrap();
    assert_eq!(report.connect.ok, 5, "3 workers hold 2 + 2 + 1 receivers");
    assert_eq!(report.loss.lost, 5);
    assert_eq!(report.deliveries, (report.acked - 1) * 5);
    assert!(report.delivery_latency.count > 0);
}

#[test]
fn floor_reads_every_record_and_times_the_rounds() {
    let opts = floor::FloorOpts {
        connections: 40,
        rate: 20.0,
        bytes: 300,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        send_cpu: None,
        recv_cpu: None,
        reader_exe: Some(env!("CARGO_BIN_EXE_kaiwa-loadtest").into()),
        shuffle: true,
    };
    let report = floor::run(&opts).unwrap();
    assert_eq!(report.scenario, "floor");
    assert_eq!(report.extra["lost_records"], 0);
    assert_eq!(report.extra["short_writes"], 0);
    // Every timed round reaches all 40 sockets, and each record's delay is measured once.
    assert!(report.sent >= 40 * 8, "sent only {}", report.sent);
    assert_eq!(report.sent % 40, 0);
    assert_eq!(report.deliveries, report.sent);
    assert_eq!(report.delivery_latency.count, report.sent);
    assert!(report.delivery_latency.max_ms < 1000.0);
    assert!(report.extra["write_cpu_us"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_cut_off_sync_on_a_new_connection() {
    let base = common::start(common::FakeConfig {
        cut_at: Some(5),
        ..Default::default()
    })
    .await;
    let ctx = ctx(&base, WireFormat::Json, 0.5);
    let plan = fanout::plan_for("g4".into(), &tokens("y", 5), 1);
    let opts = fanout::FanoutOpts {
        rate: Some(40.0),
        window: 4,
    };
    let report = fanout::run(&ctx, &plan, &opts).await.unwrap();
    let receivers = 4;
    assert!(report.acked > 8, "acked only {}", report.acked);
    assert_eq!(
        report.closed_by_server,
        BTreeMap::from([("4008".to_string(), receivers)])
    );
    // Seqs 1-4 arrived live; 5 and everything after came back by sync on new connections.
    assert_eq!(report.deliveries, 4 * receivers);
    assert_eq!(report.loss.missed_live, (report.acked - 4) * receivers);
    assert_eq!(report.loss.recovered_by_sync, report.loss.missed_live);
    assert_eq!((report.loss.lost, report.loss.sync_failures), (0, 0));
}

#[test]
fn a_max_rate_publisher_waits_for_the_readers() {
    use kaiwa_loadtest::live::Live;
    use kaiwa_loadtest::publisher::DeliveryBound;
    use std::sync::atomic::Ordering::Relaxed;
    let live = Live::default();
    let bound = DeliveryBound {
        receivers: 10,
        messages: 3,
    };
    live.acked.store(5, Relaxed);
    live.deliveries.store(20, Relaxed);
    assert_eq!(
        bound.undelivered(&live),
        3,
        "30 deliveries owed: 3 messages"
    );
    live.deliveries.store(50, Relaxed);
    assert_eq!(bound.undelivered(&live), 0);
}
