//! The WebSocket transport itself, below the protocol: fragmented messages, frames that arrive
//! with the handshake, the hard size limit on joined fragments, pings, and requests that are
//! not WebSocket upgrades.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use kaiwa_loadtest::{Incoming, WireFormat};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// A token for a fresh active user.
async fn token(node: &Node, name: &str) -> String {
    let (id, _c) = node.user(name, None, WireFormat::Json).await;
    node.admin().token(&id).await.unwrap()
}

/// The next text message of a raw client, as JSON.
async fn next_json<S>(ws: &mut S) -> Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a reply in time")
            .expect("the connection stays open")
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn fragment(data: &str, op: OpCode, last: bool) -> Message {
    Message::Frame(Frame::message(data.as_bytes().to_vec(), op, last))
}

#[tokio::test]
async fn a_request_in_fragments_is_joined_and_answered() {
    let node = Node::start().await;
    let t = token(&node, "Ann").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ws?token={t}", node.ws()))
        .await
        .unwrap();
    ws.send(fragment(r#"{"id":7,"#, OpCode::Data(Data::Text), false))
        .await
        .unwrap();
    ws.send(fragment(r#""op":"#, OpCode::Data(Data::Continue), false))
        .await
        .unwrap();
    // A ping between fragments is answered without breaking the message.
    ws.send(Message::Ping(b"between".to_vec().into()))
        .await
        .unwrap();
    ws.send(fragment(r#""ping"}"#, OpCode::Data(Data::Continue), true))
        .await
        .unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(v["re"], 7);
    assert!(v["ok"].is_object(), "{v}");
}

#[tokio::test]
async fn joined_fragments_past_the_hard_limit_close_the_connection_with_1009() {
    // Hard limit: four times --max-frame, at least 1 MiB.
    let node = Node::start_with(&["--max-frame", "2048"]).await;
    let t = token(&node, "Ann").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ws?token={t}", node.ws()))
        .await
        .unwrap();
    let part = "x".repeat(300_000);
    ws.send(fragment(&part, OpCode::Data(Data::Text), false))
        .await
        .unwrap();
    for _ in 0..3 {
        if ws
            .send(fragment(&part, OpCode::Data(Data::Continue), false))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut code = None;
    while let Ok(Some(m)) = tokio::time::timeout(WAIT, ws.next()).await {
        match m {
            Ok(Message::Close(c)) => {
                code = c.map(|c| u16::from(c.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(1009));
}

#[tokio::test]
async fn a_frame_sent_with_the_handshake_is_not_lost() {
    let node = Node::start().await;
    let t = token(&node, "Ann").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", node.port)).await.unwrap();
    let mut bytes = format!(
        "GET /ws?token={t} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    let mut frame = Frame::message(
        br#"{"id":1,"op":"ping"}"#.to_vec(),
        OpCode::Data(Data::Text),
        true,
    );
    frame.header_mut().mask = Some([1, 2, 3, 4]);
    frame.format(&mut bytes).unwrap();
    // One write: the request and the first frame arrive together.
    tcp.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&got).contains(r#""re":1"#) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .expect("the reply to the first frame")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"));
}

#[tokio::test]
async fn requests_that_are_not_websocket_upgrades_get_clear_statuses() {
    let node = Node::start().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Plain GET /ws: 426 with a typed error.
    let r = http
        .get(format!("{}/ws", node.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 426);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_frame");
    // An upgrade anywhere else: 404.
    let t = token(&node, "Ann").await;
    let err = tokio_tungstenite::connect_async(format!("{}/elsewhere?token={t}", node.ws()))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status().as_u16(), 404)
        }
        e => panic!("expected an HTTP error, got {e}"),
    }
}

/// Open files of the node process.
fn open_files(node: &Node) -> usize {
    let pid = node.pid().expect("the node runs");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn connections_dropped_while_messages_flow_release_their_sockets() {
    let node = Node::start().await;
    let (ids, owner, group) = flat_group(&node, &node, 41, "Leavers").await;
    let before = open_files(&node);
    let mut members = Vec::new();
    for id in &ids[1..] {
        members.push(node.connect(id, WireFormat::Json).await);
    }
    assert!(open_files(&node) >= before + 40);
    // Members vanish without a close frame while the owner keeps sending to all of them.
    let sender = async {
        for i in 0..60 {
            send(&owner, &group, &format!("d{i}"), "still here?").await;
        }
    };
    let leaver = async {
        for c in members.drain(..) {
            drop(c);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::join!(sender, leaver);
    // Every socket of theirs is closed by the node, whichever thread found it gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    while open_files(&node) > before + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} open files, {before} before the members connected",
            open_files(&node)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node pings every connection; a client that answers (the test client does on its own)
/// stays, one that reads nothing is cut off with 4009 once the timeout passes.
#[tokio::test]
async fn pings_keep_an_answering_client_and_cut_a_silent_one() {
    let node = Node::start_with(&["--ping-interval-ms", "100", "--ping-timeout-ms", "500"]).await;
    let (_, live) = node.user("Ann", None, WireFormat::Json).await;
    let (_, silent) = node.user("Bob", None, WireFormat::Json).await;
    silent.pause_reading();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ok(&live, "ping", json!({})).await;
    silent.resume_reading();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match silent.next(left).await {
            Some(Incoming::Closed(close)) => {
                assert_eq!(close.map(|(code, _)| code), Some(4009));
                break;
            }
            Some(_) => continue,
            None => panic!("the silent client was not closed"),
        }
    }
}
