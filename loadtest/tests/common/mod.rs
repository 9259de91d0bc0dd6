//! A tiny in-process stand-in for Kaiwa that speaks just enough of the wire contract (send, sync,
//! `message` events) to test the load tool itself without a real server. It can drop chosen
//! messages for good (not delivered, not returned by sync) and delay every delivery.

#![allow(dead_code, clippy::result_large_err)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

/// What the fake server does wrong on purpose.
#[derive(Clone, Default)]
pub struct FakeConfig {
    /// Seqs that are acked but never delivered nor stored.
    pub drop_seqs: HashSet<u64>,
    /// How long every live delivery waits before it is pushed.
    pub delay: Duration,
    /// Instead of delivering this seq, close every session but the sender's with 4008 (as a
    /// slow consumer); the message and all later ones are still stored for sync.
    pub cut_at: Option<u64>,
}

#[derive(Default)]
struct State {
    convs: std::collections::HashMap<String, Vec<Value>>,
    next_seq: std::collections::HashMap<String, u64>,
    /// (writer, MessagePack?, user) of every session.
    sessions: Vec<(mpsc::UnboundedSender<Message>, bool, String)>,
}

/// Starts the fake server on 127.0.0.1 and returns its `ws://` base URL.
pub async fn start(config: FakeConfig) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(State::default()));
    let config = Arc::new(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp, state.clone(), config.clone()));
        }
    });
    format!("ws://{addr}")
}

fn encode(v: &Value, binary: bool) -> Message {
    if binary {
        Message::binary(rmp_serde::to_vec_named(v).unwrap())
    } else {
        Message::text(v.to_string())
    }
}

async fn serve(tcp: tokio::net::TcpStream, state: Arc<Mutex<State>>, config: Arc<FakeConfig>) {
    let mut user = String::new();
    let mut msgpack = false;
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let query = req.uri().query().unwrap_or("");
        for kv in query.split('&') {
            match kv.split_once('=') {
                Some(("token", t)) => user = t.to_owned(),
                Some(("format", "msgpack")) => msgpack = true,
                _ => {}
            }
        }
        let refuse = |code: StatusCode| {
            let mut r = ErrorResponse::new(Some("refused".into()));
            *r.status_mut() = code;
            Err(r)
        };
        match user.as_str() {
            "" | "bad" => refuse(StatusCode::UNAUTHORIZED),
            "suspended" => refuse(StatusCode::FORBIDDEN),
            _ => Ok(resp),
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    state
        .lock()
        .unwrap()
        .sessions
        .push((tx.clone(), msgpack, user.clone()));
    let session = tx.clone();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let binary = matches!(msg, Message::Binary(_));
        let frame: Option<Value> = match &msg {
            Message::Text(t) => serde_json::from_str(t.as_str()).ok(),
            Message::Binary(b) => rmp_serde::from_slice(b).ok(),
            Message::Close(_) => break,
            _ => continue,
        };
        let Some(frame) = frame.filter(|f| f.get("id").and_then(Value::as_u64).is_some()) else {
            let err = json!({"re": null, "err": {"code": "bad_frame", "message": "unparsable"}});
            let _ = tx.send(encode(&err, binary));
            continue;
        };
        let id = frame["id"].as_u64().unwrap();
        let reply = match frame["op"].as_str().unwrap_or("") {
            "echo" => json!({"re": id, "ok": frame}),
            "send" => handle_send(&frame, &user, &state, &config),
            "sync" => handle_sync(&frame, &state),
            "chat.open" => {
                let mut pair = [
                    user.clone(),
                    frame["user"].as_str().unwrap_or("").to_owned(),
                ];
                pair.sort();
                json!({"re": id, "ok": {"conv": format!("chat:{}:{}", pair[0], pair[1])}})
            }
            op => json!({"re": id, "err": {"code": "unknown_op", "message": op}}),
        };
        let reply = with_re(reply, id);
        let _ = tx.send(encode(&reply, binary));
    }
    // Forget this session so its writer ends and the socket closes.
    state
        .lock()
        .unwrap()
        .sessions
        .retain(|(s, _, _)| !s.same_channel(&session));
}

fn with_re(mut v: Value, id: u64) -> Value {
    v["re"] = json!(id);
    v
}

fn handle_send(frame: &Value, user: &str, state: &Mutex<State>, config: &FakeConfig) -> Value {
    let conv = frame["conv"].as_str().unwrap_or("").to_owned();
    let mut st = state.lock().unwrap();
    let seq = {
        let n = st.next_seq.entry(conv.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let msg = json!({
        "conv": conv, "seq": seq, "msg_id": format!("m{seq}"), "from": user,
        "ts": 0, "body": frame["body"].clone(),
    });
    if config.cut_at == Some(seq) {
        st.convs.entry(conv).or_default().push(msg);
        let (cut, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut st.sessions)
            .into_iter()
            .partition(|(_, _, u)| u != user);
        st.sessions = kept;
        for (tx, _, _) in cut {
            let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 4008.into(),
                reason: "slow consumer".into(),
            };
            let _ = tx.send(Message::Close(Some(close)));
        }
    } else if !config.drop_seqs.contains(&seq) {
        st.convs.entry(conv).or_default().push(msg.clone());
        let mut event = msg;
        event["ev"] = json!("message");
        let targets: Vec<_> = st.sessions.to_vec();
        let delay = config.delay;
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            for (tx, binary, _) in targets {
                let _ = tx.send(encode(&event, binary));
            }
        });
    }
    json!({"ok": {"seq": seq, "msg_id": format!("m{seq}"), "ts": 0}})
}

fn handle_sync(frame: &Value, state: &Mutex<State>) -> Value {
    let conv = frame["conv"].as_str().unwrap_or("");
    let after = frame["after"].as_u64().unwrap_or(0);
    let limit = frame["limit"].as_u64().unwrap_or(100).min(1000) as usize;
    let st = state.lock().unwrap();
    let log = st.convs.get(conv).map(Vec::as_slice).unwrap_or(&[]);
    let newer: Vec<&Value> = log
        .iter()
        .filter(|m| m["seq"].as_u64().unwrap() > after)
        .collect();
    let more = newer.len() > limit;
    let page: Vec<Value> = newer.into_iter().take(limit).cloned().collect();
    json!({"ok": {"messages": page, "more": more}})
}
