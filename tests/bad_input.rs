//! Bad input: every case gets its documented error, the connection stays usable where the
//! protocol says so, nothing is stored, and nobody else sees anything.

mod common;

use std::time::Duration;

use common::*;
use kaiwa_loadtest::{Client, Incoming, WireFormat};
use serde_json::{json, Value};

async fn unsolicited(c: &Client) -> Value {
    match c.next(WAIT).await {
        Some(Incoming::Unsolicited(v)) => v,
        other => panic!("expected an unsolicited error, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_unknown_missing_and_oversized_frames() {
    let node = Node::start_with(&["--max-frame", "2048"]).await;
    let (_a, ca) = node.user("Ann", None, WireFormat::Json).await;
    let (b, cb) = node.user("Bob", None, WireFormat::Json).await;
    let conv = open_conv(&ca, "chat.open", json!({"user": b})).await;

    // Not JSON at all: re null, bad_frame, and the connection stays open.
    ca.send_text_frame("{this is not json").await.unwrap();
    let v = unsolicited(&ca).await;
    assert!(v["re"].is_null());
    assert_eq!(v["err"]["code"], "bad_frame");
    // Not MessagePack either.
    ca.send_binary_frame(vec![0xc1, 0xff, 0x00]).await.unwrap();
    assert_eq!(unsolicited(&ca).await["err"]["code"], "bad_frame");
    // No id.
    ca.send_text_frame(r#"{"op":"convs"}"#).await.unwrap();
    assert_eq!(unsolicited(&ca).await["err"]["code"], "bad_frame");

    err(&ca, "dance", json!({}), "unknown_op").await;
    err(
        &ca,
        "send",
        json!({"conv": conv, "body": {"text": "no client id"}}),
        "bad_frame",
    )
    .await;
    err(
        &ca,
        "send",
        json!({"conv": conv, "client_msg_id": "x", "body": {"shout": "?"}}),
        "bad_frame",
    )
    .await;
    err(
        &ca,
        "send",
        json!({"conv": conv, "client_msg_id": "x", "body": {"text": "a".repeat(4000)}}),
        "too_large",
    )
    .await;
    err(&ca, "sync", json!({"conv": "g_nope"}), "not_found").await;
    err(&ca, "sync", json!({"conv": "whatever"}), "not_found").await;

    // Still usable, and nothing of the above was stored or seen by Bob.
    assert_eq!(send(&ca, &conv, "ok", "fine").await, 1);
    let got = messages(&cb, 1).await;
    assert_eq!(got[0]["body"]["text"], "fine");
    quiet(&cb).await;
    assert_eq!(sync_all(&cb, &conv, 0).await.len(), 1);
}

#[tokio::test]
async fn a_frame_past_the_hard_limit_closes_with_1009() {
    let node = Node::start_with(&["--max-frame", "1024"]).await;
    let (_a, ca) = node.user("Ann", None, WireFormat::Json).await;
    let huge = format!(r#"{{"id":1,"op":"send","pad":"{}"}}"#, "x".repeat(2 << 20));
    let _ = ca.send_text_frame(&huge).await;
    loop {
        match ca.next(WAIT).await {
            Some(Incoming::Unsolicited(v)) => assert_eq!(v["err"]["code"], "too_large"),
            Some(Incoming::Closed(Some((code, _)))) => {
                assert_eq!(code, 1009);
                break;
            }
            other => panic!("expected a close with 1009, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn bad_expired_and_missing_tokens_get_401_disabled_users_403() {
    let node = Node::start().await;
    let admin = node.admin();
    let u = admin.create_user("Ann", None).await.unwrap();
    let url = |t: &str| format!("{}/ws?token={t}", node.ws());
    let status = |r: Result<Client, kaiwa_loadtest::ConnectError>| r.err().and_then(|e| e.status());

    assert_eq!(
        status(Client::connect_url(&url("garbage"), WireFormat::Json).await),
        Some(401)
    );
    assert_eq!(
        status(Client::connect_url(&format!("{}/ws", node.ws()), WireFormat::Json).await),
        Some(401)
    );
    // Signed with another secret.
    let other = std::process::Command::new(env!("CARGO_BIN_EXE_kaiwa"))
        .args(["token", "--user", &u, "--token-secret", "not-the-secret"])
        .output()
        .unwrap();
    let forged = String::from_utf8(other.stdout).unwrap();
    assert_eq!(
        status(Client::connect_url(&url(forged.trim()), WireFormat::Json).await),
        Some(401)
    );
    // Expired: minted with the right secret and a lifetime already over.
    let (code, v) = admin
        .raw(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(json!({"user": u, "ttl_s": 1})),
            Some(ADMIN_KEY),
        )
        .await
        .unwrap();
    assert_eq!(code, 201);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = v["token"].as_str().unwrap();
    assert_eq!(
        status(Client::connect_url(&url(expired), WireFormat::Json).await),
        Some(401)
    );

    // A live session of a user who gets suspended is closed, and reconnecting gets 403.
    let token = admin.token(&u).await.unwrap();
    let c = Client::connect_url(&url(&token), WireFormat::Json)
        .await
        .unwrap();
    admin.set_user_state(&u, "suspended").await.unwrap();
    loop {
        match c.next(WAIT).await {
            Some(Incoming::Closed(Some((code, _)))) => {
                assert_eq!(code, 4003);
                break;
            }
            Some(_) => {}
            None => panic!("suspended user's session was not closed"),
        }
    }
    assert_eq!(
        status(Client::connect_url(&url(&token), WireFormat::Json).await),
        Some(403)
    );
    admin.set_user_state(&u, "deleted").await.unwrap();
    assert_eq!(
        status(Client::connect_url(&url(&token), WireFormat::Json).await),
        Some(403)
    );

    // The admin API wants its key, before it even reads the body.
    let (code, _) = admin
        .raw(
            reqwest::Method::POST,
            "/api/v1/users",
            Some(json!({"nam": "x"})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 401);
    let (code, v) = admin
        .raw(
            reqwest::Method::POST,
            "/api/v1/users",
            Some(json!({"name": "x"})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 401);
    assert_eq!(v["error"]["code"], "unauthorized");
    let (code, _) = admin
        .raw(
            reqwest::Method::POST,
            "/api/v1/users",
            Some(json!({"name": "x"})),
            Some("wrong"),
        )
        .await
        .unwrap();
    assert_eq!(code, 401);
    let (code, v) = admin
        .raw(
            reqwest::Method::POST,
            "/api/v1/users",
            Some(json!({"nam": "x"})),
            Some(ADMIN_KEY),
        )
        .await
        .unwrap();
    assert_eq!(code, 400);
    assert_eq!(v["error"]["code"], "bad_frame");
}

#[tokio::test]
async fn outsiders_and_non_admins_are_refused_and_nothing_leaks() {
    let node = Node::start().await;
    let (_a, ca) = node.user("Ann", None, WireFormat::Json).await;
    let (b, cb) = node.user("Bob", None, WireFormat::Json).await;
    let (c, cc) = node.user("Cid", None, WireFormat::Json).await;
    let conv = open_conv(
        &ca,
        "group.create",
        json!({"name": "Inner", "kind": "flat"}),
    )
    .await;
    ok(&ca, "group.add", json!({"conv": conv, "user": b})).await;
    cb.next_event("member_added", WAIT).await.unwrap();
    ca.next_event("member_added", WAIT).await.unwrap();

    // Cid is not in the group.
    err(
        &cc,
        "send",
        json!({"conv": conv, "client_msg_id": "x", "body": {"text": "let me in"}}),
        "forbidden",
    )
    .await;
    err(&cc, "sync", json!({"conv": conv, "after": 0}), "forbidden").await;
    err(&cc, "group.members", json!({"conv": conv}), "forbidden").await;
    err(
        &cc,
        "group.add",
        json!({"conv": conv, "user": c}),
        "forbidden",
    )
    .await;
    // Bob is in it but no admin.
    err(
        &cb,
        "group.add",
        json!({"conv": conv, "user": c}),
        "forbidden",
    )
    .await;
    err(
        &cb,
        "group.remove",
        json!({"conv": conv, "user": _a}),
        "forbidden",
    )
    .await;

    quiet(&ca).await;
    quiet(&cb).await;
    assert_eq!(
        ok(&ca, "group.members", json!({"conv": conv})).await["members"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(sync_all(&ca, &conv, 0).await.len(), 0, "nothing was stored");
    assert_eq!(
        ok(&cc, "convs", json!({})).await["convs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn a_slow_reader_is_cut_off_and_the_group_does_not_wait() {
    let node = Node::start_with(&["--outbox-frames", "256"]).await;
    let (_a, ca) = node.user("Ann", None, WireFormat::Json).await;
    let (b, cb) = node.user("Bob", None, WireFormat::Json).await;
    let (s, slow) = node.user("Slow", None, WireFormat::Json).await;
    let conv = open_conv(&ca, "group.create", json!({"name": "Busy", "kind": "flat"})).await;
    ok(&ca, "group.add", json!({"conv": conv, "user": b})).await;
    ok(&ca, "group.add", json!({"conv": conv, "user": s})).await;
    slow.pause_reading();
    // Far more than the kernel's socket buffers hold, so the server-side queue must fill.
    let pad = "p".repeat(16_000);
    let reader = async {
        let mut n = 0;
        while n < 1500 {
            match cb.next(WAIT).await {
                Some(Incoming::Event(v)) if v["ev"] == "message" => n += 1,
                Some(_) => {}
                None => panic!("Bob stopped receiving after {n}"),
            }
        }
    };
    let writer = async {
        for chunk in (0..1500).collect::<Vec<_>>().chunks(50) {
            let ids: Vec<String> = chunk.iter().map(|i| format!("f{i}")).collect();
            let sends = ids.iter().map(|id| send(&ca, &conv, id, &pad));
            futures_util::future::join_all(sends).await;
        }
    };
    tokio::join!(reader, writer);
    slow.resume_reading();
    let mut closed = None;
    while let Some(i) = slow.next(WAIT).await {
        if let Incoming::Closed(c) = i {
            closed = c;
            break;
        }
    }
    assert_eq!(
        closed.map(|c| c.0),
        Some(4008),
        "the slow reader is closed as a slow consumer"
    );
    // It resyncs on reconnect.
    let again = node.connect(&s, WireFormat::Json).await;
    assert_eq!(sync_all(&again, &conv, 0).await.len(), 1500);
}
