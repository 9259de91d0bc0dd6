//! Org ownership and isolation: org chats and groups stay inside their org.

mod common;

use common::*;
use kaiwa_loadtest::WireFormat;
use serde_json::json;

#[tokio::test]
async fn outsiders_cannot_read_sync_send_or_list_org_conversations() {
    let node = Node::start().await;
    let admin = node.admin();
    let acme = admin.create_org("Acme", &["acme.com"]).await.unwrap();
    let globex = admin.create_org("Globex", &["globex.com"]).await.unwrap();
    let (a, ca) = node.user("Ann", Some(&acme), WireFormat::Json).await;
    let (b, cb) = node.user("Bob", Some(&acme), WireFormat::Json).await;
    let (g, cg) = node.user("Gus", Some(&globex), WireFormat::MsgPack).await;
    let (p, cp) = node.user("Pat", None, WireFormat::Json).await;

    // Org chat and org group, owned by Acme.
    let chat = open_conv(&ca, "chat.open", json!({"user": b, "org": acme})).await;
    let private = open_conv(&ca, "chat.open", json!({"user": b})).await;
    assert_ne!(
        chat, private,
        "the org chat of a pair is not their private chat"
    );
    let group = open_conv(
        &ca,
        "group.create",
        json!({"name": "Acme team", "kind": "flat", "org": acme}),
    )
    .await;
    ok(&ca, "group.add", json!({"conv": group, "user": b})).await;
    send(&ca, &group, "s1", "org secret").await;
    send(&ca, &chat, "s2", "org chat secret").await;

    // Outsiders cannot be brought in.
    err(
        &ca,
        "chat.open",
        json!({"user": g, "org": acme}),
        "forbidden",
    )
    .await;
    err(
        &cg,
        "chat.open",
        json!({"user": a, "org": acme}),
        "forbidden",
    )
    .await;
    err(
        &ca,
        "group.add",
        json!({"conv": group, "user": g}),
        "forbidden",
    )
    .await;
    err(
        &ca,
        "group.add",
        json!({"conv": group, "user": p}),
        "forbidden",
    )
    .await;
    err(
        &cg,
        "group.create",
        json!({"name": "Squat", "kind": "flat", "org": acme}),
        "forbidden",
    )
    .await;

    // Nor can they read, sync, send or list.
    for (c, _) in [(&cg, &g), (&cp, &p)] {
        for conv in [&chat, &group] {
            err(c, "sync", json!({"conv": conv, "after": 0}), "forbidden").await;
            err(
                c,
                "send",
                json!({"conv": conv, "client_msg_id": "x", "body": {"text": "hi"}}),
                "forbidden",
            )
            .await;
            err(c, "group.members", json!({"conv": conv}), "forbidden").await;
        }
        assert_eq!(
            ok(c, "convs", json!({})).await["convs"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
        quiet(c).await;
    }

    // Members list them with their org.
    let convs = ok(&cb, "convs", json!({})).await;
    let list = convs["convs"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    for c in list {
        let id = c["conv"].as_str().unwrap();
        let expect_org = if id == private {
            None
        } else {
            Some(acme.as_str())
        };
        assert_eq!(c["org"].as_str(), expect_org, "{c}");
    }
    // A private chat across orgs is fine.
    let cross = open_conv(&ca, "chat.open", json!({"user": g})).await;
    send(&cg, &cross, "x1", "hello from Globex").await;
}
