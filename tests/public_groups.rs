//! Public groups: the owner talks 1:1 with each member; members never see each other.

mod common;

use common::*;
use kaiwa_loadtest::{Incoming, WireFormat};
use serde_json::{json, Value};

#[tokio::test]
async fn members_reach_only_the_owner_and_never_learn_of_each_other() {
    let node = Node::start().await;
    let admin = node.admin();
    let owner_id = admin
        .create_user_with(json!({"name": "Owner", "phone": "+100"}))
        .await
        .unwrap();
    let owner = node.connect(&owner_id, WireFormat::Json).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            admin
                .create_user_with(
                    json!({"name": format!("member {i}"), "phone": format!("+2{i:02}")}),
                )
                .await
                .unwrap(),
        );
    }
    let conv = open_conv(
        &owner,
        "group.create",
        json!({"name": "Town hall", "kind": "public"}),
    )
    .await;
    for u in &ids {
        ok(&owner, "group.add", json!({"conv": conv, "user": u})).await;
    }
    let mut members = Vec::new();
    for u in &ids {
        members.push(node.connect(u, WireFormat::Json).await);
    }
    // The owner heard of every add; drain those.
    for _ in 0..20 {
        owner.next_event("member_added", WAIT).await.unwrap();
    }

    // Member 3 writes: only the owner gets it, in member 3's thread.
    let seq = send(&members[3], &conv, "q1", "a question").await;
    assert_eq!(seq, 1);
    let got = messages(&owner, 1).await;
    assert_eq!(got[0]["thread"], ids[3].as_str());
    assert_eq!(got[0]["body"]["text"], "a question");
    // The owner answers member 3 alone.
    ok(
        &owner,
        "send",
        json!({"conv": conv, "client_msg_id": "r1", "to": ids[3], "body": {"text": "an answer"}}),
    )
    .await;
    let got = messages(&members[3], 2).await; // its own message, then the answer
    assert_eq!(got[1]["body"]["text"], "an answer");
    assert_eq!(got[1]["seq"], 2);
    // An announcement reaches every member, each as if alone.
    let ack = ok(
        &owner,
        "send",
        json!({"conv": conv, "client_msg_id": "all", "body": {"text": "to everyone"}}),
    )
    .await;
    assert!(ack["msg_id"].is_string());
    let mut frames: Vec<Value> = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let got = messages(m, 1).await;
        assert_eq!(got[0]["body"]["text"], "to everyone");
        assert_eq!(got[0]["thread"], ids[i].as_str());
        frames.extend(got);
        // group.members shows a member the owner and themself only.
        let listed = ok(m, "group.members", json!({"conv": conv})).await;
        let users: Vec<&str> = listed["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["user"].as_str().unwrap())
            .collect();
        assert_eq!(users.len(), 2, "{listed}");
        assert!(users.contains(&owner_id.as_str()) && users.contains(&ids[i].as_str()));
        assert!(listed["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x.get("phone").is_none()));
        frames.push(listed);
        // Their sync is their own thread.
        let own = ok(m, "sync", json!({"conv": conv, "after": 0})).await;
        frames.push(own.clone());
        err(
            m,
            "sync",
            json!({"conv": conv, "after": 0, "thread": ids[(i + 1) % 20]}),
            "forbidden",
        )
        .await;
        err(m, "send", json!({"conv": conv, "client_msg_id": "x", "to": ids[(i + 1) % 20], "body": {"text": "psst"}}), "forbidden").await;
        while let Some(i) = m.next(QUIET).await {
            if let Incoming::Event(v) = i {
                frames.push(v);
            }
        }
    }
    // No frame any member received names another member.
    for (i, _) in ids.iter().enumerate() {
        for f in &frames {
            let text = f.to_string();
            let others = ids
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .filter(|(_, id)| text.contains(id.as_str()))
                .count();
            if text.contains(ids[i].as_str()) {
                assert_eq!(
                    others, 0,
                    "a frame of member {i} names another member: {text}"
                );
            }
        }
    }
    // A poll announced to everyone: members answer in their thread; only the owner sees results
    // (they name who answered). A retried announcement names the same key.
    let poll = json!({"poll": {"question": "Coffee?", "options": ["yes", "no"]}});
    let ack = ok(
        &owner,
        "send",
        json!({"conv": conv, "client_msg_id": "poll", "body": poll}),
    )
    .await;
    let again = ok(
        &owner,
        "send",
        json!({"conv": conv, "client_msg_id": "poll", "body": poll}),
    )
    .await;
    assert_eq!(ack["msg_id"], again["msg_id"]);
    let key = ack["msg_id"].as_str().unwrap();
    for (i, m) in members.iter().enumerate().take(5) {
        let copy = m.next_event("message", WAIT).await.unwrap();
        let answer = json!({"choice": [i % 2]});
        ok(
            m,
            "action.respond",
            json!({"conv": conv, "msg_id": copy["msg_id"], "answer": answer}),
        )
        .await;
        err(
            m,
            "action.results",
            json!({"conv": conv, "msg_id": copy["msg_id"]}),
            "forbidden",
        )
        .await;
    }
    let results = ok(
        &owner,
        "action.results",
        json!({"conv": conv, "msg_id": key}),
    )
    .await;
    assert_eq!(results, json!({"respondents": 5, "counts": [3, 2]}));

    // The owner reads threads by name, and sees phones.
    let t3 = ok(
        &owner,
        "sync",
        json!({"conv": conv, "after": 0, "thread": ids[3]}),
    )
    .await;
    assert_eq!(t3["messages"].as_array().unwrap().len(), 4);
    err(
        &owner,
        "sync",
        json!({"conv": conv, "after": 0}),
        "bad_frame",
    )
    .await;
    let all = ok(&owner, "group.members", json!({"conv": conv})).await;
    assert_eq!(all["members"].as_array().unwrap().len(), 21);
    assert!(all["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["phone"].is_string()));
}
