//! The Redis connection every cluster part shares: a deadpool-redis pool for commands, the
//! client for dedicated pub/sub connections, and a small runtime of its own that owns all Redis
//! I/O, so that a call made from any actor thread is bounded by one timeout and never depends on
//! which runtime opened the connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::runtime::{Handle, Runtime};

/// How long any one Redis call may take before it fails as unavailable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a Redis call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RedisFailure {
    /// Redis answered with an error reply (a refused script, a wrong type).
    #[error("redis error: {0}")]
    Reply(String),
    /// Redis could not be reached in time: down, restarting, or the network is cut.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

/// Commands pool, pub/sub client and the runtime that runs both.
pub struct RedisConn {
    /// Pooled multiplexed connections for commands.
    pub pool: deadpool_redis::Pool,
    /// For dedicated pub/sub connections, which cannot be pooled.
    pub client: deadpool_redis::redis::Client,
    /// Prepended to every key and channel, so several clusters (or tests) can share one Redis.
    pub prefix: String,
    handle: Handle,
    rt: Option<Runtime>,
}

impl Drop for RedisConn {
    /// Stops the Redis runtime without waiting, so that dropping is safe from any context.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Tells an unreachable Redis from an error reply.
pub fn classify(e: deadpool_redis::redis::RedisError) -> RedisFailure {
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
    {
        RedisFailure::Unavailable(e.to_string())
    } else {
        RedisFailure::Reply(e.to_string())
    }
}

impl RedisConn {
    /// Sets up the pool and runtime for `url` (e.g. `redis://127.0.0.1:6379`); connections
    /// are opened lazily, so this succeeds even while Redis is down.
    pub fn open(url: &str, prefix: &str) -> Result<Arc<Self>, String> {
        let client = deadpool_redis::redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut cfg = deadpool_redis::Config::from_url(url);
        cfg.pool = Some(deadpool_redis::PoolConfig {
            max_size: 32,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(CALL_TIMEOUT),
                create: Some(CALL_TIMEOUT),
                recycle: Some(CALL_TIMEOUT),
            },
            ..Default::default()
        });
        let pool = cfg
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kaiwa-redis")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(RedisConn {
            pool,
            client,
            prefix: prefix.to_string(),
            handle: rt.handle().clone(),
            rt: Some(rt),
        }))
    }

    /// A key or channel name under this cluster's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `f` with a pooled connection on the Redis runtime, bounded by [`CALL_TIMEOUT`].
    pub fn call<T, F, Fut>(&self, f: F) -> BoxFuture<'static, Result<T, RedisFailure>>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_redis::Connection) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, deadpool_redis::redis::RedisError>> + Send + 'static,
    {
        let pool = self.pool.clone();
        let task = self.handle.spawn(async move {
            let work = async move {
                let conn = pool
                    .get()
                    .await
                    .map_err(|e| RedisFailure::Unavailable(e.to_string()))?;
                f(conn).await.map_err(classify)
            };
            match tokio::time::timeout(CALL_TIMEOUT, work).await {
                Ok(r) => r,
                Err(_) => Err(RedisFailure::Unavailable("call timed out".into())),
            }
        });
        async move {
            task.await
                .unwrap_or_else(|e| Err(RedisFailure::Unavailable(e.to_string())))
        }
        .boxed()
    }

    /// Runs a background task (subscriber, heartbeat, publisher) on the Redis runtime.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.handle.spawn(f);
    }
}
