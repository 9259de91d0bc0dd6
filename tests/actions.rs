//! Actions in a flat group: polls, surveys, announcements and likes; every invalid action or
//! answer gets its code and stores nothing.

mod common;

use std::time::Duration;

use common::*;
use kaiwa_loadtest::WireFormat;
use serde_json::{json, Value};

async fn setup() -> (
    Node,
    kaiwa_loadtest::Client,
    kaiwa_loadtest::Client,
    String,
    String,
    String,
) {
    let node = Node::start().await;
    let admin = node.admin();
    let a = admin
        .create_user_with(json!({"name": "Ann", "phone": "+111"}))
        .await
        .unwrap();
    let b = admin
        .create_user_with(json!({"name": "Bob", "phone": "+222"}))
        .await
        .unwrap();
    let ca = node.connect(&a, WireFormat::Json).await;
    let cb = node.connect(&b, WireFormat::MsgPack).await;
    let conv = open_conv(&ca, "group.create", json!({"name": "Team", "kind": "flat"})).await;
    ok(&ca, "group.add", json!({"conv": conv, "user": b})).await;
    cb.next_event("member_added", WAIT).await.unwrap();
    ca.next_event("member_added", WAIT).await.unwrap();
    (node, ca, cb, conv, a, b)
}

async fn post(c: &kaiwa_loadtest::Client, conv: &str, id: &str, body: Value) -> String {
    ok(
        c,
        "send",
        json!({"conv": conv, "client_msg_id": id, "body": body}),
    )
    .await["msg_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn invalid_actions_and_answers_get_their_codes_and_store_nothing() {
    let (_node, ca, cb, conv, _a, _b) = setup().await;
    let bad_bodies = [
        json!({"poll": {"question": "Q", "options": ["only one"]}}),
        json!({"poll": {"question": "", "options": ["a", "b"]}}),
        json!({"poll": {"question": "Q", "options": ["a", "b"], "deadline": 1000}}),
        json!({"survey": {"title": "S", "questions": []}}),
        json!({"survey": {"title": "S", "questions": [{"q": "x", "type": "choice"}]}}),
        json!({"announcement": {"text": ""}}),
        json!({"poll": {"question": "Q"}}),
    ];
    for (i, b) in bad_bodies.iter().enumerate() {
        err(
            &ca,
            "send",
            json!({"conv": conv, "client_msg_id": format!("bad{i}"), "body": b}),
            "bad_frame",
        )
        .await;
    }
    assert_eq!(
        sync_all(&cb, &conv, 0).await.len(),
        0,
        "no invalid action was stored"
    );

    let poll = post(
        &ca,
        &conv,
        "p",
        json!({"poll": {"question": "Q", "options": ["a", "b"], "multi": false}}),
    )
    .await;
    let soon = chrono_ms() + 1500;
    let timed = post(
        &ca,
        &conv,
        "t",
        json!({"poll": {"question": "T", "options": ["a", "b"], "deadline": soon}}),
    )
    .await;
    let quiet_ann = post(
        &ca,
        &conv,
        "q",
        json!({"announcement": {"text": "no reactions", "likes": false, "comments": false}}),
    )
    .await;
    let text = post(&ca, &conv, "x", json!({"text": "plain"})).await;
    let respond = |msg: &str, answer: Value| json!({"conv": conv, "msg_id": msg, "answer": answer});
    err(
        &cb,
        "action.respond",
        respond(&poll, json!({"choice": [5]})),
        "bad_frame",
    )
    .await;
    err(
        &cb,
        "action.respond",
        respond(&poll, json!({"choice": [0, 1]})),
        "bad_frame",
    )
    .await;
    err(
        &cb,
        "action.respond",
        respond(&poll, json!({"comment": "hm"})),
        "bad_frame",
    )
    .await;
    err(
        &cb,
        "action.respond",
        respond(&text, json!({"choice": [0]})),
        "bad_frame",
    )
    .await;
    err(
        &cb,
        "action.respond",
        respond(&quiet_ann, json!({"comment": "hm"})),
        "policy_denied",
    )
    .await;
    err(
        &cb,
        "like",
        json!({"conv": conv, "msg_id": quiet_ann, "on": true}),
        "policy_denied",
    )
    .await;
    err(
        &cb,
        "action.respond",
        respond("m99_00", json!({"choice": [0]})),
        "not_found",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    err(
        &cb,
        "action.respond",
        respond(&timed, json!({"choice": [0]})),
        "conflict",
    )
    .await;
    let r = ok(&ca, "action.results", json!({"conv": conv, "msg_id": poll})).await;
    assert_eq!(r, json!({"respondents": 0, "counts": [0, 0]}));
    assert_eq!(
        sync_all(&cb, &conv, 0).await.len(),
        4,
        "only the four valid posts are stored"
    );
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn polls_surveys_announcements_and_likes_tally_for_the_sender() {
    let (node, ca, cb, conv, a, b) = setup().await;
    let (c, cc) = node.user("Cid", None, WireFormat::Json).await;
    ok(&ca, "group.add", json!({"conv": conv, "user": c})).await;

    let poll = post(
        &ca,
        &conv,
        "p",
        json!({"poll": {"question": "Days?", "options": ["mon", "tue", "wed"], "multi": true}}),
    )
    .await;
    ok(
        &cb,
        "action.respond",
        json!({"conv": conv, "msg_id": poll, "answer": {"choice": [0, 2]}}),
    )
    .await;
    ok(
        &cc,
        "action.respond",
        json!({"conv": conv, "msg_id": poll, "answer": {"choice": [1]}}),
    )
    .await;
    // A second answer replaces the first.
    ok(
        &cc,
        "action.respond",
        json!({"conv": conv, "msg_id": poll, "answer": {"choice": [2]}}),
    )
    .await;
    let r = ok(&cb, "action.results", json!({"conv": conv, "msg_id": poll})).await;
    assert_eq!(r, json!({"respondents": 2, "counts": [1, 0, 2]}));
    // The creator hears of each response and of the results.
    let resp = ca.next_event("action_response", WAIT).await.unwrap();
    assert_eq!(resp["msg_id"], poll.as_str());
    let res = ca.next_event("action_results", WAIT).await.unwrap();
    assert_eq!(res["msg_id"], poll.as_str());

    let survey = post(
        &ca,
        &conv,
        "s",
        json!({"survey": {"title": "Team", "questions": [
            {"q": "Role", "type": "choice", "options": ["dev", "ops"]},
            {"q": "Wish", "type": "text"},
            {"q": "Years", "type": "number"}]}}),
    )
    .await;
    let ans =
        |c: u32, t: &str, n: f64| json!({"answers": [{"choice": [c]}, {"text": t}, {"number": n}]});
    ok(
        &cb,
        "action.respond",
        json!({"conv": conv, "msg_id": survey, "answer": ans(0, "more tests", 3.0)}),
    )
    .await;
    ok(
        &cc,
        "action.respond",
        json!({"conv": conv, "msg_id": survey, "answer": ans(1, "fewer meetings", 5.0)}),
    )
    .await;
    err(
        &cc,
        "action.respond",
        json!({"conv": conv, "msg_id": survey, "answer": {"answers": [{"choice": [0]}]}}),
        "bad_frame",
    )
    .await;
    let r = ok(
        &ca,
        "action.results",
        json!({"conv": conv, "msg_id": survey}),
    )
    .await;
    assert_eq!(r["respondents"], 2);
    assert_eq!(r["questions"][0]["counts"], json!([1, 1]));
    assert_eq!(r["questions"][1]["texts"].as_array().unwrap().len(), 2);
    assert_eq!(r["questions"][2]["mean"], 4.0);

    let ann = post(
        &ca,
        &conv,
        "a",
        json!({"announcement": {"text": "Ship it", "likes": true, "comments": true}}),
    )
    .await;
    assert_eq!(
        ok(
            &cb,
            "like",
            json!({"conv": conv, "msg_id": ann, "on": true})
        )
        .await["likes"],
        1
    );
    assert_eq!(
        ok(
            &cc,
            "like",
            json!({"conv": conv, "msg_id": ann, "on": true})
        )
        .await["likes"],
        2
    );
    assert_eq!(
        ok(
            &cc,
            "like",
            json!({"conv": conv, "msg_id": ann, "on": true})
        )
        .await["likes"],
        2
    );
    ok(
        &cb,
        "action.respond",
        json!({"conv": conv, "msg_id": ann, "answer": {"comment": "great"}}),
    )
    .await;
    let r = ok(&ca, "action.results", json!({"conv": conv, "msg_id": ann})).await;
    assert_eq!(
        r,
        json!({"likes": 2, "comments": [{"user": b, "text": "great"}]})
    );
    // Plain text can be liked too.
    let t = post(&cb, &conv, "t", json!({"text": "nice"})).await;
    assert_eq!(
        ok(&ca, "like", json!({"conv": conv, "msg_id": t, "on": true})).await["likes"],
        1
    );
    assert_eq!(
        ok(&ca, "like", json!({"conv": conv, "msg_id": t, "on": false})).await["likes"],
        0
    );

    // Phones in a flat group: the owner sees them, members do not.
    let owner_view = ok(&ca, "group.members", json!({"conv": conv})).await;
    let bob = owner_view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == b.as_str())
        .unwrap()
        .clone();
    assert_eq!(bob["phone"], "+222");
    let member_view = ok(&cc, "group.members", json!({"conv": conv})).await;
    assert_eq!(member_view["members"].as_array().unwrap().len(), 3);
    assert!(member_view["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m.get("phone").is_none()));
    let _ = a;
}
