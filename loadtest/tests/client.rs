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

/// A server may send its first frame in the same segment as the upgrade response; the bytes the
/// HTTP layer read past the response must reach the WebSocket reader.
#[tokio::test]
async fn a_frame_sent_with_the_upgrade_response_is_not_lost() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "client went away during the handshake");
            req.extend_from_slice(&buf[..n]);
        }
        let req = String::from_utf8_lossy(&req).into_owned();
        let key = req
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            })
            .expect("the upgrade request has a key");
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes();
        // One unmasked text frame, in the same write as the response.
        let payload = br#"{"ev":"hello","n":1}"#;
        out.extend_from_slice(&[0x81, payload.len() as u8]);
        out.extend_from_slice(payload);
        s.write_all(&out).await.unwrap();
        // Hold the connection until the client closes it.
        let _ = s.read(&mut buf).await;
    });
    let c = Client::connect(&format!("ws://{addr}"), "t", WireFormat::Json)
        .await
        .unwrap();
    let ev = c
        .next_event("hello", T)
        .await
        .expect("the early frame arrives");
    assert_eq!(ev["n"], 1);
    c.close().await;
    server.await.unwrap();
}
