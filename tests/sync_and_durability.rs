//! Sync after a disconnect, and durability across a SIGKILL.

mod common;

use common::*;
use kaiwa_loadtest::WireFormat;
use serde_json::json;

#[tokio::test]
async fn reconnect_and_sync_returns_exactly_what_was_missed() {
    let node = Node::start().await;
    let (_a, ca) = node.user("Ann", None, WireFormat::Json).await;
    let (b, cb) = node.user("Bob", None, WireFormat::Json).await;
    let (c, cc) = node.user("Cid", None, WireFormat::MsgPack).await;
    let conv = open_conv(&ca, "group.create", json!({"name": "Trio", "kind": "flat"})).await;
    ok(&ca, "group.add", json!({"conv": conv, "user": b})).await;
    ok(&ca, "group.add", json!({"conv": conv, "user": c})).await;
    for i in 0..3 {
        send(&ca, &conv, &format!("before{i}"), "before").await;
    }
    let seen = messages(&cc, 3).await;
    let last_seen = seen.last().unwrap()["seq"].as_u64().unwrap();
    cc.close().await;

    for i in 0..120 {
        let sender = if i % 2 == 0 { &ca } else { &cb };
        send(sender, &conv, &format!("while{i}"), &format!("missed {i}")).await;
    }

    let cc = node.connect(&c, WireFormat::MsgPack).await;
    let missed = sync_all(&cc, &conv, last_seen).await;
    let seqs: Vec<u64> = missed.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (4..=123).collect::<Vec<u64>>());
    for (i, m) in missed.iter().enumerate() {
        assert_eq!(m["body"]["text"], format!("missed {i}"));
    }
    // A page never exceeds its limit and says when more follow.
    let page = ok(&cc, "sync", json!({"conv": conv, "after": 0, "limit": 10})).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 10);
    assert_eq!(page["more"], true);
    let tail = ok(&cc, "sync", json!({"conv": conv, "after": 123})).await;
    assert_eq!(tail["messages"].as_array().unwrap().len(), 0);
    assert_eq!(tail["more"], false);
}

#[tokio::test]
async fn acked_messages_survive_sigkill_and_retries_are_not_stored_twice() {
    // A journal of 16 messages: the 200 sends seal and fold it many times before the kill,
    // which may land mid-fold; the restart folds what is left.
    let mut node = Node::start_with(&["--journal-messages", "16"]).await;
    let (_a, ca) = node.user("Ann", None, WireFormat::Json).await;
    let (b, cb) = node.user("Bob", None, WireFormat::Json).await;
    let chat = open_conv(&ca, "chat.open", json!({"user": b})).await;
    let group = open_conv(&ca, "group.create", json!({"name": "Kept", "kind": "flat"})).await;
    ok(&ca, "group.add", json!({"conv": group, "user": b})).await;

    // Pipelined sends from two clients; every ack we get must survive the kill.
    let mut acked = Vec::new();
    let sends = (0..200).map(|i| {
        let (c, conv) = if i % 2 == 0 { (&ca, &group) } else { (&cb, &chat) };
        async move {
            let v = c
                .request("send", json!({"conv": conv, "client_msg_id": format!("k{i}"), "body": {"text": format!("n{i}")}}))
                .await;
            (i, conv.clone(), v)
        }
    });
    for (i, conv, v) in futures_util::future::join_all(sends).await {
        let v = v.unwrap().unwrap();
        acked.push((
            i,
            conv,
            v["seq"].as_u64().unwrap(),
            v["msg_id"].as_str().unwrap().to_string(),
        ));
    }
    node.kill();
    drop((ca, cb));
    node.restart().await;

    let ca = node.connect(&_a, WireFormat::Json).await;
    for conv in [&group, &chat] {
        let all = sync_all(&ca, conv, 0).await;
        let seqs: Vec<u64> = all.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=100).collect::<Vec<u64>>(),
            "gapless after restart"
        );
        for (_, c, seq, msg_id) in acked.iter().filter(|x| &x.1 == conv) {
            assert_eq!(
                all[(*seq - 1) as usize]["msg_id"],
                msg_id.as_str(),
                "acked message {seq} of {c} kept"
            );
        }
    }
    // A retry of an acked client_msg_id returns the first ack and stores nothing.
    let (_, _, seq0, id0) = acked.iter().find(|x| x.0 == 0).unwrap().clone();
    let retry = ok(
        &ca,
        "send",
        json!({"conv": group, "client_msg_id": "k0", "body": {"text": "n0"}}),
    )
    .await;
    assert_eq!(retry["seq"].as_u64().unwrap(), seq0);
    assert_eq!(retry["msg_id"], id0.as_str());
    assert_eq!(sync_all(&ca, &group, 0).await.len(), 100);
    // And a new message continues the log.
    assert_eq!(send(&ca, &group, "fresh", "after restart").await, 101);
}
