//! A real Kaiwa node for integration tests: the `kaiwa` binary started on a free loopback port
//! with its own data directory, plus helpers to provision users and connect clients.

#![allow(dead_code)]

mod cluster;
#[allow(unused_imports)]
pub use cluster::*;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kaiwa_loadtest::{Admin, Client, WireFormat};
use serde_json::{json, Value};

pub const ADMIN_KEY: &str = "test-admin-key";
pub const SECRET: &str = "test-token-secret";
pub const WAIT: Duration = Duration::from_secs(5);
/// How long tests wait to be sure something does NOT arrive.
pub const QUIET: Duration = Duration::from_millis(300);

/// One server process.
pub struct Node {
    child: Option<Child>,
    pub port: u16,
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Node {
    /// Starts a node with a fresh data directory.
    pub async fn start() -> Node {
        Self::start_with(&[]).await
    }

    /// Starts a node with extra flags (e.g. `--max-frame 1024`).
    pub async fn start_with(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut n = Node {
            child: None,
            port: free_port(),
            data: dir.path().to_path_buf(),
            _dir: Some(dir),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        n.spawn().await;
        n
    }

    async fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_kaiwa"))
            .arg("serve")
            .args(["--port", &self.port.to_string()])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--workers", "2"])
            .args(&self.extra)
            .env("KAIWA_TOKEN_SECRET", SECRET)
            .env("KAIWA_ADMIN_KEY", ADMIN_KEY)
            .env("KAIWA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kaiwa binary starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("{}/healthz", self.http());
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node did not come up on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id, while the node runs (to send it signals such as SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Starts the process again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn admin(&self) -> Admin {
        Admin::new(&self.http(), ADMIN_KEY)
    }

    /// A new active user (optionally in an org) and a connected client of theirs.
    pub async fn user(
        &self,
        name: &str,
        org: Option<&str>,
        format: WireFormat,
    ) -> (String, Client) {
        let admin = self.admin();
        let id = admin.create_user(name, org).await.unwrap();
        let c = self.connect(&id, format).await;
        (id, c)
    }

    /// Connects a client of an existing user.
    pub async fn connect(&self, user: &str, format: WireFormat) -> Client {
        let token = self.admin().token(user).await.unwrap();
        Client::connect(&self.ws(), &token, format).await.unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A request that must succeed.
pub async fn ok(c: &Client, op: &str, params: Value) -> Value {
    match c.request(op, params.clone()).await.unwrap() {
        Ok(v) => v,
        Err(e) => panic!("{op} {params} failed: {e}"),
    }
}

/// `group.create` or `chat.open`, which must succeed: the conversation id.
pub async fn open_conv(c: &Client, op: &str, params: Value) -> String {
    ok(c, op, params).await["conv"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A flat group of `n` new users (created through `admin`'s API): the first one, connected to
/// `via`, creates it as `name` and adds the others. Returns the user ids (owner first), the
/// owner's client and the group.
pub async fn flat_group(
    admin: &Node,
    via: &Node,
    n: usize,
    name: &str,
) -> (Vec<String>, Client, String) {
    let names: Vec<String> = (0..n).map(|i| format!("{name} {i}")).collect();
    let ids = admin.admin().create_users_bulk(&names, None).await.unwrap();
    let owner = via.connect(&ids[0], WireFormat::Json).await;
    let group = open_conv(
        &owner,
        "group.create",
        json!({"name": name, "kind": "flat"}),
    )
    .await;
    for u in &ids[1..] {
        ok(&owner, "group.add", json!({"conv": group, "user": u})).await;
    }
    (ids, owner, group)
}

/// A request that must fail with `code`.
pub async fn err(c: &Client, op: &str, params: Value, code: &str) {
    match c.request(op, params.clone()).await.unwrap() {
        Ok(v) => panic!("{op} {params} succeeded with {v}, expected {code}"),
        Err(e) => assert_eq!(e.code, code, "{op} {params}: {e}"),
    }
}

/// Sends a text message and returns its seq.
pub async fn send(c: &Client, conv: &str, cmid: &str, text: &str) -> u64 {
    let v = ok(
        c,
        "send",
        json!({"conv": conv, "client_msg_id": cmid, "body": {"text": text}}),
    )
    .await;
    v["seq"].as_u64().unwrap()
}

/// Every message of a conversation, paged through `sync`.
pub async fn sync_all(c: &Client, conv: &str, after: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let v = ok(
            c,
            "sync",
            json!({"conv": conv, "after": after, "limit": 50}),
        )
        .await;
        let msgs = v["messages"].as_array().unwrap().clone();
        if let Some(last) = msgs.last() {
            after = last["seq"].as_u64().unwrap();
        }
        out.extend(msgs);
        if !v["more"].as_bool().unwrap() {
            return out;
        }
    }
}

/// Waits for `n` message events and returns them.
pub async fn messages(c: &Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        match c.next_event("message", WAIT).await {
            Some(v) => out.push(v),
            None => panic!("only {} of {n} messages arrived", out.len()),
        }
    }
    out
}

/// Asserts that no event at all arrives for a short while.
pub async fn quiet(c: &Client) {
    if let Some(i) = c.next(QUIET).await {
        panic!("expected silence, got {i:?}");
    }
}
