//! Cluster helpers: a real `redis-server` on a free loopback port (AOF on, an fsync per write,
//! in a temporary directory), and Kaiwa nodes joined to it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Node;

/// One redis-server process, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts redis-server with `appendonly yes` and `appendfsync always`.
    pub fn start() -> Redis {
        // A port picked free can be taken before redis-server binds it (tests run in
        // parallel): then redis-server exits, and another port is tried.
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut r = Redis {
                child: None,
                port,
                dir: tempfile::tempdir().unwrap(),
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start");
    }

    /// Starts redis-server on `self.port`; false when it exited (the port was taken).
    fn spawn(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                std::thread::sleep(Duration::from_millis(50));
                if child.try_wait().ok().flatten().is_some() {
                    return false;
                }
                self.child = Some(child);
                return true;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: what was acked must be in the AOF already.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server did not restart on its port");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `n` nodes (`n1`, `n2`, ...) on `redis` and waits until each sees all of them.
pub async fn start_cluster(redis: &Redis, n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(cluster_node(redis, &format!("n{i}")).await);
    }
    for node in &nodes {
        wait_for_nodes(node, n).await;
    }
    nodes
}

/// One node joined to `redis` as `id`.
pub async fn cluster_node(redis: &Redis, id: &str) -> Node {
    Node::start_with(&["--redis-url", &redis.url(), "--node-id", id]).await
}

/// Waits until `node` counts `n` live nodes.
pub async fn wait_for_nodes(node: &Node, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = node.admin().metrics_text().await.unwrap_or_default();
        if kaiwa_loadtest::admin::metric_value(&text, "kaiwa_cluster_nodes") == Some(n as f64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node on port {} never saw {n} nodes",
            node.port
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status `/healthz` of `node` answers.
pub async fn health(node: &Node) -> u16 {
    match reqwest::get(format!("{}/healthz", node.http())).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Waits until `/healthz` of `node` answers `status`.
pub async fn wait_health(node: &Node, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while health(node).await != status {
        assert!(
            Instant::now() < deadline,
            "healthz of node on port {} never answered {status}",
            node.port
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
