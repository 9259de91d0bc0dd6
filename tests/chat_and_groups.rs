//! Chats and flat groups over real WebSockets, in both encodings.

mod common;

use common::*;
use kaiwa_loadtest::WireFormat;
use serde_json::json;

#[tokio::test]
async fn two_users_chat_over_json() {
    let node = Node::start().await;
    let (a, ca) = node.user("Ann", None, WireFormat::Json).await;
    let (b, cb) = node.user("Bob", None, WireFormat::Json).await;

    let conv = open_conv(&ca, "chat.open", json!({"user": b})).await;
    let again = ok(&cb, "chat.open", json!({"user": a})).await;
    assert_eq!(
        again["conv"],
        conv.as_str(),
        "the pair has one chat whoever opens it"
    );

    assert_eq!(send(&ca, &conv, "1", "hi Bob").await, 1);
    let got = messages(&cb, 1).await;
    assert_eq!(got[0]["body"]["text"], "hi Bob");
    assert_eq!(got[0]["from"], a.as_str());
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(send(&cb, &conv, "1", "hi Ann").await, 2);
    let got = messages(&ca, 2).await; // Ann's own message comes back to her session too
    assert_eq!(got[1]["body"]["text"], "hi Ann");

    let convs = ok(&ca, "convs", json!({})).await;
    let list = convs["convs"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["type"], "chat");
    assert_eq!(list[0]["last_seq"], 2);
    assert!(list[0]["org"].is_null());
}

#[tokio::test]
async fn fifty_member_group_everyone_gets_every_message_once_in_order() {
    let node = Node::start().await;
    let (ids, co, conv) = flat_group(&node, &node, 50, "Fifty").await;
    let members = ok(&co, "group.members", json!({"conv": conv})).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 50);

    // Member 1 speaks MessagePack; everyone else JSON.
    let mut clients = Vec::new();
    for (i, u) in ids.iter().enumerate().skip(1) {
        let f = if i == 1 {
            WireFormat::MsgPack
        } else {
            WireFormat::Json
        };
        clients.push(node.connect(u, f).await);
    }
    let senders = [&co, &clients[0], &clients[1]];
    let mut acks = Vec::new();
    for i in 0..30 {
        let c = senders[i % 3];
        acks.push(send(c, &conv, &format!("m{i}"), &format!("text {i}")).await);
    }
    assert_eq!(acks, (1..=30).collect::<Vec<u64>>());

    let checks = clients.iter().map(|c| async {
        let got = messages(c, 30).await;
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=30).collect::<Vec<u64>>(),
            "every message once, in seq order"
        );
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m["body"]["text"], format!("text {i}"));
            assert_eq!(m["conv"], conv.as_str());
        }
        quiet(c).await;
    });
    futures_util::future::join_all(checks).await;
}

#[tokio::test]
async fn members_come_and_go_with_events() {
    let node = Node::start().await;
    let (_a, ca) = node.user("Ann", None, WireFormat::Json).await;
    let (b, cb) = node.user("Bob", None, WireFormat::Json).await;
    let conv = open_conv(&ca, "group.create", json!({"name": "Pair", "kind": "flat"})).await;
    ok(&ca, "group.add", json!({"conv": conv, "user": b})).await;
    let ev = cb.next_event("member_added", WAIT).await.unwrap();
    assert_eq!(ev["user"], b.as_str());
    ok(&cb, "group.remove", json!({"conv": conv, "user": b})).await; // Bob leaves
    let ev = ca.next_event("member_removed", WAIT).await.unwrap();
    assert_eq!(ev["user"], b.as_str());
    err(
        &cb,
        "send",
        json!({"conv": conv, "client_msg_id": "x", "body": {"text": "still here?"}}),
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn metrics_report_cpu_to_the_microsecond_and_socket_flushes() {
    let node = Node::start().await;
    let (_a, ca) = node.user("Ann", None, WireFormat::Json).await;
    let (b, cb) = node.user("Bob", None, WireFormat::Json).await;
    let conv = open_conv(&ca, "chat.open", json!({"user": b})).await;
    send(&ca, &conv, "1", "hi Bob").await;
    messages(&cb, 1).await;
    let text = node.admin().metrics_text().await.unwrap();
    let value = |name: &str| kaiwa_loadtest::admin::metric_value(&text, name);
    // A fresh node has used a fraction of a second: whole seconds would read 0.
    let cpu = value("kaiwa_process_cpu_seconds").expect("the node's CPU time");
    assert!(cpu > 0.0 && cpu.fract() != 0.0, "cpu {cpu}");
    assert!(value("kaiwa_flush_seconds_count").unwrap_or(0.0) >= 1.0);
    assert!(value("kaiwa_flush_connections_count").unwrap_or(0.0) >= 1.0);
}
