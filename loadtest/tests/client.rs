//! The client library against the in-process fake server: replies, events, errors, both encodings.

mod common;

use std::sync::Arc;
use std::time::Duration;

use kaiwa_loadtest::{Client, Incoming, WireFormat};
use serde_json::json;

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn request_reply_and_events_in_both_formats() {
    let base = common::start(Default::default()).await;
    for format in [WireFormat::Json, WireFormat::MsgPack] {
        let c = Client::connect(&base, "alice", format).await.unwrap();
        let ok = c.request("echo", json!({"x": 1})).await.unwrap().unwrap();
        assert_eq!(ok["x"], 1);
        assert_eq!(ok["op"], "echo");
        let err = c.request("nope", json!({})).await.unwrap().unwrap_err();
        assert_eq!(err.code, "unknown_op");
        let ack = c
            .request(
                "send",
                json!({"conv": format!("{format:?}"), "body": {"text": "hi"}}),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ack["seq"], 1);
        let ev = c.next_event("message", T).await.unwrap();
        assert_eq!(ev["body"]["text"], "hi");
        c.close().await;
    }
}

#[tokio::test]
async fn pipelined_requests_from_many_tasks() {
    let base = common::start(Default::default()).await;
    let c = Arc::new(
        Client::connect(&base, "bob", WireFormat::Json)
            .await
            .unwrap(),
    );
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let ok = c.request("echo", json!({"i": i})).await.unwrap().unwrap();
                assert_eq!(ok["i"], i);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn bad_frames_come_back_unsolicited() {
    let base = common::start(Default::default()).await;
    let c = Client::connect(&base, "carol", WireFormat::Json)
        .await
        .unwrap();
    c.send_text_frame("{not json").await.unwrap();
    match c.next(T).await {
        Some(Incoming::Unsolicited(v)) => assert_eq!(v["err"]["code"], "bad_frame"),
        other => panic!("unexpected {other:?}"),
    }
    c.send_binary_frame(vec![0xc1]).await.unwrap();
    assert!(matches!(c.next(T).await, Some(Incoming::Unsolicited(_))));
}

#[tokio::test]
async fn refused_upgrades_report_their_status() {
    let base = common::start(Default::default()).await;
    let e = Client::connect_url(&format!("{base}/ws?token=bad"), WireFormat::Json)
        .await
        .err()
        .unwrap();
    assert_eq!(e.status(), Some(401));
    let e = Client::connect_url(&format!("{base}/ws?token=suspended"), WireFormat::Json)
        .await
        .err()
        .unwrap();
    assert_eq!(e.status(), Some(403));
}

#[tokio::test]
async fn paused_reading_holds_events_back() {
    let base = common::start(Default::default()).await;
    let c = Client::connect(&base, "dan", WireFormat::Json)
        .await
        .unwrap();
    let sender = Client::connect(&base, "eve", WireFormat::Json)
        .await
        .unwrap();
    c.pause_reading();
    sender
        .request("send", json!({"conv": "p", "body": {"text": "x"}}))
        .await
        .unwrap()
        .unwrap();
    assert!(c.next(Duration::from_millis(200)).await.is_none());
    c.resume_reading();
    assert!(c.next_event("message", T).await.is_some());
}
