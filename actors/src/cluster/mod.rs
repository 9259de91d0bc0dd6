//! Cluster mode: nodes that share one Redis as their store and bus.

pub mod redis_conn;
#[cfg(test)]
pub mod test_redis;
