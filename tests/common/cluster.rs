//! Cluster helpers: a real `redis-server` on a free loopback port (AOF on, an fsync per write,
//! in a temporary directory), and Kaiwa nodes joined to it.

use std::time::{Duration, Instant};

use super::Node;

/// A real redis-server on a free loopback port (AOF, an fsync per write), killed on drop; the
/// engine's own tests use the same one.
pub use kaiwa_actors::cluster::test_redis::TestRedis as Redis;

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
