//! Idle entities leave memory and come back whole: a user, chat or group that has handled nothing
//! for `--actor-idle-ms` retires, and its next request loads it again from the store: a user
//! with their state, a conversation with its seq, its idempotency window, its members and its
//! children.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kaiwa_loadtest::{Client, Incoming, WireFormat};
use serde_json::json;

/// Idle time of the nodes under test, in milliseconds.
const IDLE_MS: &str = "150";

/// The value of a metric with exactly these labels (e.g. `kind="chat"`), 0 when absent.
async fn metric(node: &Node, name: &str, labels: &str) -> f64 {
    let text = node.admin().metrics_text().await.unwrap();
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until no conversation actor of `kind` runs on `node` and at least `retired` have
/// retired there.
async fn wait_retired(node: &Node, kind: &str, retired: f64) {
    wait_retired_on(std::slice::from_ref(node), kind, retired).await
}

/// [`wait_retired`] over several nodes: none runs one, and `retired` is their sum.
async fn wait_retired_on(nodes: &[Node], kind: &str, retired: f64) {
    let labels = format!("kind=\"{kind}\"");
    let deadline = Instant::now() + WAIT;
    loop {
        let (mut running, mut gone) = (0.0, 0.0);
        for node in nodes {
            running += metric(node, "kaiwa_actors_running", &labels).await;
            gone += metric(node, "kaiwa_retirements_total", &labels).await;
        }
        if running == 0.0 && gone >= retired {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{kind}: {running} still running, {gone} retired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_idle_chat_leaves_memory_and_comes_back_whole() {
    let node = Node::start_with(&["--actor-idle-ms", IDLE_MS]).await;
    let (_a, ca) = node.user("Ann", None, WireFormat::Json).await;
    let (b, cb) = node.user("Bob", None, WireFormat::Json).await;
    let conv = open_conv(&ca, "chat.open", json!({"user": b})).await;
    for (i, cmid) in ["m1", "m2", "m3"].iter().enumerate() {
        assert_eq!(send(&ca, &conv, cmid, "before").await, i as u64 + 1);
    }
    messages(&cb, 3).await;
    wait_retired(&node, "chat", 1.0).await;

    // A retry of an acked message gets its first ack: the window came back from the store.
    assert_eq!(send(&ca, &conv, "m2", "retried").await, 2);
    // New messages continue the log and reach the other member live.
    assert_eq!(send(&ca, &conv, "m4", "after").await, 4);
    let live = messages(&cb, 1).await;
    assert_eq!(live[0]["seq"], 4);
    let all = sync_all(&cb, &conv, 0).await;
    let texts: Vec<_> = all.iter().map(|m| m["body"]["text"].clone()).collect();
    assert_eq!(texts, ["before", "before", "before", "after"]);
    // Membership came back too: an outsider is still kept out.
    let (_c, cc) = node.user("Cy", None, WireFormat::Json).await;
    err(&cc, "sync", json!({"conv": conv, "after": 0}), "forbidden").await;
}

#[tokio::test]
async fn requests_around_the_moment_of_retirement_are_all_answered_in_order() {
    // Pauses just under, at and just over the idle time: some sends reach an actor that is
    // retiring, or one that has retired but is still addressed, and must be passed on.
    let node = Node::start_with(&["--actor-idle-ms", "40"]).await;
    let (_a, ca) = node.user("Ann", None, WireFormat::Json).await;
    let (b, cb) = node.user("Bob", None, WireFormat::Json).await;
    let conv = open_conv(&ca, "chat.open", json!({"user": b})).await;
    let pauses = [0u64, 30, 40, 45, 50, 60, 35, 55, 70, 42];
    let mut seq = 0;
    for round in 0..3 {
        for (i, pause) in pauses.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(*pause)).await;
            seq += 1;
            let cmid = format!("r{round}-{i}");
            assert_eq!(send(&ca, &conv, &cmid, &cmid).await, seq);
        }
    }
    let live = messages(&cb, seq as usize).await;
    let seqs: Vec<u64> = live.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seq).collect::<Vec<_>>());
    assert!(metric(&node, "kaiwa_retirements_total", "kind=\"chat\"").await >= 1.0);
}

#[tokio::test]
async fn retired_groups_keep_their_members_and_their_links() {
    let node = Node::start_with(&["--actor-idle-ms", IDLE_MS]).await;
    let (_o, owner) = node.user("Olga", None, WireFormat::Json).await;
    let (m, cm) = node.user("Mia", None, WireFormat::Json).await;
    let root = open_conv(
        &owner,
        "group.create",
        json!({"name": "root", "kind": "hierarchical"}),
    )
    .await;
    let child = open_conv(
        &owner,
        "group.create",
        json!({"name": "child", "kind": "hierarchical", "parent": root}),
    )
    .await;
    ok(&owner, "group.add", json!({"conv": child, "user": m})).await;
    wait_retired(&node, "group", 2.0).await;

    assert_eq!(
        ok(&owner, "group.children", json!({"conv": root})).await["children"],
        json!([child])
    );
    wait_retired(&node, "group", 3.0).await;
    // An announcement at the root reaches the child's member through a fresh activation of
    // each group.
    let ann = json!({"announcement": {"text": "all hands", "likes": true, "comments": true}});
    ok(
        &owner,
        "send",
        json!({"conv": root, "client_msg_id": "a1", "body": ann}),
    )
    .await;
    let ev = cm
        .next_event("message", WAIT)
        .await
        .expect("the copy arrives");
    assert_eq!(ev["conv"], child.as_str());
    assert_eq!(ev["body"]["announcement"]["text"], "all hands");
    // Text is still off where a group has children.
    err(
        &owner,
        "send",
        json!({"conv": root, "client_msg_id": "t1", "body": {"text": "hi"}}),
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn in_a_cluster_a_retired_chat_comes_back_on_its_owner() {
    let redis = Redis::start();
    let mut nodes = Vec::new();
    for id in ["n1", "n2"] {
        let flags = [
            "--redis-url",
            &redis.url(),
            "--node-id",
            id,
            "--actor-idle-ms",
            IDLE_MS,
        ];
        nodes.push(Node::start_with(&flags).await);
    }
    for node in &nodes {
        wait_for_nodes(node, 2).await;
    }
    let (a, ca) = nodes[0].user("Ann", None, WireFormat::Json).await;
    let b = nodes[0].admin().create_user("Bob", None).await.unwrap();
    let cb = nodes[1].connect(&b, WireFormat::MsgPack).await;
    let conv = open_conv(&ca, "chat.open", json!({"user": b})).await;
    assert_eq!(open_conv(&cb, "chat.open", json!({"user": a})).await, conv);
    assert_eq!(send(&ca, &conv, "a1", "from Ann").await, 1);
    assert_eq!(send(&cb, &conv, "b1", "from Bob").await, 2);
    messages(&cb, 1).await;
    wait_retired_on(&nodes, "chat", 1.0).await;

    // Both sides go on from where the log ended, whichever node each is on; a retry is still
    // recognised.
    assert_eq!(send(&cb, &conv, "b1", "retried").await, 2);
    assert_eq!(send(&cb, &conv, "b2", "again").await, 3);
    assert_eq!(send(&ca, &conv, "a2", "again").await, 4);
    // Ann sees every message once, her own included, the retry not again.
    let live = messages(&ca, 4).await;
    let seqs: Vec<_> = live.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    quiet(&ca).await;
}

#[tokio::test]
async fn a_retired_user_comes_back_with_their_state() {
    let node = Node::start_with(&["--actor-idle-ms", IDLE_MS]).await;
    let admin = node.admin();
    let (u, c) = node.user("Ann", None, WireFormat::Json).await;
    wait_retired(&node, "user", 1.0).await;
    // The connection does not need the user's actor; a request that does loads it again.
    assert_eq!(ok(&c, "convs", json!({})).await["convs"], json!([]));
    wait_retired(&node, "user", 2.0).await;
    let token = admin.token(&u).await.unwrap();
    // A state change reaches the fresh activation and closes the live session.
    admin.set_user_state(&u, "suspended").await.unwrap();
    loop {
        match c.next(WAIT).await {
            Some(Incoming::Closed(Some((code, _)))) => break assert_eq!(code, 4003),
            Some(_) => {}
            None => panic!("the suspended user's session was not closed"),
        }
    }
    wait_retired(&node, "user", 3.0).await;
    // The next activation reads the state back from the store: no way in.
    let url = format!("{}/ws?token={token}", node.ws());
    let refused = Client::connect_url(&url, WireFormat::Json).await;
    assert_eq!(refused.err().and_then(|e| e.status()), Some(403));
}

#[tokio::test]
async fn requests_for_conversations_that_do_not_exist_leave_no_actors_behind() {
    // Keep loaded conversations for the life of the node: the ones that do not exist must go
    // anyway (after a grace of seconds), or a client could pile up actors with made-up ids.
    let node = Node::start_with(&["--actor-idle-ms", "0"]).await;
    let (_a, ca) = node.user("Ann", None, WireFormat::Json).await;
    for i in 0..20 {
        for conv in [format!("c_nosuch{i}"), format!("g_nosuch{i}")] {
            err(&ca, "sync", json!({"conv": conv, "after": 0}), "not_found").await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for kind in ["chat", "group"] {
        let labels = format!("kind=\"{kind}\"");
        while metric(&node, "kaiwa_actors_running", &labels).await > 0.0 {
            assert!(Instant::now() < deadline, "{kind} actors stayed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A real chat opened by its first request stays, and asking again finds the others gone.
    let (b, _cb) = node.user("Bob", None, WireFormat::Json).await;
    let conv = open_conv(&ca, "chat.open", json!({"user": b})).await;
    assert_eq!(send(&ca, &conv, "1", "hi").await, 1);
    err(
        &ca,
        "sync",
        json!({"conv": "c_nosuch0", "after": 0}),
        "not_found",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(send(&ca, &conv, "2", "still here").await, 2);
    let chats = metric(&node, "kaiwa_actors_running", "kind=\"chat\"").await;
    assert_eq!(chats, 1.0, "the real chat stays, the made-up one went");
}
