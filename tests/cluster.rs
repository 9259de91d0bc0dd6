//! Cluster mode: several real nodes on one real redis-server.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use kaiwa_loadtest::{Client, WireFormat};
use serde_json::json;

/// Lets presence announcements of fresh connections reach every node.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn three_nodes_chat_and_a_sixty_member_group_across_them() {
    let redis = Redis::start();
    let nodes = start_cluster(&redis, 3).await;

    // 1:1 between users on different nodes.
    let (a, ca) = nodes[0].user("Ann", None, WireFormat::Json).await;
    let b = nodes[0].admin().create_user("Bob", None).await.unwrap();
    let cb = nodes[1].connect(&b, WireFormat::MsgPack).await;
    settle().await;
    let conv = open_conv(&ca, "chat.open", json!({"user": b})).await;
    assert_eq!(open_conv(&cb, "chat.open", json!({"user": a})).await, conv);
    assert_eq!(send(&ca, &conv, "1", "hi Bob").await, 1);
    assert_eq!(messages(&cb, 1).await[0]["body"]["text"], "hi Bob");
    assert_eq!(send(&cb, &conv, "1", "hi Ann").await, 2);
    let got = messages(&ca, 2).await;
    assert_eq!(got[1]["body"]["text"], "hi Ann");

    // A 60-member group spread over the three nodes.
    let (ids, owner, group) = flat_group(&nodes[1], &nodes[2], 60, "Sixty").await;
    let mut clients = vec![owner];
    for (i, u) in ids.iter().enumerate().skip(1) {
        let f = if i % 2 == 0 {
            WireFormat::Json
        } else {
            WireFormat::MsgPack
        };
        clients.push(nodes[i % 3].connect(u, f).await);
    }
    settle().await;
    // Drain the member_added events the owner saw.
    while clients[0].next(Duration::from_millis(50)).await.is_some() {}

    let n = 30;
    for i in 0..n {
        let c = &clients[i * 7 % 60];
        let seq = send(c, &group, &format!("m{i}"), &format!("text {i}")).await;
        assert_eq!(seq, i as u64 + 1);
    }
    let checks = clients.iter().map(|c| async {
        let got = messages(c, n).await;
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=n as u64).collect::<Vec<_>>(),
            "once, in seq order"
        );
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m["body"]["text"], format!("text {i}"));
        }
        quiet(c).await;
    });
    futures_util::future::join_all(checks).await;

    // Each node received each message at most once over the bus, never once per member.
    for node in &nodes {
        let text = node.admin().metrics_text().await.unwrap();
        let bus_in = kaiwa_loadtest::admin::metric_value(&text, "kaiwa_bus_messages_in_total")
            .unwrap_or(0.0);
        assert!(
            bus_in < 200.0,
            "node {} got {bus_in} bus messages",
            node.port
        );
    }
}

#[tokio::test]
async fn a_node_killed_under_load_and_rejoining_loses_no_acked_message() {
    let redis = Redis::start();
    let mut nodes = start_cluster(&redis, 3).await;
    // Created on the node that will die, so the group must move.
    let (ids, owner, group) = flat_group(&nodes[0], &nodes[1], 6, "Load").await;
    drop(owner);

    let per_sender = 120;
    let mut tasks = Vec::new();
    for (i, user) in ids.iter().enumerate() {
        let user = user.clone();
        let group = group.clone();
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        tasks.push(tokio::spawn(async move {
            // Each sender starts on node i % 3 and fails over in order.
            let handles: Vec<NodeRef> = ports.iter().map(|p| NodeRef(*p)).collect();
            let refs: Vec<&NodeRef> = handles.iter().collect();
            let mut at = i % 3;
            let mut client = refs[at].connect(&user).await;
            let mut acked = HashMap::new();
            for k in 0..per_sender {
                let cmid = format!("{user}-{k}");
                let seq = send_until_acked(&mut client, &refs, &mut at, &user, &group, &cmid).await;
                acked.insert(cmid, seq);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, Instant::now())
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    nodes[1].kill();
    // The survivors take the group over; then the node rejoins and takes it back.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    nodes[1].restart().await;
    let rejoined = Instant::now();

    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut last = rejoined;
    for t in tasks {
        let (a, done) = t.await.unwrap();
        acked.extend(a);
        last = last.max(done);
    }
    assert!(
        last > rejoined + Duration::from_millis(500),
        "the load went on after the rejoin"
    );
    assert_eq!(acked.len(), ids.len() * per_sender);

    // A client on a survivor resyncs: everything acked is there exactly once, seqs gapless.
    let reader = nodes[0].connect(&ids[0], WireFormat::Json).await;
    let log = sync_all(&reader, &group, 0).await;
    let seqs: Vec<u64> = log.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=log.len() as u64).collect::<Vec<_>>(), "gapless");
    let mut seen = HashSet::new();
    for m in &log {
        let text = m["body"]["text"].as_str().unwrap().to_string();
        assert!(seen.insert(text.clone()), "{text} stored twice");
        if let Some(seq) = acked.get(&text) {
            assert_eq!(
                *seq,
                m["seq"].as_u64().unwrap(),
                "{text} acked with another seq"
            );
        }
    }
    for cmid in acked.keys() {
        assert!(seen.contains(cmid), "acked {cmid} is missing");
    }
}

/// A node seen only through its port (tasks cannot borrow the `Node`s).
struct NodeRef(u16);

impl NodeRef {
    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.0)
    }
    fn admin(&self) -> kaiwa_loadtest::Admin {
        kaiwa_loadtest::Admin::new(&format!("http://127.0.0.1:{}", self.0), ADMIN_KEY)
    }
    async fn connect(&self, user: &str) -> Client {
        let token = self.admin().token(user).await.unwrap();
        Client::connect(&self.ws(), &token, WireFormat::Json)
            .await
            .unwrap()
    }
}

/// Sends until acked, reconnecting to the next node when the connection dies. Returns the seq.
async fn send_until_acked(
    client: &mut Client,
    nodes: &[&NodeRef],
    at: &mut usize,
    user: &str,
    conv: &str,
    cmid: &str,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "{cmid} was never acked");
        let r = client
            .request(
                "send",
                json!({"conv": conv, "client_msg_id": cmid, "body": {"text": cmid}}),
            )
            .await;
        match r {
            Ok(Ok(v)) => return v["seq"].as_u64().unwrap(),
            Ok(Err(e)) => {
                assert_eq!(e.code, "internal", "{cmid}: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => loop {
                *at = (*at + 1) % nodes.len();
                let node = nodes[*at];
                let Ok(token) = node.admin().token(user).await else {
                    continue;
                };
                if let Ok(c) = Client::connect(&node.ws(), &token, WireFormat::Json).await {
                    *client = c;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
        }
    }
}

#[tokio::test]
async fn a_node_rides_out_a_redis_restart() {
    let mut redis = Redis::start();
    let nodes = start_cluster(&redis, 2).await;
    let (_a, ca) = nodes[0].user("Ann", None, WireFormat::Json).await;
    let b = nodes[0].admin().create_user("Bob", None).await.unwrap();
    let cb = nodes[1].connect(&b, WireFormat::Json).await;
    settle().await;
    let conv = open_conv(&ca, "chat.open", json!({"user": b})).await;
    assert_eq!(send(&ca, &conv, "1", "before").await, 1);
    messages(&cb, 1).await;

    redis.kill();
    wait_health(&nodes[0], 503, Duration::from_secs(10)).await;
    // Requests fail fast instead of hanging.
    let started = Instant::now();
    match ca
        .request(
            "send",
            json!({"conv": conv, "client_msg_id": "2", "body": {"text": "during"}}),
        )
        .await
        .unwrap()
    {
        Ok(v) => panic!("send succeeded without Redis: {v}"),
        Err(e) => assert_eq!(e.code, "internal"),
    }
    assert!(started.elapsed() < Duration::from_secs(8));

    redis.restart();
    for n in &nodes {
        wait_health(n, 200, Duration::from_secs(15)).await;
    }
    // The same connections carry on: the retry is stored, and delivered across nodes.
    assert_eq!(send(&ca, &conv, "2", "after").await, 2);
    let got = messages(&cb, 1).await;
    assert_eq!(got[0]["body"]["text"], "after");
    assert_eq!(sync_all(&cb, &conv, 0).await.len(), 2);
}

#[tokio::test]
async fn a_request_forwarded_to_a_frozen_owner_is_answered_not_left_hanging() {
    let redis = Redis::start();
    let nodes = start_cluster(&redis, 2).await;
    let (_a, ca) = nodes[1].user("Ann", None, WireFormat::Json).await;
    let b = nodes[0].admin().create_user("Bob", None).await.unwrap();
    // Created through a client of n2, so n2 owns it; Bob's requests from n1 are forwarded.
    let group = open_conv(
        &ca,
        "group.create",
        json!({"name": "Frozen", "kind": "flat"}),
    )
    .await;
    ok(&ca, "group.add", json!({"conv": group, "user": b})).await;
    let cb = nodes[0].connect(&b, WireFormat::Json).await;
    assert_eq!(send(&cb, &group, "1", "forwarded").await, 1);

    let pid = nodes[1].pid().unwrap().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    signal("-STOP");
    let started = Instant::now();
    let r = cb
        .request(
            "send",
            json!({"conv": group, "client_msg_id": "2", "body": {"text": "frozen"}}),
        )
        .await;
    signal("-CONT");
    match r {
        Ok(Err(e)) => assert_eq!(e.code, "internal"),
        other => panic!("expected an internal error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(8));
}

/// The `kaiwa_activations_total` sample of `kind` on `node`; 0 when never counted.
async fn activations(node: &Node, kind: &str) -> f64 {
    let text = node.admin().metrics_text().await.unwrap();
    let label = format!("kind=\"{kind}\"");
    text.lines()
        .filter(|l| l.starts_with("kaiwa_activations_total{") && l.contains(&label))
        .find_map(|l| l.rsplit_once(' ')?.1.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A new user whose owner, by rendezvous hashing over `live`, is `owner`.
async fn user_owned_by(admin: &kaiwa_loadtest::Admin, live: &[String], owner: &str) -> String {
    loop {
        let u = admin.create_user("Ann", None).await.unwrap();
        if kaiwa_actors::cluster::pick_owner(live, &u).map(String::as_str) == Some(owner) {
            return u;
        }
    }
}

/// Waits until `c` is closed by the server and returns the close code.
async fn closed_with(c: &Client) -> u16 {
    loop {
        match c.next(WAIT).await {
            Some(kaiwa_loadtest::Incoming::Closed(Some((code, _)))) => return code,
            Some(kaiwa_loadtest::Incoming::Closed(None)) => panic!("closed without a code"),
            Some(_) => {}
            None => panic!("the session was not closed"),
        }
    }
}

#[tokio::test]
async fn a_user_has_one_activation_and_is_suspended_on_every_node_from_any_node() {
    let redis = Redis::start();
    let nodes = start_cluster(&redis, 3).await;
    let live: Vec<String> = vec!["n1".into(), "n2".into(), "n3".into()];
    let admin = nodes[2].admin();
    // Ann is owned by n1, connected to n1 and n2, and managed through n3.
    let ann = user_owned_by(&admin, &live, "n1").await;
    let bob = admin.create_user("Bob", None).await.unwrap();
    let on_n1 = nodes[0].connect(&ann, WireFormat::Json).await;
    let on_n2 = nodes[1].connect(&ann, WireFormat::MsgPack).await;
    let on_n3 = nodes[2].connect(&ann, WireFormat::Json).await;
    let cb = nodes[2].connect(&bob, WireFormat::Json).await;
    settle().await;

    // `convs` from any node gives the same list.
    let chat = open_conv(&on_n2, "chat.open", json!({"user": bob})).await;
    let group = open_conv(
        &on_n3,
        "group.create",
        json!({"name": "Team", "kind": "flat"}),
    )
    .await;
    let mut lists = Vec::new();
    for c in [&on_n1, &on_n2, &on_n3] {
        let v = ok(c, "convs", json!({})).await;
        let mut ids: Vec<String> = v["convs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["conv"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        lists.push(ids);
    }
    let mut want = vec![chat, group];
    want.sort();
    assert!(lists.iter().all(|l| *l == want), "{lists:?}");

    // The admin API of every node reads the user and the org from their owners' actors.
    let org = admin.create_org("Acme", &["acme.test"]).await.unwrap();
    for n in &nodes {
        let (status, v) = n
            .admin()
            .raw(
                reqwest::Method::GET,
                &format!("/api/v1/users/{ann}"),
                None,
                Some(ADMIN_KEY),
            )
            .await
            .unwrap();
        assert_eq!((status, v["id"].as_str()), (200, Some(ann.as_str())));
        let (status, v) = n
            .admin()
            .raw(
                reqwest::Method::GET,
                &format!("/api/v1/orgs/{org}"),
                None,
                Some(ADMIN_KEY),
            )
            .await
            .unwrap();
        assert_eq!((status, v["id"].as_str()), (200, Some(org.as_str())));
    }
    // One activation of Ann in the cluster, on n1 (Bob's actor was never needed), and one of
    // the org, on its owner.
    let mut users = Vec::new();
    let mut orgs = Vec::new();
    for n in &nodes {
        users.push(activations(n, "user").await);
        orgs.push(activations(n, "org").await);
    }
    assert_eq!(users, vec![1.0, 0.0, 0.0], "user activations per node");
    let org_owner = kaiwa_actors::cluster::pick_owner(&live, &org).unwrap();
    let mut want_orgs = vec![0.0; 3];
    want_orgs[live.iter().position(|n| n == org_owner).unwrap()] = 1.0;
    assert_eq!(orgs, want_orgs, "org activations per node");

    // Suspended through n3, which hosts no session of hers: both sessions close with 4003,
    // Bob's stays, and reconnecting anywhere gets 403.
    let token = admin.token(&ann).await.unwrap();
    on_n3.close().await;
    settle().await;
    admin.set_user_state(&ann, "suspended").await.unwrap();
    assert_eq!(closed_with(&on_n1).await, 4003);
    assert_eq!(closed_with(&on_n2).await, 4003);
    ok(&cb, "ping", json!({})).await;
    for n in &nodes {
        let url = format!("{}/ws?token={token}", n.ws());
        let r = Client::connect_url(&url, WireFormat::Json).await;
        assert_eq!(
            r.err().and_then(|e| e.status()),
            Some(403),
            "node {}",
            n.port
        );
    }
    let (status, v) = nodes[1]
        .admin()
        .raw(
            reqwest::Method::GET,
            &format!("/api/v1/users/{ann}"),
            None,
            Some(ADMIN_KEY),
        )
        .await
        .unwrap();
    assert_eq!((status, v["state"].as_str()), (200, Some("suspended")));
    assert_eq!(activations(&nodes[0], "user").await, 1.0);
}
