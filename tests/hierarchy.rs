//! Hierarchical groups: actions flow down parent→child links, reactions flow back up, text is
//! off where a group has children, and the tree survives a restart.

mod common;

use std::collections::HashMap;

use common::*;
use kaiwa_loadtest::{Client, WireFormat};
use serde_json::{json, Value};

struct Tree {
    root: String,
    children: Vec<String>,
    /// Grandchildren by child.
    grand: Vec<Vec<String>>,
    /// Every group with its members (owner excluded).
    members: HashMap<String, Vec<String>>,
}

async fn create(c: &Client, name: &str, parent: Option<&str>) -> String {
    let mut p = json!({"name": name, "kind": "hierarchical"});
    if let Some(parent) = parent {
        p["parent"] = json!(parent);
    }
    ok(c, "group.create", p).await["conv"]
        .as_str()
        .unwrap()
        .to_string()
}

/// 1 root, 3 children, 2 grandchildren each; two members of their own in every group, and one
/// user (`shared`) in two leaf groups.
async fn build(node: &Node, owner: &Client, users: &[String]) -> Tree {
    let root = create(owner, "root", None).await;
    let mut children = Vec::new();
    let mut grand = Vec::new();
    for i in 0..3 {
        let c = create(owner, &format!("child {i}"), Some(&root)).await;
        let mut gs = Vec::new();
        for j in 0..2 {
            gs.push(create(owner, &format!("grandchild {i}.{j}"), Some(&c)).await);
        }
        children.push(c);
        grand.push(gs);
    }
    let mut all = vec![root.clone()];
    all.extend(children.iter().cloned());
    all.extend(grand.iter().flatten().cloned());
    let mut members = HashMap::new();
    let mut next = users.iter();
    for g in &all {
        let mine: Vec<String> = (0..2).map(|_| next.next().unwrap().clone()).collect();
        for u in &mine {
            ok(owner, "group.add", json!({"conv": g, "user": u})).await;
        }
        members.insert(g.clone(), mine);
    }
    // One user sits in two leaves of different branches.
    let shared = next.next().unwrap().clone();
    for g in [&grand[0][0], &grand[2][1]] {
        ok(owner, "group.add", json!({"conv": g, "user": shared})).await;
        members.get_mut(g).unwrap().push(shared.clone());
    }
    let _ = node;
    Tree {
        root,
        children,
        grand,
        members,
    }
}

fn poll() -> Value {
    json!({"poll": {"question": "Lunch?", "options": ["rice", "noodles", "salad"], "multi": false}})
}

#[tokio::test]
async fn an_action_at_the_root_reaches_every_group_once_and_answers_aggregate_up() {
    let mut node = Node::start().await;
    let admin = node.admin();
    let names: Vec<String> = (0..22).map(|i| format!("user {i}")).collect();
    let users = admin.create_users_bulk(&names, None).await.unwrap();
    let owner_id = admin.create_user("Owner", None).await.unwrap();
    let owner = node.connect(&owner_id, WireFormat::Json).await;
    let tree = build(&node, &owner, &users).await;
    // `group.children` lists children in id order.
    let mut sorted_children = tree.children.clone();
    sorted_children.sort();
    assert_eq!(
        ok(&owner, "group.children", json!({"conv": tree.root})).await["children"],
        json!(sorted_children)
    );

    // Text is off where a group has children, on in a leaf.
    let text = json!({"text": "hello"});
    for g in [&tree.root, &tree.children[1]] {
        err(
            &owner,
            "send",
            json!({"conv": g, "client_msg_id": "t", "body": text}),
            "forbidden",
        )
        .await;
    }
    send(&owner, &tree.grand[1][0], "leaf", "leaves may chat").await;

    // Every member connects (the shared user once).
    let mut clients: HashMap<String, Client> = HashMap::new();
    for ms in tree.members.values() {
        for u in ms {
            if !clients.contains_key(u) {
                clients.insert(u.clone(), node.connect(u, WireFormat::Json).await);
            }
        }
    }

    let ack = ok(
        &owner,
        "send",
        json!({"conv": tree.root, "client_msg_id": "p1", "body": poll()}),
    )
    .await;
    let root_msg = ack["msg_id"].as_str().unwrap().to_string();

    // Each member gets the poll once per group they are in, each copy in that group's own
    // log with the root's origin.
    let mut copies: HashMap<(String, String), String> = HashMap::new();
    for (u, c) in &clients {
        let groups: Vec<&String> = tree
            .members
            .iter()
            .filter(|(_, ms)| ms.contains(u))
            .map(|(g, _)| g)
            .collect();
        let got = messages(c, groups.len()).await;
        let mut convs: Vec<&str> = got.iter().map(|m| m["conv"].as_str().unwrap()).collect();
        convs.sort();
        let mut want: Vec<&str> = groups.iter().map(|g| g.as_str()).collect();
        want.sort();
        assert_eq!(convs, want, "user {u}: one copy per group");
        for m in &got {
            assert_eq!(m["origin"]["conv"], tree.root.as_str());
            assert_eq!(m["origin"]["msg_id"], root_msg.as_str());
            assert!(m["body"]["poll"].is_object());
            copies.insert(
                (u.clone(), m["conv"].as_str().unwrap().to_string()),
                m["msg_id"].as_str().unwrap().to_string(),
            );
        }
        quiet(c).await;
    }

    // Everyone in the leaves answers; the shared user answers in both leaves (2 then 1).
    let mut expect = [0u64; 3];
    for (gi, gs) in tree.grand.iter().enumerate() {
        for g in gs {
            for u in &tree.members[g] {
                let choice = if u == tree.members[&tree.grand[0][0]].last().unwrap() {
                    if g == &tree.grand[0][0] {
                        2
                    } else {
                        1
                    }
                } else {
                    gi
                };
                let msg_id = &copies[&(u.clone(), g.clone())];
                ok(
                    &clients[u],
                    "action.respond",
                    json!({"conv": g, "msg_id": msg_id, "answer": {"choice": [choice]}}),
                )
                .await;
            }
        }
    }
    // 12 leaf members count once each, the shared user once with its last answer (1).
    for (gi, gs) in tree.grand.iter().enumerate() {
        for g in gs {
            expect[gi] += 2;
            let _ = g;
        }
    }
    expect[1] += 1;
    // Reactions travel up asynchronously: poll the root's results until they settle.
    let mut results = Value::Null;
    for _ in 0..50 {
        results = ok(
            &owner,
            "action.results",
            json!({"conv": tree.root, "msg_id": root_msg}),
        )
        .await;
        if results["respondents"] == 13 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(results["respondents"], 13, "{results}");
    assert_eq!(results["counts"], json!(expect));
    // A child sees its own subtree only.
    let child0_copy = ok(
        &owner,
        "sync",
        json!({"conv": tree.children[0], "after": 0}),
    )
    .await["messages"][0]["msg_id"]
        .as_str()
        .unwrap()
        .to_string();
    let part = ok(
        &owner,
        "action.results",
        json!({"conv": tree.children[0], "msg_id": child0_copy}),
    )
    .await;
    assert_eq!(part["respondents"], 5, "{part}"); // 4 members + the shared user

    // The tree, the tallies and the links survive a restart.
    drop(clients);
    node.restart().await;
    let owner = node.connect(&owner_id, WireFormat::Json).await;
    assert_eq!(
        ok(&owner, "group.children", json!({"conv": tree.root})).await["children"],
        json!(sorted_children)
    );
    let after = ok(
        &owner,
        "action.results",
        json!({"conv": tree.root, "msg_id": root_msg}),
    )
    .await;
    assert_eq!(after, results);
    let a2 = json!({"announcement": {"text": "after restart", "likes": true, "comments": true}});
    ok(
        &owner,
        "send",
        json!({"conv": tree.root, "client_msg_id": "a2", "body": a2}),
    )
    .await;
    let leaf_user = &tree.members[&tree.grand[2][0]][0];
    let c = node.connect(leaf_user, WireFormat::Json).await;
    let mut found = false;
    for _ in 0..50 {
        let msgs = ok(&c, "sync", json!({"conv": tree.grand[2][0], "after": 0})).await;
        if msgs["messages"].as_array().unwrap().len() == 2 {
            assert_eq!(
                msgs["messages"][1]["body"]["announcement"]["text"],
                "after restart"
            );
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found, "the action reached a grandchild after the restart");
}

#[tokio::test]
async fn links_refuse_cycles_and_second_parents_and_unlink_stops_actions() {
    let node = Node::start().await;
    let (_o, owner) = node.user("Owner", None, WireFormat::Json).await;
    let (m, member) = node.user("Member", None, WireFormat::Json).await;
    let a = create(&owner, "a", None).await;
    let b = create(&owner, "b", Some(&a)).await;
    let c = create(&owner, "c", Some(&b)).await;
    let d = create(&owner, "d", None).await;
    err(
        &owner,
        "group.link",
        json!({"conv": c, "child": a}),
        "conflict",
    )
    .await; // a cycle
    err(
        &owner,
        "group.link",
        json!({"conv": c, "child": c}),
        "conflict",
    )
    .await;
    err(
        &owner,
        "group.link",
        json!({"conv": d, "child": b}),
        "conflict",
    )
    .await; // b has a parent
    let flat = open_conv(
        &owner,
        "group.create",
        json!({"name": "flat", "kind": "flat"}),
    )
    .await;
    err(
        &owner,
        "group.create",
        json!({"name": "x", "kind": "hierarchical", "parent": flat}),
        "forbidden",
    )
    .await;
    err(
        &owner,
        "group.create",
        json!({"name": "x", "kind": "flat", "parent": a}),
        "bad_frame",
    )
    .await;
    ok(&owner, "group.link", json!({"conv": d, "child": a})).await; // a root may get a parent

    // Only admins of the parent link and post there.
    ok(&owner, "group.add", json!({"conv": a, "user": m})).await;
    err(
        &member,
        "group.create",
        json!({"name": "mine", "kind": "hierarchical", "parent": a}),
        "forbidden",
    )
    .await;
    err(
        &member,
        "group.unlink",
        json!({"conv": a, "child": b}),
        "forbidden",
    )
    .await;
    let ann = json!({"announcement": {"text": "hi", "likes": true, "comments": true}});
    err(
        &member,
        "send",
        json!({"conv": a, "client_msg_id": "x", "body": ann}),
        "forbidden",
    )
    .await;

    ok(&owner, "group.unlink", json!({"conv": a, "child": b})).await;
    assert_eq!(
        ok(&owner, "group.children", json!({"conv": a})).await["children"],
        json!([])
    );
    ok(&owner, "group.add", json!({"conv": a, "user": _o})).await; // already owner: a no-op
                                                                   // `a` has no children now, so text is allowed again, and nothing reaches `b`.
    send(&owner, &a, "t1", "text is back").await;
    ok(
        &owner,
        "send",
        json!({"conv": a, "client_msg_id": "p", "body": poll()}),
    )
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        ok(&owner, "sync", json!({"conv": b, "after": 0})).await["messages"],
        json!([])
    );
}
